"""The Open Inference Protocol, spoken by a client nobody here wrote: tritonclient[http].

Every V2 answer is compared with the native `/infer/*` endpoint for the same input.
"""

import json

import bentoml
import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelspec import GAN_LATENT, VAE_LATENT

TIMEOUT = 30


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(url=server.removeprefix("http://"), network_timeout=TIMEOUT)


def eval_images(n: int) -> np.ndarray:
    with np.load(bentoml.models.get("cnn:latest").path_of("eval.npz")) as data:
        return data["x"][:n].astype(np.float32)


def native(server: str, route: str, body: dict, output: str) -> np.ndarray:
    response = requests.post(f"{server}/infer/{route}", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["outputs"][output], dtype=np.float32)


def infer(client, model: str, name: str, array: np.ndarray, binary: bool, outputs=None):
    tensor = triton.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    requested = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=requested)


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "modelserve" and "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize("model", ["cnn", "resnet", "resnet-int8", "sentiment", "gan", "vae-decoder", "vae-encoder"])
def test_model_metadata_matches_the_stored_spec(server, smoke_store, client, model):
    """Against the version the server loaded (other tests store newer ones meanwhile)."""
    assert client.is_model_ready(model)
    metadata = client.get_model_metadata(model)
    stored = bentoml.models.get(smoke_store[{"vae-decoder": "vae", "vae-encoder": "vae"}.get(model, model)].tag)
    assert metadata["versions"] == [stored.tag.version]
    assert client.is_model_ready(model, model_version=stored.tag.version)
    if model == "sentiment":
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
        return
    graphs = {g["filename"]: g for g in stored.info.metadata["spec"]["graphs"]}
    graph = graphs[{"vae-decoder": "decoder.onnx", "vae-encoder": "encoder.onnx"}.get(model, "model.onnx")]
    assert [(t["name"], t["shape"]) for t in metadata["inputs"]] == [(t["name"], t["shape"]) for t in graph["inputs"]]
    assert [(t["name"], t["shape"]) for t in metadata["outputs"]] == [(t["name"], t["shape"]) for t in graph["outputs"]]
    datatypes = {"float32": "FP32", "int64": "INT64"}  # the gan's `label` is INT64
    assert [t["datatype"] for t in metadata["inputs"] + metadata["outputs"]] == [
        datatypes[t["dtype"]] for t in graph["inputs"] + graph["outputs"]
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", ["cnn", "resnet-int8"])
def test_classifiers_equal_the_native_endpoint(server, client, model, binary):
    images = eval_images(7)
    logits = infer(client, model, "image", images, binary).as_numpy("logits")
    assert logits.shape == (7, 10)
    np.testing.assert_allclose(logits, native(server, model, {"image": images.tolist()}, "logits"), atol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_sentiment_takes_text(server, client, binary):
    texts = ["质量很好，物流也快，非常满意", "太差了，用了两天就坏了", "一般"]
    probabilities = infer(client, "sentiment", "text", np.array([t.encode() for t in texts], dtype=object), binary).as_numpy("probabilities")
    np.testing.assert_allclose(probabilities, native(server, "sentiment", {"text": texts}, "probabilities"), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # smoke models: no claim about quality


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_conditional_gan_takes_z_and_label(server, client, binary):
    z = np.random.default_rng(5).standard_normal((3, GAN_LATENT), dtype=np.float32)
    labels = np.array([7, 0, 7], dtype=np.int64)
    tensors = [triton.InferInput("z", list(z.shape), "FP32"), triton.InferInput("label", [3], "INT64")]
    tensors[0].set_data_from_numpy(z, binary_data=binary)
    tensors[1].set_data_from_numpy(labels, binary_data=binary)
    pictures = client.infer("gan", tensors).as_numpy("image")
    assert pictures.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(pictures, native(server, "gan", {"z": z.tolist(), "label": labels.tolist()}, "image"), atol=1e-5)
    assert not np.allclose(pictures[0], native(server, "gan", {"z": z[:1].tolist(), "label": [1]}, "image")[0])
    with pytest.raises(InferenceServerException, match="label"):
        client.infer("gan", tensors[:1])  # z alone: the label is missing


def test_vae_decoder_equals_the_native_endpoint(server, client):
    z = np.random.default_rng(5).standard_normal((3, VAE_LATENT), dtype=np.float32)
    pictures = infer(client, "vae-decoder", "z", z, binary=True).as_numpy("image")
    assert pictures.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(pictures, native(server, "vae-decoder", {"z": z.tolist()}, "image"), atol=1e-5)


def test_one_output_of_several_can_be_asked_for(server, client):
    images = eval_images(2)
    result = infer(client, "vae-encoder", "image", images, binary=True, outputs=["mu"])
    assert result.as_numpy("logvar") is None
    np.testing.assert_allclose(result.as_numpy("mu"), native(server, "vae-encoder", {"image": images.tolist()}, "mu"), atol=1e-5)


def test_client_mistakes_get_v2_errors(server, client):
    with pytest.raises(InferenceServerException, match="datatype FP32"):
        tensor = triton.InferInput("image", [1, 1, 28, 28], "FP64")
        tensor.set_data_from_numpy(np.zeros((1, 1, 28, 28)), binary_data=True)
        client.infer("cnn", [tensor])
    with pytest.raises(InferenceServerException, match="no model"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="version"):
        client.get_model_metadata("cnn", model_version="not-a-version")

    def post(body, model="cnn"):
        # json.dumps writes NaN as Python's json.loads reads it; strict JSON has no NaN at all
        return requests.post(f"{server}/v2/models/{model}/infer", data=json.dumps(body), timeout=TIMEOUT)

    image = {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}
    cases = [
        ({"inputs": [{**image, "shape": [1, 28, 28]}]}, "does not match"),
        ({"inputs": [{**image, "data": [0.0] * 783}]}, "783 values"),
        ({"inputs": [{**image, "data": [float("nan")] + [0.0] * 783}]}, "NaN or infinite"),
        ({"inputs": [{**image, "data": [2.0] * 784}]}, "[0, 1]"),
        ({"inputs": [{**image, "name": ["image"]}]}, "takes inputs"),
        ({"inputs": [{**image, "parameters": [1]}]}, "parameters"),
        ({"inputs": [image], "outputs": {"name": "logits"}}, "outputs"),
        ({"inputs": [{**image, "data": [10**400] * 784}]}, "FP32 numbers"),
        ({"inputs": [{**image, "shape": [2**40, 2**40, 2**40, 2**40], "data": []}]}, "does not match"),
        ({"inputs": [{**image, "shape": [2**62, 1, 28, 28], "data": []}]}, "values"),
        ({"inputs": [{**image, "name": "pixels"}]}, "takes inputs"),
        ({"inputs": [{**image, "data": ["a"] * 784}]}, "FP32 numbers"),
        ({"inputs": [{**image, "shape": [65, 1, 28, 28], "data": [0.0] * 784 * 65}]}, "limit"),
        ({"inputs": [image], "outputs": [{"name": "probabilities"}]}, "unknown outputs"),
        ({"input": []}, "inputs"),
    ]
    for body, message in cases:
        response = post(body)
        assert response.status_code == 400, (body, response.text)
        assert set(response.json()) == {"error"}
        assert message in response.json()["error"]
    assert post({"inputs": [image]}, model="nope").status_code == 404
    unknown_route = requests.get(f"{server}/v2/nope/at/all", timeout=TIMEOUT)
    assert unknown_route.status_code == 404 and set(unknown_route.json()) == {"error"}, "the protocol's error shape on every /v2 route"
    for headers in ({"Inference-Header-Content-Length": "99999"}, {"Inference-Header-Content-Length": "x"}):
        response = requests.post(f"{server}/v2/models/cnn/infer", data=b'{"inputs": []}', headers=headers, timeout=TIMEOUT)
        assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]
    infinite = np.full((1, 1, 28, 28), np.inf, dtype=np.float32)
    with pytest.raises(InferenceServerException, match="NaN or infinite"):
        infer(client, "cnn", "image", infinite, binary=True)
    good = post({"inputs": [image]})
    assert good.status_code == 200 and good.json()["outputs"][0]["shape"] == [1, 10]


def test_v2_requests_run_through_the_batchers_and_their_metrics(server, client):
    def batches_of(model: str) -> float:
        text = requests.get(f"{server}/metrics", timeout=TIMEOUT).text
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("modelserve_batch_rows_count") and f'model="{model}"' in line
        )

    before = batches_of("resnet")
    infer(client, "resnet", "image", eval_images(3), binary=True)
    assert batches_of("resnet") == before + 1
