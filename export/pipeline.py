"""Train -> export -> check -> verify parity -> measure -> floor -> store, for one model."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np

from export import store
from export.evaluate import JUDGES, evaluate, floor_failure
from export.onnx_export import export_graph, verify_parity
from export.recipe import Trained, TrainOptions
from modelspec import GENERATIVE_TASKS, SPECS, ModelSpec


class FloorError(RuntimeError):
    """The model is under its quality floor: it is not stored."""


@dataclasses.dataclass
class Result:
    name: str
    tag: str
    metrics: dict
    seconds: float
    model_path: str


def recipes() -> dict[str, Callable[[TrainOptions], Trained]]:
    from export.train_classifiers import train_cnn, train_resnet
    from export.train_generative import train_gan, train_vae
    from export.train_sentiment import train as train_sentiment

    return {"cnn": train_cnn, "resnet": train_resnet, "sentiment": train_sentiment, "vae": train_vae, "gan": train_gan}


def judges(spec: ModelSpec) -> dict[str, str] | None:
    """Generated digits are judged by the latest stored cnn and resnet."""
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


def run(name: str, options: TrainOptions, spec_override: ModelSpec | None = None) -> Result:
    """Train and store one model. `spec_override` replaces the spec (tests use it to set a floor)."""
    if name == "resnet-int8":
        from export.quantize import quantize_resnet

        return quantize_resnet(options, spec_override)
    started = time.perf_counter()
    cnn = store.latest("cnn") if (spec_override or SPECS[name]).task in GENERATIVE_TASKS else None
    options = dataclasses.replace(options, judge_path=cnn.path_of("model.onnx") if cnn else None)  # progress only
    trained = recipes()[name](options)
    if spec_override is not None:
        trained.spec = dataclasses.replace(spec_override, preprocessing=trained.spec.preprocessing, labels=trained.spec.labels)
    with tempfile.TemporaryDirectory(prefix=f"export-{name}-") as folder:
        parity = {}
        for graph in trained.spec.graphs:
            path = os.path.join(folder, graph.filename)
            export_graph(trained.modules[graph.filename], trained.spec, graph, path)
            parity[graph.filename] = verify_parity(trained.modules[graph.filename], trained.spec, graph, path)
        for filename, content in trained.files.items():
            with open(os.path.join(folder, filename), "wb") as f:
                f.write(content)
        metadata = {
            "dataset": trained.dataset,
            "training": trained.training,
            "parity_max_abs_diff": parity,
        }
        return finish(trained.spec, folder, trained.eval_arrays, metadata, started, trained.history, trained.samples)


def finish(
    spec: ModelSpec,
    folder: str,
    eval_arrays: dict[str, np.ndarray],
    metadata: dict,
    started: float,
    history: dict | None = None,
    samples: np.ndarray | None = None,
) -> Result:
    """Measure with ONNX Runtime, apply the floor, store, and draw the report figures."""
    np.savez_compressed(os.path.join(folder, "eval.npz"), **eval_arrays)
    metrics = evaluate(spec, folder, eval_arrays, judges(spec))
    failure = floor_failure(spec, metrics, reference_metrics(spec))
    if failure:
        raise FloorError(f"{failure}; not stored, the latest good version stays in place")
    model = store.save(spec, folder, {**metadata, "metrics": metrics})
    from export import report

    report.training_figures(spec.name, history or {}, samples)
    return Result(spec.name, str(model.tag), metrics, round(time.perf_counter() - started, 1), model.path)


def load_eval_arrays(model_path: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(model_path, "eval.npz")) as data:
        return {k: data[k] for k in data.files}

