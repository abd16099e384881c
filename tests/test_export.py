"""Export pipeline: ONNX signatures and parity, the floors' refusal path, the stored metadata.

Models are trained with the `smoke` profile into the test run's own store (see conftest.py).
Where a test needs a stored model that a smoke-trained model cannot earn, it replaces the
floor explicitly; the real floors are applied by `make models` and re-checked by
`python -m export verify`.
"""

import dataclasses
import json
import os

import bentoml
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import pipeline, store, verify
from export.onnx_export import ExportError, check_graph, export_graph, random_inputs, verify_parity
from export.recipe import TrainOptions
from conftest import any_quality
from modelspec import OPSET, SPECS, ModelSpec, sha256_file
from models.cnn import DigitCNN
from models.resnet import SmallResNet

SMOKE = TrainOptions(profile="smoke", progress=False)


def versions(name: str) -> list[str]:
    return sorted(str(m.tag) for m in bentoml.models.list(name))


@pytest.fixture(scope="module")
def stored_cnn():
    return pipeline.run("cnn", SMOKE, spec_override=any_quality("cnn"))


def test_specs_round_trip_through_metadata():
    for spec in SPECS.values():
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("name,module", [("cnn", DigitCNN()), ("resnet", SmallResNet())])
def test_classifier_exports_with_dynamic_batch(tmp_path, name, module):
    spec, graph = SPECS[name], SPECS[name].graphs[0]
    path = str(tmp_path / graph.filename)
    export_graph(module, spec, graph, path)
    assert verify_parity(module, spec, graph, path) <= 1e-4
    model = onnx.load(path)
    assert model.opset_import[0].version == OPSET
    assert not os.listdir(tmp_path) or os.listdir(tmp_path) == [graph.filename]  # self-contained
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 7, 64):
        (logits,) = session.run(None, {"image": np.zeros((batch, 1, 28, 28), np.float32)})
        assert logits.shape == (batch, 10)


def test_parity_failure_is_an_export_error(tmp_path):
    spec, graph = SPECS["cnn"], SPECS["cnn"].graphs[0]
    torch.manual_seed(0)
    exported, other = DigitCNN(), DigitCNN()
    path = str(tmp_path / graph.filename)
    export_graph(exported, spec, graph, path)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_parity(other.eval(), spec, graph, path)


def test_signature_check_rejects_a_graph_that_breaks_the_spec(tmp_path):
    spec = SPECS["cnn"]
    graph = spec.graphs[0]
    path = str(tmp_path / graph.filename)
    export_graph(DigitCNN(), spec, graph, path)
    wrong = dataclasses.replace(graph, outputs=(dataclasses.replace(graph.outputs[0], shape=(-1, 11)),))
    with pytest.raises(ExportError, match="does not match the spec"):
        check_graph(path, spec, wrong)


def test_random_inputs_pad_tokens_after_each_length():
    spec = dataclasses.replace(SPECS["sentiment"], preprocessing={**SPECS["sentiment"].preprocessing, "vocab_size": 50})
    arrays = random_inputs(spec, spec.graphs[0], batch=9, seq_len=12, rng=np.random.default_rng(0))
    tokens, lengths = arrays["tokens"], arrays["lengths"]
    assert tokens.shape == (9, 12) and lengths.max() == 12 and lengths.min() >= 1
    for row, length in zip(tokens, lengths):
        assert (row[:length] >= 2).all() and (row[length:] == 0).all()


def test_stored_model_carries_everything_to_recheck_it(stored_cnn):
    model = bentoml.models.get(stored_cnn.tag)
    md = model.info.metadata
    spec = ModelSpec.from_dict(md["spec"])
    assert spec.name == "cnn" and list(spec.labels) == [str(d) for d in range(10)]
    assert spec.graphs[0].inputs[0].to_dict() == {"name": "image", "dtype": "float32", "shape": [-1, 1, 28, 28], "kind": "image01"}
    assert spec.preprocessing["source_size"] == [8, 8] and spec.preprocessing["polarity"] == "light_on_dark"
    assert md["opset"] == OPSET
    assert md["onnx_files"]["model.onnx"]["sha256"] == sha256_file(model.path_of("model.onnx"))
    assert {"torch", "onnx", "onnxruntime", "bentoml"} <= set(md["versions"])
    dataset = md["dataset"]
    assert dataset["name"] == "sklearn-digits" and len(dataset["sha256"]) == 64 and dataset["split_seed"] == 0
    assert dataset["sizes"]["total"] == 1797 and dataset["sizes"]["test"] == 359  # 20% of each class
    assert dataset["sizes"]["train"] == 256  # the smoke profile trains on a subset of the other 80%
    assert md["parity_max_abs_diff"]["model.onnx"] <= 1e-4

    # The stored metric, re-measured with nothing but onnxruntime and eval.npz.
    with np.load(model.path_of("eval.npz")) as data:
        x, y, indices = data["x"], data["y"], data["indices"]
    assert x.shape == (dataset["sizes"]["test"], 1, 28, 28) and x.dtype == np.float32
    assert len(np.unique(indices)) == len(indices) == len(y)
    session = ort.InferenceSession(model.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x})
    assert md["metrics"]["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == y)))
    assert md["metrics"]["n"] == len(y)
    assert verify.check("cnn") == []


def test_model_under_its_floor_is_not_stored(stored_cnn):
    before = versions("cnn")
    with pytest.raises(pipeline.FloorError, match="under its floor"):
        pipeline.run("cnn", SMOKE)  # the real floor, 0.990: one smoke epoch cannot reach it
    assert versions("cnn") == before
    assert str(store.latest("cnn").tag) == stored_cnn.tag


def test_retraining_adds_a_version_with_the_same_metrics(stored_cnn):
    again = pipeline.run("cnn", SMOKE, spec_override=any_quality("cnn"))
    assert again.tag != stored_cnn.tag and again.tag in versions("cnn")
    assert again.metrics == stored_cnn.metrics


def test_verify_detects_a_tampered_model(stored_cnn):
    path = store.latest("cnn").path_of("model.onnx")
    original = open(path, "rb").read()
    try:
        with open(path, "ab") as f:
            f.write(b"\0")
        assert any("sha256" in problem for problem in verify.check("cnn"))
    finally:
        with open(path, "wb") as f:
            f.write(original)
    assert verify.check("cnn") == []


def test_int8_is_quantized_from_the_stored_resnet_and_timed(stored_cnn):
    resnet = pipeline.run("resnet", SMOKE, spec_override=any_quality("resnet"))
    int8 = pipeline.run("resnet-int8", SMOKE, spec_override=any_quality("resnet-int8"))
    md = bentoml.models.get(int8.tag).info.metadata
    q = md["quantization"]
    assert md["training"]["quantized_from"] == resnet.tag
    assert q["chosen"] in q["candidates"]
    assert q["candidates"][q["chosen"]]["latency_ms_batch32"] == min(c["latency_ms_batch32"] for c in q["candidates"].values() if c["meets_floor"])
    assert q["candidates"][q["chosen"]]["bytes"] < q["fp32_bytes"]
    assert md["dataset"]["sha256"] == bentoml.models.get(resnet.tag).info.metadata["dataset"]["sha256"]
    model = onnx.load(bentoml.models.get(int8.tag).path_of("model.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert verify.check("resnet-int8") == []


def test_fashion_and_its_int8_variant_go_through_the_same_path():
    fashion = pipeline.run("fashion", SMOKE, spec_override=any_quality("fashion"))
    md = bentoml.models.get(fashion.tag).info.metadata
    spec = ModelSpec.from_dict(md["spec"])
    assert spec.labels == SPECS["fashion"].labels and spec.labels[0] == "T-shirt/top"
    assert spec.preprocessing["polarity"] == "light_on_dark" and spec.preprocessing["framing"] == "crop_to_content"
    assert spec.preprocessing["source_size"] == [28, 28] and "content_margin" in spec.preprocessing
    assert md["dataset"]["name"] == "fashion-mnist" and md["dataset"]["split"] == "the dataset's own"
    assert md["dataset"]["sizes"] == {"total": 70000, "train": 1000, "test": 500}  # the smoke profile's subsets
    assert md["training"]["cpu_seconds"] > 0 and md["parity_max_abs_diff"]["model.onnx"] <= 1e-4
    assert len(md["metrics"]["confusion_matrix"]) == 10 and sum(map(sum, md["metrics"]["confusion_matrix"])) == 500

    int8 = pipeline.run("fashion-int8", SMOKE, spec_override=any_quality("fashion-int8"))
    int8_md = bentoml.models.get(int8.tag).info.metadata
    assert int8_md["training"]["quantized_from"] == fashion.tag
    assert int8_md["spec"]["labels"] == md["spec"]["labels"] and int8_md["dataset"] == md["dataset"]
    assert verify.check("fashion") == [] and verify.check("fashion-int8") == []
