"""The real service over HTTP: every endpoint, every client mistake, the metrics.

One `bentoml serve` (2 workers) on a free loopback port runs the smoke-trained models of the
test store; answers are compared with ONNX Runtime run in this process on the same inputs.
"""

import base64
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import bentoml
import numpy as np
import onnxruntime as ort
import pytest
import requests
from PIL import Image

from modelspec import EXPORT_ORDER, ModelSpec
from modelspec.image import frame_like_training, grey_pixels, light_on_dark
from modelspec.text import encode_batch

TIMEOUT = 30


def post(url: str, path: str, **kwargs) -> requests.Response:
    return requests.post(f"{url}{path}", timeout=TIMEOUT, **kwargs)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class Local:
    """The stored model run in this process, for comparison with HTTP answers."""

    def __init__(self, tag: str):
        self.model = bentoml.models.get(tag)
        self.spec = ModelSpec.from_dict(self.model.info.metadata["spec"])

    def run(self, filename: str, feeds: dict) -> list[np.ndarray]:
        session = ort.InferenceSession(self.model.path_of(filename), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    def eval_rows(self, n: int) -> np.ndarray:
        with np.load(self.model.path_of("eval.npz")) as data:
            return data["x"][:n]


def png_of(pixels: np.ndarray, dark_on_light: bool = True, scale: int = 8, mode: str = "L") -> bytes:
    """A digit as a user would upload it: enlarged, black ink on white by default."""
    image = np.clip(pixels, 0, 1)
    image = 1 - image if dark_on_light else image
    picture = Image.fromarray((image * 255).astype(np.uint8)).resize((image.shape[1] * scale, image.shape[0] * scale))
    buffer = io.BytesIO()
    picture.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def metric(url: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=TIMEOUT).text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


@pytest.fixture(scope="module")
def local(smoke_store):
    return {name: Local(result.tag) for name, result in smoke_store.items()}


def test_ready_and_live(server):
    assert requests.get(f"{server}/readyz", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{server}/livez", timeout=TIMEOUT).status_code == 200


def test_models_lists_every_loaded_model_with_its_version_and_checksums(server, smoke_store):
    answer = requests.get(f"{server}/models", timeout=TIMEOUT)
    assert answer.status_code == 200
    models = {m["name"]: m for m in answer.json()["models"]}
    assert sorted(models) == sorted(EXPORT_ORDER)
    for name, result in smoke_store.items():
        stored = bentoml.models.get(result.tag)
        assert models[name]["version"] == stored.tag.version
        assert models[name]["task"] == stored.info.metadata["spec"]["task"]
        assert models[name]["onnx_files"] == stored.info.metadata["onnx_files"]
        assert models[name]["metrics"] == stored.info.metadata["metrics"]
        assert models[name]["graphs"] == stored.info.metadata["spec"]["graphs"]
        (loaded,) = models[name]["versions"]
        assert (loaded["version"], loaded["role"], loaded["traffic_share"]) == (stored.tag.version, "default", 1.0)
        assert loaded["sha256"] == {f: info["sha256"] for f, info in stored.info.metadata["onnx_files"].items()}
    one = requests.get(f"{server}/models/sentiment", timeout=TIMEOUT)
    assert one.status_code == 200 and one.json()["labels"] == ["negative", "positive"]
    missing = requests.get(f"{server}/models/nope", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_model"
    unknown = post(server, "/classify", json={"images": [ZERO_IMAGE], "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_model"


@pytest.mark.parametrize("model", ["cnn", "resnet", "resnet-int8"])
def test_classify_arrays_equals_in_process_onnxruntime(server, local, model):
    rows = local[model].eval_rows(5)
    answer = post(server, "/classify", json={"images": rows[:, 0].tolist(), "model": model, "top_k": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == model and body["version"] == local[model].model.tag.version
    (logits,) = local[model].run("model.onnx", {"image": rows})
    expected = softmax(logits)
    assert len(body["predictions"]) == 5
    for got, want in zip(body["predictions"], expected):
        assert len(got) == 3
        assert got[0]["label"] == str(int(np.argmax(want)))
        for item in got:
            assert item["probability"] == pytest.approx(want[int(item["label"])], abs=1e-6)


def test_tensor_endpoint_returns_the_exact_logits(server, local):
    rows = local["cnn"].eval_rows(3)
    answer = post(server, "/infer/cnn", json={"image": rows.tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == answer.headers["x-model-version"] == local["cnn"].model.tag.version
    (logits,) = local["cnn"].run("model.onnx", {"image": rows})
    np.testing.assert_allclose(np.array(answer.json()["outputs"]["logits"], dtype=np.float32), logits, atol=1e-6)


@pytest.mark.parametrize("dark_on_light,mode", [(True, "L"), (False, "L"), (True, "RGB"), (True, "RGBA")])
def test_classify_image_applies_the_stored_preprocessing(server, local, dark_on_light, mode):
    pixels = local["cnn"].eval_rows(1)[0, 0]
    upload = png_of(pixels, dark_on_light=dark_on_light, mode=mode)
    answer = post(server, "/classify/image", files={"image": ("digit.png", upload, "image/png")}, data={"model": "cnn"})
    assert answer.status_code == 200, answer.text
    with Image.open(io.BytesIO(upload)) as image:
        expected_input = frame_like_training(light_on_dark(grey_pixels(image)), local["cnn"].spec.preprocessing)
    (logits,) = local["cnn"].run("model.onnx", {"image": expected_input})
    body = answer.json()
    assert body["label"] == str(int(np.argmax(logits)))
    assert body["probability"] == pytest.approx(float(softmax(logits).max()), abs=1e-6)


def test_sentiment_equals_in_process_onnxruntime(server, local):
    texts = ["质量很好，物流也快，非常满意", "太差了，用了一天就坏了", "一般"]
    answer = post(server, "/sentiment", json={"texts": texts})
    assert answer.status_code == 200, answer.text
    sentiment = local["sentiment"]
    vocab = json.loads(open(sentiment.model.path_of("vocab.json"), encoding="utf-8").read())
    tokens, lengths = encode_batch(texts, vocab, sentiment.spec.preprocessing)
    (logits,) = sentiment.run("model.onnx", {"tokens": tokens, "lengths": lengths})
    expected = softmax(logits)
    for result, want in zip(answer.json()["results"], expected):
        assert result["label"] == ["negative", "positive"][int(np.argmax(want))]
        assert result["probabilities"]["positive"] == pytest.approx(want[1], abs=1e-6)


def test_gan_same_seed_same_bytes(server, local):
    first = post(server, "/gan/generate", json={"n": 6, "seed": 1234})
    second = post(server, "/gan/generate", json={"n": 6, "seed": 1234})
    other = post(server, "/gan/generate", json={"n": 6, "seed": 1235})
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == second.content != other.content
    assert first.headers["x-seed"] == "1234"
    with Image.open(io.BytesIO(first.content)) as grid:
        assert grid.size == (6 * 28 + 5 * 2, 28)
    arrays = post(server, "/gan/generate", json={"n": 2, "seed": 1234, "format": "array"}).json()
    rng = np.random.default_rng(1234)  # z first, then the labels (none asked: uniform over the digits)
    z = rng.standard_normal((2, 100), dtype=np.float32)
    labels = rng.integers(0, 10, 2)
    assert arrays["labels"] == [str(d) for d in labels]
    (expected,) = local["gan"].run("model.onnx", {"z": z, "label": labels.astype(np.int64)})
    np.testing.assert_allclose(np.array(arrays["images"], dtype=np.float32), expected[:, 0], atol=1e-6)
    encoded = post(server, "/gan/generate", json={"n": 2, "seed": 1234, "format": "base64"}).json()
    with Image.open(io.BytesIO(base64.b64decode(encoded["images"][0]))) as image:
        assert image.size == (28, 28)


def test_gan_draws_the_asked_digit_for_every_image(server, local):
    answer = post(server, "/gan/generate", json={"n": 5, "seed": 77, "label": 3, "format": "array"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["labels"] == ["3"] * 5
    z = np.random.default_rng(77).standard_normal((5, 100), dtype=np.float32)
    (expected,) = local["gan"].run("model.onnx", {"z": z, "label": np.full(5, 3, dtype=np.int64)})
    np.testing.assert_allclose(np.array(answer.json()["images"], dtype=np.float32), expected[:, 0], atol=1e-6)
    unasked = post(server, "/gan/generate", json={"n": 5, "seed": 77, "format": "array"}).json()
    assert unasked["images"] != answer.json()["images"]  # same z, other labels: the label is used


def test_gan_takes_one_label_per_image(server, local):
    asked = [9, 0, 4, 4]
    answer = post(server, "/gan/generate", json={"n": 4, "seed": 5, "label": asked, "format": "array"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["labels"] == [str(d) for d in asked]
    z = np.random.default_rng(5).standard_normal((4, 100), dtype=np.float32)
    (expected,) = local["gan"].run("model.onnx", {"z": z, "label": np.array(asked, dtype=np.int64)})
    np.testing.assert_allclose(np.array(answer.json()["images"], dtype=np.float32), expected[:, 0], atol=1e-6)
    png = post(server, "/gan/generate", json={"n": 4, "seed": 5, "label": asked})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_same_seed_same_bytes_when_batched_with_other_requests(server):
    bodies = [{"n": 3, "seed": 99} if i % 2 == 0 else {"n": 1 + i % 4, "seed": i} for i in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda body: post(server, "/gan/generate", json=body), bodies))
    assert all(a.status_code == 200 for a in answers)
    assert len({a.content for a, body in zip(answers, bodies) if body["seed"] == 99}) == 1


def test_generation_without_seed_reports_the_seed_it_drew(server):
    answer = post(server, "/vae/sample", json={"n": 3, "format": "array"})
    assert answer.status_code == 200
    seed = answer.json()["seed"]
    again = post(server, "/vae/sample", json={"n": 3, "seed": seed, "format": "array"})
    assert again.json()["images"] == answer.json()["images"]


def test_vae_reconstruct_scores_an_upload(server, local):
    pixels = local["vae"].eval_rows(1)[0, 0]
    answer = post(server, "/vae/reconstruct", files={"image": ("digit.png", png_of(pixels), "image/png")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["reconstruction_error"] >= 0 and len(body["latent"]) == 16
    typical = local["vae"].model.info.metadata["metrics"]["reconstruction_mse"]
    assert body["relative_error"] == pytest.approx(body["reconstruction_error"] / typical)
    with Image.open(io.BytesIO(base64.b64decode(body["png"]))) as pair:
        assert pair.size == (28 * 2 + 2, 28)


def test_vae_interpolations_are_png_strips(server, local):
    by_seed = post(server, "/vae/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 5})
    assert by_seed.status_code == 200 and by_seed.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(by_seed.content)) as strip:
        assert strip.size == (5 * 28 + 4 * 2, 28)
    a, b = local["vae"].eval_rows(2)[:, 0]
    by_image = post(
        server,
        "/vae/interpolate/images",
        files={"image_a": ("a.png", png_of(a), "image/png"), "image_b": ("b.png", png_of(b), "image/png")},
        data={"steps": "4"},
    )
    assert by_image.status_code == 200, by_image.text
    with Image.open(io.BytesIO(by_image.content)) as strip:
        assert strip.size == (4 * 28 + 3 * 2, 28)


NAN_IMAGE = [[float("nan")] * 28] * 28
ZERO_IMAGE = [[0.0] * 28] * 28

CLIENT_MISTAKES = [
    ("/classify", {"data": b'{"images": [[1, 2', "headers": {"content-type": "application/json"}}, None),
    ("/classify", {"json": {"images": [[1, 2]]}}, "bad_shape"),
    ("/classify", {"json": {"images": [[[1, 2]]]}}, "bad_shape"),
    ("/classify", {"json": {"images": []}}, "empty"),
    ("/classify", {"json": {"images": [ZERO_IMAGE] * 65}}, "too_many_items"),
    ("/classify", {"data": '{"images": [%s]}' % str(NAN_IMAGE).replace("nan", "NaN"), "headers": {"content-type": "application/json"}}, "not_finite"),
    ("/classify", {"json": {"images": [[[255.0] * 28] * 28]}}, "out_of_range"),
    ("/classify", {"json": {"images": [[["a"] * 28] * 28]}}, "bad_array"),
    ("/classify", {"json": {"images": [ZERO_IMAGE], "model": "sentiment"}}, "wrong_task"),
    ("/classify", {"json": {"images": [ZERO_IMAGE], "top_k": 0}}, None),
    ("/classify/image", {"files": {"image": ("x.png", b"not an image at all", "image/png")}}, "not_an_image"),
    ("/classify/image", {"files": {"image": ("x.png", b"", "image/png")}}, "empty_upload"),
    ("/classify/image", {"files": {"image": ("x.png", png_of(np.eye(8))[:-30], "image/png")}}, "bad_image"),
    ("/classify/image", {"data": {"model": "cnn"}}, None),
    ("/sentiment", {"json": {"texts": []}}, "empty"),
    ("/sentiment", {"json": {"texts": ["   "]}}, "empty_text"),
    ("/sentiment", {"json": {"texts": ["好" * 2001]}}, "text_too_long"),
    ("/sentiment", {"json": {"texts": ["好"] * 65}}, "too_many_items"),
    ("/sentiment", {"json": {"texts": "not a list"}}, None),
    ("/gan/generate", {"json": {"n": 0}}, "n_out_of_range"),
    ("/gan/generate", {"json": {"n": 65}}, "n_out_of_range"),
    ("/gan/generate", {"json": {"seed": -1}}, "seed_out_of_range"),
    ("/gan/generate", {"json": {"seed": 2**64}}, "seed_out_of_range"),
    ("/gan/generate", {"json": {"format": "gif"}}, None),
    ("/gan/generate", {"json": {"n": 2, "label": 10}}, "bad_label"),
    ("/gan/generate", {"json": {"n": 2, "label": -1}}, "bad_label"),
    ("/gan/generate", {"json": {"n": 2, "label": "3"}}, "bad_label"),
    ("/gan/generate", {"json": {"n": 2, "label": True}}, "bad_label"),
    ("/gan/generate", {"json": {"n": 2, "label": 2.0}}, "bad_label"),
    ("/gan/generate", {"json": {"n": 3, "label": [1, 2]}}, "bad_label"),
    ("/gan/generate", {"json": {"n": 2, "label": [1, 10]}}, "bad_label"),
    ("/vae/interpolate", {"json": {"steps": 1}}, None),
    ("/infer/gan", {"json": {"z": [[1.0, 2.0]], "label": [0]}}, "bad_shape"),
    ("/infer/gan", {"json": {"z": [[1e6] * 100], "label": [0]}}, "out_of_range"),
    ("/infer/gan", {"json": {"latent": [[0.0] * 100], "label": [0]}}, "unknown_field"),
    ("/infer/gan", {"json": {"z": [[0.0] * 100]}}, "missing_input"),
    ("/infer/gan", {"json": {"z": [[0.0] * 100], "label": [10]}}, "out_of_range"),
    ("/infer/gan", {"json": {"z": [[0.0] * 100] * 2, "label": [1]}}, "bad_shape"),
    ("/infer/cnn", {"json": [ZERO_IMAGE]}, "invalid_input"),
]


@pytest.mark.parametrize("path,request_kwargs,reason", CLIENT_MISTAKES)
def test_client_mistakes_get_400_with_a_json_error_and_the_service_keeps_serving(server, path, request_kwargs, reason):
    answer = post(server, path, **request_kwargs)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert isinstance(body, dict) and body["error"] and body["detail"]
    if reason is not None:
        assert body["error"] == reason
    good = post(server, "/classify", json={"images": [ZERO_IMAGE]})
    assert good.status_code == 200


def test_metrics_move_as_they_should(server, local):
    version = local["cnn"].model.tag.version
    labels = {"model": "cnn", "version": version}
    before = {
        "predictions": metric(server, "modelserve_predictions_total", **labels),
        "rows": metric(server, "modelserve_batch_rows_sum", **labels),
        "compute": metric(server, "modelserve_inference_seconds_count", **labels),
        "rejected": metric(server, "modelserve_rejected_inputs_total", endpoint="classify", reason="not_finite", **labels),
    }
    rows = local["cnn"].eval_rows(7)
    assert post(server, "/classify", json={"images": rows[:, 0].tolist()}).status_code == 200
    bad = post(server, "/classify", data='{"images": [%s]}' % str(NAN_IMAGE).replace("nan", "NaN"), headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert metric(server, "modelserve_predictions_total", **labels) == before["predictions"] + 7
    assert metric(server, "modelserve_batch_rows_sum", **labels) == before["rows"] + 7
    assert metric(server, "modelserve_inference_seconds_count", **labels) >= before["compute"] + 1
    assert metric(server, "modelserve_rejected_inputs_total", endpoint="classify", reason="not_finite", **labels) == before["rejected"] + 1
    for name in EXPORT_ORDER:
        assert metric(server, "modelserve_model_info", model=name, version=local[name].model.tag.version) >= 1
    assert metric(server, "bentoml_service_request_total", endpoint="/classify") >= 2


def test_concurrent_requests_are_batched(server, local):
    labels = {"model": "resnet", "version": local["resnet"].model.tag.version}
    rows_before = metric(server, "modelserve_batch_rows_sum", **labels)
    batches_before = metric(server, "modelserve_batch_rows_count", **labels)
    row = local["resnet"].eval_rows(1)[:, 0].tolist()
    requests_sent = 96
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: post(server, "/classify", json={"images": row, "model": "resnet"}), range(requests_sent)))
    assert all(a.status_code == 200 for a in answers)
    assert len({a.json()["predictions"][0][0]["label"] for a in answers}) == 1
    assert metric(server, "modelserve_batch_rows_sum", **labels) == rows_before + requests_sent
    batches = metric(server, "modelserve_batch_rows_count", **labels) - batches_before
    assert batches < requests_sent, "no two requests ever shared a batch"
