"""The stored metrics, measured with plain ONNX Runtime on the arrays stored as eval.npz.

No torch here: anyone can re-check a stored model with `python -m export verify`.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from export.judge import judge_samples
from modelspec import GENERATIVE_TASKS, GraphSpec, ModelSpec

BATCH = 256


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


def evaluate(spec: ModelSpec, folder: str, arrays: dict[str, np.ndarray], judge_path: str | None = None) -> dict:
    if spec.task.endswith("classification"):
        return classification_metrics(spec, folder, arrays)
    if spec.task in GENERATIVE_TASKS:
        if judge_path is None:
            raise ValueError(f"{spec.name}: judging generated samples needs the cnn model")
        return generation_metrics(spec, folder, arrays, judge_path)
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


def generation_metrics(spec: ModelSpec, folder: str, arrays: dict[str, np.ndarray], judge_path: str) -> dict:
    generator = next(g for g in spec.graphs if g.inputs[0].kind == "normal")
    (samples,) = run_batched(open_session(os.path.join(folder, generator.filename)), graph_feeds(generator, arrays))
    metrics = {"samples": int(len(samples)), **judge_samples(judge_path, samples)}
    encoders = [g for g in spec.graphs if g.inputs[0].kind == "image01"]
    if encoders and "x" in arrays:
        mu, _ = run_batched(open_session(os.path.join(folder, encoders[0].filename)), graph_feeds(encoders[0], arrays))
        (reconstructed,) = run_batched(open_session(os.path.join(folder, generator.filename)), {"z": mu})
        metrics["reconstruction_mse"] = float(np.mean((reconstructed - arrays["x"]) ** 2))
    return metrics


def floor_failure(spec: ModelSpec, metrics: dict, reference_metrics: dict | None = None) -> str | None:
    """Why the model falls under its floor, or None when it meets it."""
    floor = spec.floor
    if floor.minimum is None and floor.relative_to is None:  # an imported model: measured, not judged
        return None
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
