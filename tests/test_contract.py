"""A model that exists only in this test is served through its task's contract.

The test writes a tiny ONNX image classifier (3 channels, 32x32, 3 labels, its own mean and
std), stores it with a spec of its own, and serves a store that holds nothing else: the
image endpoints and the Open Inference Protocol answer for it with no change to service/.
"""

import io
import os
import shutil

import bentoml
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as triton
from onnx import TensorProto, helper
from PIL import Image

from load_tests.server import running
from modelspec import IMAGE_CLASSIFICATION, Floor, GraphSpec, ModelSpec, TensorSpec

TIMEOUT = 30
LABELS = ("circle", "square", "triangle")
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def write_tiny_classifier(path: str, seed: int = 0) -> None:
    """logits [N, 3] = flatten(image [N, 3, 32, 32]) @ W + b, with a dynamic batch axis."""
    rng = np.random.default_rng(seed)
    weights = helper.make_tensor("W", TensorProto.FLOAT, [3 * 32 * 32, 3], rng.standard_normal(3 * 32 * 32 * 3).astype(np.float32) * 0.05)
    bias = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.1, -0.2, 0.3])
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("Gemm", ["flat", "W", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def tiny_spec(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        task=IMAGE_CLASSIFICATION,
        input_kind="image",
        description="A test-only classifier of colour shapes.",
        graphs=(GraphSpec("model.onnx", (TensorSpec("image", "float32", (-1, 3, 32, 32), "normalized"),), (TensorSpec("logits", "float32", (-1, 3), "logits"),)),),
        floor=Floor("accuracy", minimum=0.0),
        labels=LABELS,
        preprocessing={"size": [32, 32], "channels": 3, "value_range": [0.0, 1.0], "mean": MEAN, "std": STD,
                       "polarity": "as_is", "framing": "resize", "resample": "bilinear"},
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(url, model path): a server whose store holds the tiny model and nothing else."""
    from export import store

    folder = tmp_path_factory.mktemp("tiny-model")
    write_tiny_classifier(str(folder / "model.onnx"))
    stored = store.save(tiny_spec("shapes-test"), str(folder), {"metrics": {}})
    home = tmp_path_factory.mktemp("tiny-home")
    shutil.copytree(stored.path, home / "models" / "shapes-test" / stored.tag.version)
    (home / "models" / "shapes-test" / "latest").write_text(stored.tag.version)
    bentoml.models.delete(stored.tag)  # the other tests' servers never see it
    with running({"BENTOML_HOME": str(home), "MODELSERVE_WORKERS": "1"}, log_dir=str(home)) as url:
        yield url, str(home / "models" / "shapes-test" / stored.tag.version / "model.onnx"), stored.tag.version


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run_locally(path: str, pixels: np.ndarray) -> np.ndarray:
    normalized = (pixels - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": normalized.astype(np.float32)})[0]


def test_an_uploaded_colour_image_is_classified_by_the_test_model(tiny):
    url, path, version = tiny
    rng = np.random.default_rng(1)
    rgb = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
    answer = requests.post(f"{url}/classify/image", files={"image": ("x.png", buffer.getvalue(), "image/png")}, data={"model": "shapes-test"}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "shapes-test" and body["version"] == version == answer.headers["x-model-version"]
    expected = softmax(run_locally(path, rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255))[0]
    assert [p["label"] for p in body["predictions"][0]] == [LABELS[i] for i in np.argsort(-expected)]
    for item in body["predictions"][0]:
        assert item["probability"] == pytest.approx(expected[LABELS.index(item["label"])], abs=1e-5)
    big = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(rgb, 3, axis=0), 2, axis=1), "RGB").save(big, format="JPEG")
    resized = requests.post(f"{url}/classify/image", files={"image": ("x.jpg", big.getvalue(), "image/jpeg")}, timeout=TIMEOUT)
    assert resized.status_code == 200 and resized.json()["model"] == "shapes-test", resized.text


def test_json_batches_and_v2_reach_the_test_model(tiny):
    url, path, version = tiny
    pixels = np.random.default_rng(2).random((4, 3, 32, 32)).astype(np.float32)
    answer = requests.post(f"{url}/classify", json={"images": pixels.tolist(), "top_k": 3}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    expected = softmax(run_locally(path, pixels))
    got = np.array([[next(p["probability"] for p in row if p["label"] == label) for label in LABELS] for row in answer.json()["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    wrong = requests.post(f"{url}/classify", json={"images": pixels[:, 0].tolist()}, timeout=TIMEOUT)
    assert wrong.status_code == 400 and wrong.json()["error"] == "bad_shape" and "[N, 3, 32, 32]" in wrong.json()["detail"]

    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=TIMEOUT)
    metadata = client.get_model_metadata("shapes-test")
    assert metadata["versions"] == [version] and metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    normalized = ((pixels - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]).astype(np.float32)
    tensor = triton.InferInput("image", list(normalized.shape), "FP32")
    tensor.set_data_from_numpy(normalized, binary_data=True)
    logits = client.infer("shapes-test", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(logits, run_locally(path, pixels), atol=1e-5)
    assert client.get_model_config("shapes-test")["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]
    listed = requests.get(f"{url}/models", timeout=TIMEOUT).json()["models"]
    assert [m["name"] for m in listed] == ["shapes-test"] and listed[0]["labels"] == list(LABELS)


def test_the_service_code_names_no_model(tiny):
    """What made the test model servable is its spec, not a line of service/."""
    from modelspec import SPECS

    service = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "service")
    code = "".join(open(os.path.join(service, f), encoding="utf-8").read() for f in os.listdir(service) if f.endswith(".py"))
    for name in [*SPECS, "shapes-test"]:
        assert f'"{name}"' not in code and f"'{name}'" not in code, name
