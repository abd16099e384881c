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
from load_tests import torch_rebuild
from export.onnx_export import ExportError, check_graph, export_graph, random_inputs, verify_parity
from export.recipe import TrainOptions
from conftest import any_quality
from export.evaluate import floor_failure
from export.judge import Judge, asked_digit_accuracy, class_spread, frechet_distance, judge_samples
from modelspec import GAN_LATENT, OPSET, SPECS, ModelSpec, sha256_file
from models.cnn import DigitCNN
from modelspec.text import build_vocab, encode_batch
from models.gan import Generator
from models.sentiment import SentimentLSTM
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
    # metadata stored before specs had several floors has no "also": it loads with its one floor
    old = {k: v for k, v in SPECS["gan"].to_dict().items() if k != "also"}
    assert ModelSpec.from_dict(old).floors == (SPECS["gan"].floor,)


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


# --- generators: conditional graphs, the judges' metrics, the floors ---------------------


def test_conditional_generator_exports_and_draws_the_asked_label(tmp_path):
    spec = SPECS["gan"]
    graph = spec.graph("model.onnx")
    assert [t.to_dict() for t in graph.inputs] == [
        {"name": "z", "dtype": "float32", "shape": [-1, GAN_LATENT], "kind": "normal"},
        {"name": "label", "dtype": "int64", "shape": [-1], "kind": "class_index"},
    ]
    arrays = random_inputs(spec, graph, batch=64, seq_len=1, rng=np.random.default_rng(0))
    assert arrays["label"].dtype == np.int64 and set(arrays["label"]) <= set(range(10)) and len(set(arrays["label"])) > 1
    torch.manual_seed(0)
    generator = Generator(GAN_LATENT).eval()
    path = str(tmp_path / graph.filename)
    export_graph(generator, spec, graph, path)
    assert verify_parity(generator, spec, graph, path) <= 1e-4
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    z = np.random.default_rng(1).standard_normal((2, GAN_LATENT), dtype=np.float32)
    (three,) = session.run(None, {"z": z, "label": np.array([3, 3], np.int64)})
    (seven,) = session.run(None, {"z": z, "label": np.array([3, 7], np.int64)})
    assert three.shape == (2, 1, 28, 28) and 0.0 <= three.min() and three.max() <= 1.0
    assert np.array_equal(three[0], seven[0]) and not np.allclose(three[1], seven[1])  # the label is used, per row


def test_class_spread_is_the_worst_share_against_a_fair_one():
    assert class_spread(np.full(10, 100)) == 1.0
    assert class_spread(np.array([50] + [105] * 9)) == pytest.approx(50 / 995 * 10)
    assert class_spread(np.array([200, 100, 100, 100, 100, 100, 100, 100, 100, 0])) == pytest.approx(0.0)
    over = np.array([250] + [750 // 9] * 9)
    assert class_spread(over) == pytest.approx(1 / (250 / over.sum() * 10))


def test_frechet_distance_is_zero_for_one_set_and_the_mean_gap_for_a_shifted_copy():
    features = np.random.default_rng(0).standard_normal((500, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(8.0)
    assert frechet_distance(features, features + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_judge_reads_the_cnns_last_hidden_layer_and_names_asked_digits(tmp_path, stored_cnn):
    judge = Judge(store.latest("cnn").path_of("model.onnx"))
    with np.load(store.latest("cnn").path_of("eval.npz")) as data:
        x, y = data["x"], data["y"]
    probabilities, features = judge.run(x)
    assert probabilities.shape == (len(x), 10) and features.shape == (len(x), 128)  # DigitCNN's hidden width
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (features >= 0).all()  # after the ReLU
    accuracy = asked_digit_accuracy(judge, x, y, [str(d) for d in range(10)])
    predicted = probabilities.argmax(1)
    assert accuracy["3"] == pytest.approx(np.mean(predicted[y == 3] == 3))
    verdict = judge_samples(judge, x)
    assert sum(verdict["class_counts"]) == len(x) and verdict["class_spread"] == class_spread(np.array(verdict["class_counts"]))


@pytest.mark.parametrize("name", ["gan", "vae"])
def test_generator_floors_gate_on_confidence_and_spread(name):
    spec = SPECS[name]
    good = {"mean_confidence": 0.9, "class_spread": 0.7}
    assert floor_failure(spec, good) is None
    assert "mean_confidence" in floor_failure(spec, {**good, "mean_confidence": 0.79})
    assert "class_spread" in floor_failure(spec, {**good, "class_spread": 0.49})


def test_stored_gan_reports_both_judges_the_asked_digits_and_the_frechet_distances(stored_cnn):
    pipeline.run("resnet", SMOKE, spec_override=any_quality("resnet"))
    gan = pipeline.run("gan", SMOKE, spec_override=any_quality("gan"))
    metrics = bentoml.models.get(gan.tag).info.metadata["metrics"]
    assert metrics["samples"] == 1000 and sum(metrics["class_counts"]) == 1000 and sum(metrics["resnet"]["class_counts"]) == 1000
    assert metrics["per_class_samples"] == 1000
    for judge in ("cnn", "resnet"):
        per_digit = metrics[f"asked_digit_accuracy_{judge}"]
        assert sorted(per_digit) == [str(d) for d in range(10)] and all(0.0 <= v <= 1.0 for v in per_digit.values())
        assert metrics[f"asked_digit_accuracy_min_{judge}"] == min(per_digit.values())
    distances = metrics["frechet_distance"]
    assert distances["samples_vs_held_out"] > 0 and distances["held_out_halves"] > 0
    with np.load(bentoml.models.get(gan.tag).path_of("eval.npz")) as data:
        assert np.array_equal(np.bincount(data["label_per_class"]), np.full(10, 100))
        assert set(np.unique(data["label"])) == set(range(10)) and data["z"].shape == (1000, GAN_LATENT)
        feeds = {"z": data["z"][:32], "label": data["label"][:32]}
    assert verify.check("gan") == []
    # the benchmark's PyTorch twin: the conditional Generator, rebuilt from the stored graph
    stored = bentoml.models.get(gan.tag)
    module = torch_rebuild.rebuild("gan", "model.onnx", stored.path, stored.info.metadata)
    session = ort.InferenceSession(stored.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    assert torch_rebuild.parity(module, session, feeds) <= 1e-4



def test_stored_vae_composes_both_stages_and_rebuilds_in_pytorch(stored_cnn):
    pipeline.run("resnet", SMOKE, spec_override=any_quality("resnet"))
    vae = pipeline.run("vae", SMOKE, spec_override=any_quality("vae"))
    stored = bentoml.models.get(vae.tag)
    training = stored.info.metadata["training"]
    assert training["latent_steps"] > 0 and len(training["latent_decoder_variance"]) == stored.info.metadata["spec"]["preprocessing"]["latent_size"]
    feeds = {"encoder.onnx": {"image": np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)},
             "decoder.onnx": {"z": np.random.default_rng(1).standard_normal((4, 16), dtype=np.float32)}}
    for filename, inputs in feeds.items():
        module = torch_rebuild.rebuild("vae", filename, stored.path, stored.info.metadata)
        session = ort.InferenceSession(stored.path_of(filename), providers=["CPUExecutionProvider"])
        assert torch_rebuild.parity(module, session, inputs) <= 1e-4
    # the encoder's stage-one logvar head feeds nothing that is exported, so its graph drops it
    assert not any(i.name.startswith("image.logvar") for i in onnx.load(stored.path_of("encoder.onnx")).graph.initializer)

# --- sentiment: right-padding ------------------------------------------------------------


def small_sentiment() -> tuple[SentimentLSTM, dict]:
    """A small untrained LSTM with the vocabulary of a few reviews."""
    texts = ["很好很好", "不好", "质量很差，不会再买了", "物流快，包装好，推荐", "差", "还不错吧", "一般般，不推荐", "好"]
    vocab = build_vocab(texts, SPECS["sentiment"].preprocessing, min_count=1)
    torch.manual_seed(0)
    return SentimentLSTM(len(vocab) + 2, embedding_size=8, ngram_buckets=256, hidden_size=8).eval(), vocab


def test_right_padding_does_not_change_a_texts_answer_across_mixed_batches(tmp_path):
    model, vocab = small_sentiment()
    preprocessing = SPECS["sentiment"].preprocessing
    spec = dataclasses.replace(SPECS["sentiment"], preprocessing={**preprocessing, "vocab_size": len(vocab) + 2})
    graph = spec.graphs[0]
    path = str(tmp_path / graph.filename)
    export_graph(model, spec, graph, path)
    assert verify_parity(model, spec, graph, path) <= 1e-4
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    short, long = "好", "物流很快，质量很好，包装也不错，下次还来买" * 5
    texts = [short, long, "很差", "还不错吧" * 3, short + long]
    alone = {t: session.run(None, dict(zip(("tokens", "lengths"), encode_batch([t], vocab, preprocessing))))[0][0] for t in texts}
    for batch in ([short, long], [long, short, "很差"], texts, [short] * 3 + [long], list(reversed(texts))):
        tokens, lengths = encode_batch(batch, vocab, preprocessing)
        for extra in (0, 7):  # padded to the longest row, and beyond it
            padded = np.pad(tokens, ((0, 0), (0, extra)))
            (logits,) = session.run(None, {"tokens": padded, "lengths": lengths})
            with torch.no_grad():
                torch_logits = model(torch.from_numpy(padded), torch.from_numpy(lengths)).numpy()
            for text, row, torch_row in zip(batch, logits, torch_logits):
                assert np.abs(row - alone[text]).max() < 1e-5, (text[:10], len(batch), extra)
                assert np.abs(torch_row - alone[text]).max() < 1e-4
