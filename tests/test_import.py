"""`python -m export import`: a user's ONNX model checked and stored, or refused with nothing stored.

The models are written here with onnx.helper (no torch). `write_tiny_classifier` is meant for
reuse by the serving tests: a 3-channel 32x32 classifier whose answer is the channel with the
highest mean (red, green, blue).
"""

import os
import subprocess
import sys

import bentoml
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from export import importer, verify
from modelspec import OPSET, ModelSpec, sha256_file

TINY_LABELS = ["red", "green", "blue"]


def write_graph(path, nodes, inputs, outputs, initializers=()) -> str:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return str(path)


def write_tiny_classifier(path, batch="N", channels=3, size=(32, 32), classes=3) -> str:
    """float32 image [batch, channels, H, W] -> scores [batch, classes]: each channel's mean,
    times a fixed matrix (the identity scaled by 10 for 3 channels and 3 classes)."""
    weights = np.eye(channels, classes, dtype=np.float32) * 10.0
    if channels == 1:
        weights = np.linspace(-1.0, 1.0, classes, dtype=np.float32)[None] * 10.0
    bias = np.zeros(classes, dtype=np.float32)
    if channels == 1:
        bias = -weights[0] * 0.5  # class k wins where the mean brightness is near k / (classes - 1)
    return write_graph(
        path,
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weights", "bias"], ["scores"]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, *size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes])],
        [helper.make_tensor("weights", TensorProto.FLOAT, weights.shape, weights.ravel()),
         helper.make_tensor("bias", TensorProto.FLOAT, bias.shape, bias)],
    )


def write_unrunnable(path) -> str:
    """Passes onnx.checker, fails in ONNX Runtime: it picks channel 7 of a 3-channel image."""
    return write_graph(
        path,
        [helper.make_node("Gather", ["image", "channel"], ["picked"], axis=1), helper.make_node("Flatten", ["picked"], ["scores"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor("channel", TensorProto.INT64, [1], [7])],
    )


def write_vector_model(path) -> str:
    """[N, 5] -> [N, 5]: a tensor model, no image."""
    return write_graph(
        path,
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
    )


def stored_versions(name: str) -> list:
    try:
        return list(bentoml.models.list(name))
    except bentoml.exceptions.NotFound:
        return []


def run_import(*args) -> int:
    return importer.main([str(a) for a in args])


def test_import_stores_the_file_its_signature_labels_and_preprocessing(tmp_path):
    path = write_tiny_classifier(tmp_path / "tiny.onnx")
    assert run_import(path, "--name", "tiny", "--task", "image-classification", "--labels", ",".join(TINY_LABELS),
                      "--preprocessing", "mean=0.5,0.5,0.5", "std=0.25,0.25,0.25", "polarity=dark_on_light") == 0
    (model,) = stored_versions("tiny")
    md = model.info.metadata
    spec = ModelSpec.from_dict(md["spec"])
    assert spec.task == "image-classification" and list(spec.labels) == TINY_LABELS
    graph = spec.graphs[0]
    assert [t.to_dict() for t in graph.inputs] == [{"name": "image", "dtype": "float32", "shape": [-1, 3, 32, 32], "kind": "tensor"}]
    assert [(t.name, t.dtype, t.shape) for t in graph.outputs] == [("scores", "float32", (-1, 3))]
    assert spec.preprocessing == {
        "size": [32, 32], "channels": 3, "value_range": [0.0, 1.0], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "polarity": "dark_on_light", "framing": "resize", "resample": "bilinear",
    }
    source_sha256 = sha256_file(path)
    assert md["imported_from"] == {"file": "tiny.onnx", "sha256": source_sha256} and md["sha256"] == source_sha256
    assert md["onnx_files"]["model.onnx"]["sha256"] == source_sha256 == sha256_file(model.path_of("model.onnx"))
    assert md["opset"] == OPSET and md["metrics"] == {}

    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    stored = ort.InferenceSession(model.path_of("model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    source = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_array_equal(stored, source)
    assert verify.check("tiny") == []


def colour_folder(folder, mislabelled: int = 0) -> str:
    """Two solid images per colour, in sub-folders named by colour; `mislabelled` of them in the wrong one."""
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    placed = 0
    for index, (name, rgb) in enumerate(colours.items()):
        for copy in range(2):
            wrong = placed < mislabelled and copy == 0
            target = TINY_LABELS[(index + 1) % 3] if wrong else name
            placed += wrong
            os.makedirs(folder / target, exist_ok=True)
            Image.new("RGB", (40 + copy * 9, 20), rgb).save(folder / target / f"{name}{copy}.png")
    return str(folder)


def test_import_with_eval_measures_accuracy_with_onnx_runtime(tmp_path):
    path = write_tiny_classifier(tmp_path / "tiny.onnx")
    images = colour_folder(tmp_path / "colours", mislabelled=1)
    assert run_import(path, "--name", "tiny-eval", "--task", "image-classification", "--labels", ",".join(TINY_LABELS), "--eval", images) == 0
    model = bentoml.models.get("tiny-eval:latest")
    md = model.info.metadata
    assert md["metrics"]["accuracy"] == pytest.approx(5 / 6) and md["metrics"]["n"] == 6
    with np.load(model.path_of("eval.npz")) as data:
        assert data["x"].shape == (6, 3, 32, 32) and sorted(data["y"].tolist()) == [0, 1, 1, 1, 2, 2]
    assert md["dataset"]["name"] == "folder:colours" and len(md["dataset"]["sha256"]) == 64
    assert verify.check("tiny-eval") == []
    with open(os.path.join(os.environ["REPORTS_DIR"], "models.md"), encoding="utf-8") as f:
        rows = [line for line in f.read().split("## Imported models")[1].splitlines() if line.startswith("| tiny-eval |")]
    assert len(rows) == 1 and "tiny.onnx" in rows[0] and "accuracy 0.8333 on 6 images of folder:colours" in rows[0]


def idx_file(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_import_with_idx_eval_maps_label_values_to_outputs(tmp_path):
    path = write_tiny_classifier(tmp_path / "grey.onnx", channels=1, size=(28, 28), classes=2)
    folder = tmp_path / "idx"
    folder.mkdir()
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[2:] = 255  # bright images are class 1
    idx_file(folder / "train-images-idx3-ubyte", images)
    idx_file(folder / "train-labels-idx1-ubyte", np.array([0, 1, 1, 1]))  # one wrong label
    assert run_import(path, "--name", "grey", "--task", "image-classification", "--labels", "dark,bright", "--eval", folder) == 0
    metrics = bentoml.models.get("grey:latest").info.metadata["metrics"]
    assert metrics["accuracy"] == pytest.approx(0.75) and metrics["per_class_accuracy"] == {"dark": 1.0, "bright": 2 / 3}



def test_idx_eval_uses_the_t10k_pair_when_there_is_one(tmp_path):
    """A folder of all four files (Debian's, say): the model is judged on the test images only."""
    path = write_tiny_classifier(tmp_path / "grey.onnx", channels=1, size=(28, 28), classes=2)
    folder = tmp_path / "idx"
    folder.mkdir()
    dark_and_bright = np.repeat(np.array([0, 255], dtype=np.uint8), 2)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    idx_file(folder / "train-images-idx3-ubyte", np.concatenate([dark_and_bright] * 5))
    idx_file(folder / "train-labels-idx1-ubyte", np.zeros(20))  # all wrong for the bright ones
    idx_file(folder / "t10k-images-idx3-ubyte", dark_and_bright)
    idx_file(folder / "t10k-labels-idx1-ubyte", np.array([0, 0, 1, 1]))
    assert run_import(path, "--name", "grey-t10k", "--task", "image-classification", "--labels", "dark,bright", "--eval", folder) == 0
    metadata = bentoml.models.get("grey-t10k:latest").info.metadata
    assert metadata["metrics"]["accuracy"] == 1.0 and metadata["dataset"]["sizes"]["test"] == 4

def test_fixed_batch_is_refused_without_the_flag_and_recorded_with_it(tmp_path, capsys):
    path = write_tiny_classifier(tmp_path / "fixed.onnx", batch=1)
    assert run_import(path, "--name", "fixed", "--task", "image-classification") == 1
    assert "fixed batch axis" in capsys.readouterr().err and stored_versions("fixed") == []
    assert run_import(path, "--name", "fixed", "--task", "image-classification", "--fixed-batch") == 0
    spec = ModelSpec.from_dict(bentoml.models.get("fixed:latest").info.metadata["spec"])
    assert spec.preprocessing["max_batch"] == 1 and spec.graphs[0].inputs[0].shape == (1, 3, 32, 32)
    assert list(spec.labels) == ["0", "1", "2"]


def test_the_name_of_a_trained_model_is_refused(tmp_path, capsys):
    before = stored_versions("cnn")
    assert run_import(write_tiny_classifier(tmp_path / "m.onnx"), "--name", "cnn", "--task", "image-classification") == 1
    assert "one of the trained models" in capsys.readouterr().err and stored_versions("cnn") == before


def test_a_tensor_model_is_stored_with_its_signature(tmp_path):
    path = write_vector_model(tmp_path / "vector.onnx")
    assert run_import(path, "--name", "vector", "--task", "tensor") == 0
    spec = ModelSpec.from_dict(bentoml.models.get("vector:latest").info.metadata["spec"])
    assert spec.task == "tensor" and spec.labels == () and spec.preprocessing == {}
    assert [(t.name, t.dtype, t.shape) for t in spec.graphs[0].inputs] == [("x", "float32", (-1, 5))]


def not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_bytes(b"these are not the weights you are looking for")
    return [path, "--task", "image-classification"]


def wrong_label_count(tmp_path):
    return [write_tiny_classifier(tmp_path / "m.onnx"), "--task", "image-classification", "--labels", "a,b,c,d"]


def cannot_run(tmp_path):
    return [write_unrunnable(tmp_path / "m.onnx"), "--task", "tensor"]


def wrong_task(tmp_path):
    return [write_vector_model(tmp_path / "m.onnx"), "--task", "image-classification"]


def fixed_batch_without_flag(tmp_path):
    return [write_tiny_classifier(tmp_path / "m.onnx", batch=4), "--task", "image-classification"]


def bad_preprocessing(tmp_path):
    return [write_tiny_classifier(tmp_path / "m.onnx"), "--task", "image-classification", "--preprocessing", "polarity=sideways"]


def mean_for_one_channel(tmp_path):
    return [write_tiny_classifier(tmp_path / "m.onnx"), "--task", "image-classification", "--preprocessing", "mean=0.5"]


def missing_file(tmp_path):
    return [tmp_path / "nowhere.onnx", "--task", "tensor"]


def flag_on_a_dynamic_batch(tmp_path):
    return [write_tiny_classifier(tmp_path / "m.onnx"), "--task", "image-classification", "--fixed-batch"]


def labels_for_a_tensor_model(tmp_path):
    return [write_vector_model(tmp_path / "m.onnx"), "--task", "tensor", "--labels", "a,b"]


@pytest.mark.parametrize(
    "arguments, problem",
    [
        (not_onnx, "not an ONNX file"),
        (wrong_label_count, "4 labels for an output of width 3"),
        (cannot_run, "fails to run on a random input of its declared shape"),
        (wrong_task, "has shape [-1, 5]; expected [N, C, H, W]"),
        (fixed_batch_without_flag, "fixed batch axis"),
        (bad_preprocessing, "polarity=sideways: use one of light_on_dark, dark_on_light, as_is"),
        (mean_for_one_channel, "1 values for 3 channels"),
        (missing_file, "file not found"),
        (flag_on_a_dynamic_batch, "is dynamic ([-1, 3, 32, 32]): leave the flag out"),
        (labels_for_a_tensor_model, "--labels are for image-classification, not tensor"),
    ],
)
def test_a_failing_model_is_refused_with_its_problem_and_nothing_is_stored(tmp_path, capsys, arguments, problem):
    assert run_import(*arguments(tmp_path), "--name", "refused") == 1
    error = capsys.readouterr().err
    assert "nothing stored" in error and problem in error
    assert stored_versions("refused") == []


BLOCK_TRAINING_STACK = """
import runpy, sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "onnxscript", "torchvision"}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.argv = ["python -m export", *sys.argv[1:]]
runpy.run_module("export", run_name="__main__", alter_sys=True)
"""


def test_import_and_verify_run_without_torch(tmp_path):
    path = write_tiny_classifier(tmp_path / "tiny.onnx")
    images = colour_folder(tmp_path / "colours")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(*args):
        return subprocess.run([sys.executable, "-c", BLOCK_TRAINING_STACK, *args], cwd=root, capture_output=True, text=True, timeout=300)

    imported = run("import", path, "--name", "no-torch", "--task", "image-classification", "--labels", ",".join(TINY_LABELS), "--eval", images)
    assert imported.returncode == 0, imported.stderr
    assert "accuracy 1.0000 on 6 images" in imported.stdout
    verified = run("verify", "no-torch")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.split() == ["no-torch", "ok"]
