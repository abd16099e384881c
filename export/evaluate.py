"""The stored metrics, measured with plain ONNX Runtime on the arrays stored as eval.npz.

No torch here: anyone can re-check a stored model with `python -m export verify`.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from export.judge import Judge, asked_digit_accuracy, frechet_distance, judge_samples
from modelspec import GENERATIVE_TASKS, GraphSpec, ModelSpec

BATCH = 256
JUDGES = ("cnn", "resnet")  # the stored classifiers that judge generated digits


def open_session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run_batched(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    n = len(next(iter(feeds.values())))
    parts = [session.run(None, {k: v[i : i + BATCH] for k, v in feeds.items()}) for i in range(0, n, BATCH)]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


def graph_feeds(graph: GraphSpec, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """eval.npz names the first input `x` (and the lengths `lengths`); latent inputs `z`."""
    feeds = {}
    for position, t in enumerate(graph.inputs):
        key = t.name if t.name in arrays else ("x" if position == 0 else t.name)
        feeds[t.name] = arrays[key]
    return feeds


def evaluate(spec: ModelSpec, folder: str, arrays: dict[str, np.ndarray], judges: dict[str, str] | None = None) -> dict:
    """judges: {"cnn": path, "resnet": path} of the classifiers that judge generated digits."""
    if spec.task.endswith("classification"):
        return classification_metrics(spec, folder, arrays)
    if spec.task in GENERATIVE_TASKS:
        if not judges or set(judges) != set(JUDGES):
            raise ValueError(f"{spec.name}: judging generated samples needs the stored {' and '.join(JUDGES)}")
        return generation_metrics(spec, folder, arrays, judges)
    raise ValueError(f"{spec.name}: no evaluation for task {spec.task!r}")


def classification_metrics(spec: ModelSpec, folder: str, arrays: dict[str, np.ndarray]) -> dict:
    graph = spec.graphs[0]
    (logits,) = run_batched(open_session(os.path.join(folder, graph.filename)), graph_feeds(graph, arrays))
    predicted, y = logits.argmax(1), arrays["y"]
    per_class = {label: float(np.mean(predicted[y == i] == i)) for i, label in enumerate(spec.labels) if np.any(y == i)}
    confusion = np.zeros((len(spec.labels), len(spec.labels)), dtype=np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (y, predicted), 1)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "n": int(len(y)),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def generation_metrics(spec: ModelSpec, folder: str, arrays: dict[str, np.ndarray], judges: dict[str, str]) -> dict:
    """Unconditional samples (eval.npz's `z`, and `label` drawn uniformly when the generator takes
    one) judged by cnn (the floors' figures, at the top level) and by resnet; when the generator
    takes a label, the share of `*_per_class` samples judged as the asked digit; the Frechet
    distance to the held-out digits `x` in the cnn's last hidden layer."""
    generator = next(g for g in spec.graphs if any(t.kind == "normal" for t in g.inputs))
    session = open_session(os.path.join(folder, generator.filename))
    (samples,) = run_batched(session, graph_feeds(generator, arrays))
    cnn, resnet = Judge(judges["cnn"]), Judge(judges["resnet"])
    metrics = {"samples": int(len(samples)), **judge_samples(cnn, samples), "resnet": judge_samples(resnet, samples)}

    label_input = next((t.name for t in generator.inputs if t.kind == "class_index"), None)
    if label_input is not None:
        feeds = {t.name: arrays[f"{t.name}_per_class"] for t in generator.inputs}
        (asked_samples,) = run_batched(session, feeds)
        asked = feeds[label_input]
        metrics["per_class_samples"] = int(len(asked))
        for name, judge in (("cnn", cnn), ("resnet", resnet)):
            accuracy = asked_digit_accuracy(judge, asked_samples, asked, list(spec.labels))
            metrics[f"asked_digit_accuracy_{name}"] = accuracy
            metrics[f"asked_digit_accuracy_min_{name}"] = min(accuracy.values())

    if "x" not in arrays:  # stored before issue 13: its eval.npz holds the latent only
        return metrics
    held_out = cnn.run(arrays["x"])[1]
    metrics["frechet_distance"] = {
        "samples_vs_held_out": frechet_distance(cnn.run(samples)[1], held_out),
        "held_out_halves": frechet_distance(held_out[0::2], held_out[1::2]),
    }
    encoders = [g for g in spec.graphs if g.inputs[0].kind == "image01"]
    if encoders:
        mu, _ = run_batched(open_session(os.path.join(folder, encoders[0].filename)), graph_feeds(encoders[0], arrays))
        (reconstructed,) = run_batched(open_session(os.path.join(folder, generator.filename)), {"z": mu})
        metrics["reconstruction_mse"] = float(np.mean((reconstructed - arrays["x"]) ** 2))
    return metrics


def floor_failure(spec: ModelSpec, metrics: dict, reference_metrics: dict | None = None) -> str | None:
    """Why the model falls under one of its floors, or None when it meets them all."""
    for floor in spec.floors:
        if floor.minimum is None and floor.relative_to is None:  # an imported model: measured, not judged
            continue
        value = metrics[floor.metric]
        if floor.minimum is not None and value < floor.minimum:
            return f"{spec.name}: {floor.metric} {value:.4f} is under its floor {floor.minimum}"
        if floor.relative_to is not None:
            if reference_metrics is None:
                return f"{spec.name}: needs a stored {floor.relative_to} to compare with"
            reference = reference_metrics[floor.metric]
            if value < reference - floor.max_drop:
                return (
                    f"{spec.name}: {floor.metric} {value:.4f} is more than {floor.max_drop} below "
                    f"{floor.relative_to}'s {reference:.4f}"
                )
    return None
