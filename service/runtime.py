"""Stored models -> ONNX Runtime sessions. No torch: ONNX and JSON only, nothing unpickled."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from modelspec import ModelSpec, sha256_file


class ModelLoadError(RuntimeError):
    """A stored model is missing, damaged or unloadable: the service must not start with it."""


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


@dataclass
class LoadedModel:
    """One stored model, checked against its metadata and ready to run."""

    name: str
    version: str
    spec: ModelSpec
    metadata: dict
    sessions: dict[str, ort.InferenceSession]
    vocab: dict[str, int] = field(default_factory=dict)
    load_seconds: float = 0.0

    @classmethod
    def load(cls, name: str, version: str, path: str, metadata: dict, threads: int) -> LoadedModel:
        started = time.perf_counter()
        fix = f"retrain it with `python -m export {name}` (or `make models`)"
        try:
            spec = ModelSpec.from_dict(metadata["spec"])
            expected = metadata["onnx_files"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"model {name}:{version}: metadata is incomplete ({e}); {fix}") from None
        checksums = {**metadata.get("files", {}), **{f: info.get("sha256") for f, info in expected.items()}}

        def checked(filename: str) -> str:
            """The file's path, once its sha256 matches the one stored in the metadata."""
            file_path = os.path.join(path, filename)
            if not os.path.isfile(file_path):
                raise ModelLoadError(f"model {name}:{version}: {filename} is missing; {fix}")
            if filename not in checksums:
                raise ModelLoadError(f"model {name}:{version}: no sha256 for {filename} in its metadata; {fix}")
            actual = sha256_file(file_path)
            if actual != checksums[filename]:
                raise ModelLoadError(
                    f"model {name}:{version}: {filename} does not match the sha256 in its metadata "
                    f"(file {actual[:12]}…); the file is damaged or was replaced; {fix}"
                )
            return file_path

        sessions = {}
        for graph in spec.graphs:
            file_path = checked(graph.filename)
            try:
                sessions[graph.filename] = ort.InferenceSession(
                    file_path, session_options(threads), providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # onnxruntime raises its own exception types
                raise ModelLoadError(f"model {name}:{version}: ONNX Runtime cannot load {graph.filename}: {e}; {fix}") from None
        vocab = {}
        if spec.input_kind == "text":
            try:
                with open(checked("vocab.json"), encoding="utf-8") as f:
                    vocab = json.load(f)
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"model {name}:{version}: vocab.json unreadable ({e}); {fix}") from None
        model = cls(name, version, spec, metadata, sessions, vocab)
        model.warm_up()
        model.load_seconds = time.perf_counter() - started
        return model

    def run(self, filename: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[filename].run(None, feeds)

    def warm_up(self) -> None:
        """One run per graph at a few batch sizes, so the first request pays no set-up cost."""
        fill = {"lengths": 4, "class_index": 0}
        for graph in self.spec.graphs:
            for batch in (1, 8):
                feeds = {}
                for t in graph.inputs:
                    shape = [batch if i == 0 else (4 if d == -1 else d) for i, d in enumerate(t.shape)]
                    feeds[t.name] = np.full(shape, fill.get(t.kind, 1), dtype=t.dtype)
                self.run(graph.filename, feeds)

    def describe(self) -> dict:
        md = self.metadata
        return {
            "name": self.name,
            "version": self.version,
            "task": self.spec.task,
            "description": self.spec.description,
            "labels": list(self.spec.labels),
            "graphs": [g.to_dict() for g in self.spec.graphs],
            "preprocessing": self.spec.preprocessing,
            "metrics": md.get("metrics", {}),
            "dataset": md.get("dataset", {}),
            "opset": md.get("opset"),
            "onnx_files": md.get("onnx_files", {}),
            "software": md.get("versions", {}),
        }


def stored_models() -> dict[str, str]:
    """{name: latest version} of every model in the store that carries a spec (what export
    stores): the models a server serves unless its serving state says otherwise."""
    import bentoml

    latest = {}
    for model in bentoml.models.list():
        if isinstance(model.info.metadata.get("spec"), dict):
            name = model.tag.name
            if name not in latest or model.creation_time > latest[name].creation_time:
                latest[name] = model
    return {name: model.tag.version for name, model in sorted(latest.items())}


def load_stored(name: str, version: str, threads: int) -> LoadedModel:
    """`name:version` from the store, checked and warmed up; ModelLoadError names what is wrong."""
    import bentoml

    try:
        stored = bentoml.models.get(f"{name}:{version}")
    except bentoml.exceptions.NotFound:
        store = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise ModelLoadError(
            f"model {name}:{version} is not in the model store {store}; run `make models` (or `python -m export {name}`)"
        ) from None
    return LoadedModel.load(name, stored.tag.version, stored.path, stored.info.metadata, threads)
