"""The last step of every stored model, trained or quantized: measure with ONNX Runtime, apply
the floor, store. No torch here (nor in anything it imports at module level), so that
`python -m export verify` and `python -m export import` run with the serving requirements."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from export import store
from export.evaluate import JUDGES, evaluate, floor_failure
from modelspec import GENERATIVE_TASKS, ModelSpec


class FloorError(RuntimeError):
    """The model is under its quality floor: it is not stored."""


@dataclasses.dataclass
class Result:
    name: str
    tag: str
    metrics: dict
    seconds: float
    model_path: str


def judges(spec: ModelSpec) -> dict[str, str] | None:
    """Generated digits are judged by the latest stored cnn and resnet (evaluate.JUDGES)."""
    if spec.task not in GENERATIVE_TASKS:
        return None
    paths = {}
    for name in JUDGES:
        judge = store.latest(name)
        if judge is None:
            raise FloorError(f"{spec.name}: its samples are judged by {name}, which is not stored yet: run `python -m export {name}` first")
        paths[name] = judge.path_of("model.onnx")
    return paths


def reference_metrics(spec: ModelSpec) -> dict | None:
    if spec.floor.relative_to is None:
        return None
    reference = store.latest(spec.floor.relative_to)
    return None if reference is None else reference.info.metadata["metrics"]


def finish(
    spec: ModelSpec,
    folder: str,
    eval_arrays: dict[str, np.ndarray],
    metadata: dict,
    started: float,
    history: dict | None = None,
    samples: np.ndarray | None = None,
) -> Result:
    """Measure with ONNX Runtime, apply every floor, store, and draw the report figures."""
    np.savez_compressed(os.path.join(folder, "eval.npz"), **eval_arrays)
    metrics = evaluate(spec, folder, eval_arrays, judges(spec))
    failure = floor_failure(spec, metrics, reference_metrics(spec))
    if failure:
        raise FloorError(f"{failure}; not stored, the latest good version stays in place")
    model = store.save(spec, folder, {**metadata, "metrics": metrics})
    from export import report  # matplotlib: training only

    report.training_figures(spec.name, history or {}, samples)
    return Result(spec.name, str(model.tag), metrics, round(time.perf_counter() - started, 1), model.path)


def load_eval_arrays(model_path: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(model_path, "eval.npz")) as data:
        return {k: data[k] for k in data.files}
