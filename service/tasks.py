"""The serving contract of each task: one class per task, chosen by `spec.task`, never by name.

A `ServedModel` is one loaded version of one model. It owns a batcher per graph (so
concurrent requests share ONNX Runtime runs), declares its tensor views (the V2 models and
`/infer/` routes it answers, with their input and output signatures), checks tensor inputs
by their kind, and adds what its task needs: preprocessing of uploads, softmax and labels,
latent sampling. Every method that runs the model returns {output name: array}, so a shadow
version can run the same call and be compared output by output (service/registry.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from modelspec import AUTOENCODER, IMAGE_CLASSIFICATION, IMAGE_GENERATION, TENSOR, TEXT_CLASSIFICATION, TensorSpec
from modelspec.text import encode_batch
from service import inputs, metrics
from service.batching import Batcher, Outputs, chain
from service.errors import ClientError
from service.runtime import LoadedModel

MAX_BATCH = int(os.environ.get("MODELSERVE_MAX_BATCH", 64))
BATCH_WAIT_MS = float(os.environ.get("MODELSERVE_BATCH_WAIT_MS", 0))


def default_inline_batch_ms() -> float:
    """1 ms when the workers fill the cores: every core then runs a worker's event loop, and a
    batch thread adds hand-offs but no parallelism. 0 with fewer workers than cores (the default
    single worker), where the thread runs a batch on a core the loop leaves free."""
    workers = int(os.environ.get("MODELSERVE_WORKERS", 1))
    return 1.0 if workers >= len(os.sched_getaffinity(0)) else 0.0


INLINE_BATCH_MS = float(os.environ.get("MODELSERVE_INLINE_BATCH_MS", default_inline_batch_ms()))
# Output kinds compared by their top label when a shadow version runs beside the default.
LABELLED_KINDS = ("logits", "probabilities")


@dataclass(frozen=True)
class TensorView:
    """One tensor-level entry point of a model: a V2 model and an `/infer/` route."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    graph: str | None  # the ONNX file it runs; None when the task computes it (texts)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class ServedModel:
    """The `tensor` task, and the base of every other: tensors in, tensors out."""

    task = TENSOR

    def __init__(self, loaded: LoadedModel):
        self.loaded, self.spec = loaded, loaded.spec
        self.name, self.version = loaded.name, loaded.version
        self.max_batch = min(MAX_BATCH, int(self.spec.preprocessing.get("max_batch", MAX_BATCH)))  # 1: a fixed batch axis
        self.request_seconds = metrics.REQUEST_SECONDS.labels(model=self.name, version=self.version)
        self._predictions = {label: metrics.PREDICTIONS.labels(model=self.name, version=self.version, label=label) for label in self.spec.labels}
        self.batchers = self.make_batchers()
        self.views = self.make_views()

    def make_batchers(self) -> dict[str, Batcher]:
        return {graph.filename: self._batcher(graph.filename, self._graph_runner(graph)) for graph in self.spec.graphs}

    def _batcher(self, key: str, run, **kwargs) -> Batcher:
        labels = {"model": self.name, "version": self.version}
        queued = metrics.QUEUE_SECONDS.labels(**labels)
        return Batcher(f"{self.name}:{self.version}:{key}", run, self.max_batch, BATCH_WAIT_MS, on_queued=queued.observe, inline_ms=INLINE_BATCH_MS, **kwargs)

    def _graph_runner(self, graph):
        names = [o.name for o in graph.outputs]
        compute = metrics.INFERENCE_SECONDS.labels(model=self.name, version=self.version)
        rows = metrics.BATCH_ROWS.labels(model=self.name, version=self.version)

        def run(feeds: dict[str, np.ndarray]) -> Outputs:
            started = time.perf_counter()
            outputs = self.loaded.run(graph.filename, feeds)
            compute.observe(time.perf_counter() - started)
            rows.observe(len(next(iter(feeds.values()))))
            return dict(zip(names, outputs))

        return run

    def make_views(self) -> dict[str, TensorView]:
        """One view per graph: named like the model, or `model-stem` when it has several."""
        graphs = self.spec.graphs

        def name(g):
            return self.name if len(graphs) == 1 else f"{self.name}-{g.filename.removesuffix('.onnx')}"
        return {name(g): TensorView(name(g), g.inputs, g.outputs, g.filename) for g in graphs}

    def predicted(self, label: str) -> None:
        self._predictions[label].inc()

    def output_kind(self, output: str) -> str:
        for view in self.views.values():
            for t in view.outputs:
                if t.name == output:
                    return t.kind
        return "tensor"

    def read_inputs(self, view: TensorView, values: dict, field_prefix: str = "") -> dict:
        """Request values by input name -> checked arrays (ClientError naming the input)."""
        unknown = sorted(set(values) - {t.name for t in view.inputs})
        if unknown:
            raise ClientError(field_prefix + unknown[0], f"is not an input of {view.name}; it takes {[t.name for t in view.inputs]}", "unknown_field")
        feeds = {}
        for t in view.inputs:
            if t.name not in values:
                raise ClientError(field_prefix + t.name, f"is missing; {view.name} takes {[t.name for t in view.inputs]}", "missing_input")
            feeds[t.name] = inputs.tensor(t, values[t.name], field_prefix + t.name, classes=len(self.spec.labels))
        counts = {len(a) for a in feeds.values()}
        if len(counts) > 1:
            raise ClientError(field_prefix + view.inputs[0].name, "inputs must have the same number of rows", "bad_shape")
        return feeds

    async def infer(self, view: str, feeds: dict) -> Outputs:
        return await self.batchers[self.views[view].graph](feeds)


SOFTMAX = object()  # the key of the logits' softmax among a batch's outputs: no output name can equal it


class ImageClassifier(ServedModel):
    """Images in [0, 1] (a JSON batch or an upload, made into the model's input by the
    preprocessing stored with it) -> class probabilities."""

    task = IMAGE_CLASSIFICATION

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        graph = self.spec.graphs[0]
        self.input = graph.inputs[0]
        pre = self.spec.preprocessing
        channels = int(pre.get("channels", graph.inputs[0].shape[1]))
        low, high = pre.get("value_range", [0.0, 1.0])
        mean = np.asarray(pre.get("mean", [0.0] * channels), dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(pre.get("std", [1.0] * channels), dtype=np.float32).reshape(1, -1, 1, 1)
        # pixels in [0, 1] -> model input: onto value_range, then (x - mean) / std, as one scale and shift
        self.scale, self.shift = (high - low) / std, (low - mean) / std
        self.identity = bool(np.all(self.scale == 1) and np.all(self.shift == 0))

    def make_batchers(self) -> dict[str, Batcher]:
        graph = self.spec.graphs[0]
        run, logits = self._graph_runner(graph), graph.outputs[0].name

        def run_and_softmax(feeds: dict[str, np.ndarray]) -> Outputs:
            """Softmax once a batch on the batch thread, not once a request on the event loop."""
            outputs = run(feeds)
            outputs[SOFTMAX] = softmax(outputs[logits])
            return outputs

        return {graph.filename: self._batcher(graph.filename, run_and_softmax)}

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        if self.identity:
            return pixels
        return np.ascontiguousarray(pixels * self.scale + self.shift, dtype=np.float32)

    def pixels_of_json(self, values) -> np.ndarray:
        return inputs.array_batch(values, self.spec.preprocessing)

    def pixels_of_upload(self, data: bytes, field: str = "image") -> np.ndarray:
        return inputs.image_input(data, self.spec.preprocessing, field)

    async def classify(self, pixels: np.ndarray) -> Outputs:
        batcher, rows = self.batchers[self.spec.graphs[0].filename], self.model_input(pixels)
        if self.max_batch == 1:  # a graph whose batch axis is fixed at 1 takes one image a run
            probabilities = np.concatenate([(await batcher({self.input.name: rows[i : i + 1]}))[SOFTMAX] for i in range(len(rows))])
        else:
            probabilities = (await batcher({self.input.name: rows}))[SOFTMAX]
        return {"probabilities": probabilities}

    async def infer(self, view: str, feeds: dict) -> Outputs:
        outputs = await super().infer(view, feeds)
        del outputs[SOFTMAX]
        return outputs

    def output_kind(self, output: str) -> str:
        return "probabilities" if output == "probabilities" else super().output_kind(output)


TEXT_INPUT = TensorSpec("text", "bytes", (-1,), "text")


class TextClassifier(ServedModel):
    """Texts -> class probabilities; tokenising stays in the server, so its view takes text."""

    task = TEXT_CLASSIFICATION

    def make_batchers(self) -> dict[str, Batcher]:
        graph = self.spec.graphs[0]
        run = self._graph_runner(graph)
        logits = graph.outputs[0].name
        named = {t.kind: t.name for t in graph.inputs}

        def classify(texts: list[str]) -> Outputs:
            tokens, lengths = encode_batch(texts, self.loaded.vocab, self.spec.preprocessing)
            return {"probabilities": softmax(run({named["tokens"]: tokens, named["lengths"]: lengths})[logits])}

        return {"text": self._batcher("text", classify, join=chain, rows_of=len)}

    def make_views(self) -> dict[str, TensorView]:
        probabilities = TensorSpec("probabilities", "float32", (-1, len(self.spec.labels)), "probabilities")
        return {self.name: TensorView(self.name, (TEXT_INPUT,), (probabilities,), None)}

    def read_inputs(self, view: TensorView, values: dict, field_prefix: str = "") -> dict:
        if set(values) != {"text"}:
            raise ClientError(field_prefix + "text", f"{view.name} takes one input, text", "missing_input")
        return {"text": inputs.texts(values["text"], field_prefix + "text")}

    async def infer(self, view: str, feeds: dict) -> Outputs:
        return await self.classify(feeds["text"])

    async def classify(self, texts: list[str]) -> Outputs:
        return await self.batchers["text"](texts)


class ImageGenerator(ServedModel):
    """A latent drawn from a seed (and, for a conditional graph, a class) -> images."""

    task = IMAGE_GENERATION

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        graph = self.spec.graphs[0]
        self.latent = next(t for t in graph.inputs if t.kind == "normal")
        self.label_input = next((t for t in graph.inputs if t.kind == "class_index"), None)
        self.image = graph.outputs[0].name

    @property
    def conditional(self) -> bool:
        return self.label_input is not None

    async def generate(self, z: np.ndarray, labels: np.ndarray | None) -> Outputs:
        feeds = {self.latent.name: z}
        if self.label_input is not None:
            feeds[self.label_input.name] = labels
        return {"images": (await self.batchers[self.spec.graphs[0].filename](feeds))[self.image]}


class Autoencoder(ServedModel):
    """encoder.onnx: image -> moments; decoder.onnx: latent -> image."""

    task = AUTOENCODER

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        self.encoder, self.decoder = self.spec.graph("encoder.onnx"), self.spec.graph("decoder.onnx")
        self.latent = self.decoder.inputs[0]
        self.mean = self.encoder.outputs[0].name

    async def encode(self, pixels: np.ndarray) -> np.ndarray:
        return (await self.batchers[self.encoder.filename]({self.encoder.inputs[0].name: pixels}))[self.mean]

    async def decode(self, z: np.ndarray) -> Outputs:
        return {"images": (await self.batchers[self.decoder.filename]({self.latent.name: z}))[self.decoder.outputs[0].name]}

    async def reconstruct(self, pixels: np.ndarray) -> Outputs:
        mu = await self.encode(pixels)
        return {"latent": mu, "reconstruction": (await self.decode(mu))["images"]}

    async def interpolate(self, za: np.ndarray, zb: np.ndarray, steps: int) -> Outputs:
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        return await self.decode((1 - t) * za + t * zb)

    async def interpolate_images(self, pair: np.ndarray, steps: int) -> Outputs:
        mu = await self.encode(pair)
        return await self.interpolate(mu[:1], mu[1:], steps)


CONTRACTS: dict[str, type[ServedModel]] = {
    c.task: c for c in (ServedModel, ImageClassifier, TextClassifier, ImageGenerator, Autoencoder)
}


def serve(loaded: LoadedModel) -> ServedModel:
    contract = CONTRACTS.get(loaded.spec.task)
    if contract is None:
        raise ClientError("task", f"model {loaded.name}: no serving contract for task {loaded.spec.task!r}; known: {sorted(CONTRACTS)}", "unknown_task")
    return contract(loaded)


def retire(served: ServedModel) -> None:
    """Stop its batchers once what is queued has run (requests routed to it still finish)."""
    for batcher in served.batchers.values():
        batcher.close()
