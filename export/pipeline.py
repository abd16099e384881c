"""Train -> export -> check -> verify parity -> measure -> floor -> store, for one model."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

from export import store
from export.onnx_export import export_graph, verify_parity
from export.publish import FloorError, Result, finish  # noqa: F401 (callers catch pipeline.FloorError)
from export.recipe import Trained, TrainOptions
from modelspec import GENERATIVE_TASKS, SPECS, ModelSpec


def recipes() -> dict[str, Callable[[TrainOptions], Trained]]:
    from export.train_classifiers import train_cnn, train_resnet
    from export.train_generative import train_gan, train_vae
    from export.train_sentiment import train as train_sentiment

    from export.train_fashion import train_fashion

    return {
        "cnn": train_cnn,
        "resnet": train_resnet,
        "fashion": train_fashion,
        "sentiment": train_sentiment,
        "vae": train_vae,
        "gan": train_gan,
    }


def run(name: str, options: TrainOptions, spec_override: ModelSpec | None = None) -> Result:
    """Train and store one model. `spec_override` replaces the spec (tests use it to set a floor).
    A model whose floor is relative to another (resnet-int8, fashion-int8) is not trained: it is
    that stored model, quantized."""
    if (spec_override or SPECS[name]).floor.relative_to is not None:
        from export.quantize import quantize

        return quantize(spec_override or SPECS[name], options)
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
