"""A user's ONNX image classifier, imported with `python -m export import`, is served with no code
change: live (PUT for a name not yet served), through the image endpoint and V2, unloaded with
DELETE, and at a restart. The server runs on a home of its own whose store holds a copy of the
test store's cnn, then the imported models."""

import io
import os
import shutil
import subprocess
import sys

import bentoml
import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as triton
from PIL import Image

from conftest import ROOT, _scratch
from load_tests import server as launcher
from test_import import TINY_LABELS, write_tiny_classifier

TIMEOUT = 30
ADMIN = {"Authorization": "Bearer import-admin-key"}
ENV = {"MODELSERVE_WORKERS": "2", "MODELSERVE_ADMIN_KEYS": "import-admin-key"}
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def import_model(home: str, path: str, name: str) -> None:
    """The command a user runs, into that home's store."""
    command = [sys.executable, "-m", "export", "import", path, "--name", name, "--task", "image-classification",
               "--labels", ",".join(TINY_LABELS), "--preprocessing", f"mean={','.join(map(str, MEAN))}", f"std={','.join(map(str, STD))}"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "BENTOML_HOME": home}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def stored_version(home: str, name: str) -> str:
    with open(f"{home}/models/{name}/latest") as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def home(smoke_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("import-home")
    cnn = bentoml.models.get(smoke_store["cnn"].tag)
    shutil.copytree(cnn.path, path / "models" / "cnn" / cnn.tag.version)
    (path / "models" / "cnn" / "latest").write_text(cnn.tag.version)
    return str(path)


def expected_probabilities(onnx_path: str, pixels: np.ndarray) -> np.ndarray:
    x = ((pixels - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]).astype(np.float32)
    scores = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_an_imported_model_is_served_live_unloaded_and_after_a_restart(home, tmp_path):
    source = write_tiny_classifier(tmp_path / "tiny.onnx")
    with launcher.running({**ENV, "BENTOML_HOME": home}, log_dir=_scratch) as url:
        import_model(home, source, "shapes")
        version = stored_version(home, "shapes")
        before = requests.post(f"{url}/classify", json={"images": [[[0.0] * 32] * 32], "model": "shapes"}, timeout=TIMEOUT)
        assert before.status_code == 404 and before.json()["error"] == "unknown_model", "served before anyone asked"
        loaded = requests.put(f"{url}/admin/models/shapes", json={"default": version}, headers=ADMIN, timeout=TIMEOUT)
        assert loaded.status_code == 200, loaded.text

        rgb = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buffer, format="PNG")
        for _ in range(4):  # both workers serve it
            answer = requests.post(f"{url}/classify/image", files={"image": ("x.png", buffer.getvalue(), "image/png")}, data={"model": "shapes"}, timeout=TIMEOUT)
            assert answer.status_code == 200 and answer.headers["x-model-version"] == version, answer.text
        want = expected_probabilities(source, rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0]
        got = {p["label"]: p["probability"] for p in answer.json()["predictions"][0]}
        np.testing.assert_allclose([got[label] for label in TINY_LABELS], want, atol=1e-5)

        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=TIMEOUT)
        x = np.random.default_rng(4).random((2, 3, 32, 32)).astype(np.float32)
        tensor = triton.InferInput("image", [2, 3, 32, 32], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        direct = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        np.testing.assert_allclose(client.infer("shapes", [tensor]).as_numpy("scores"), direct, atol=1e-5)

        unloaded = requests.delete(f"{url}/admin/models/shapes", headers=ADMIN, timeout=TIMEOUT)
        assert unloaded.status_code == 200 and unloaded.json()["state"] is None
        gone = requests.post(f"{url}/classify", json={"images": [[[0.0] * 32] * 32], "model": "shapes"}, timeout=TIMEOUT)
        assert gone.status_code == 404
        last = requests.delete(f"{url}/admin/models/cnn", headers=ADMIN, timeout=TIMEOUT)
        assert last.status_code == 409 and last.json()["error"] == "last_model"
        import_model(home, write_tiny_classifier(tmp_path / "other.onnx", classes=3), "shapes-two")

    with launcher.running({**ENV, "BENTOML_HOME": home}, log_dir=_scratch) as again:
        names = [m["name"] for m in requests.get(f"{again}/models", timeout=TIMEOUT).json()["models"]]
        assert names == ["cnn", "shapes-two"], "an unloaded model stays unloaded; a newly imported one is served at a restart"
