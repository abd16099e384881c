"""PyTorch module -> one self-contained ONNX file, checked, and verified against PyTorch."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from modelspec import OPSET, GraphSpec, ModelSpec

PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7, 64)
PARITY_SEQUENCE_LENGTHS = (1, 9, 64, 256)

logging.getLogger("torch.onnx").setLevel(logging.ERROR)


class ExportError(RuntimeError):
    """The ONNX graph could not be made, fails the checker, or disagrees with PyTorch."""


def random_inputs(spec: ModelSpec, graph: GraphSpec, batch: int, seq_len: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh valid inputs for every input of the graph, by what each input means."""
    lengths = rng.integers(1, seq_len + 1, size=batch)
    lengths[0] = seq_len  # the longest row decides the padded width
    arrays = {}
    for t in graph.inputs:
        shape = [batch if i == 0 else (seq_len if d == -1 else d) for i, d in enumerate(t.shape)]
        if t.kind == "image01":
            arrays[t.name] = rng.random(shape, dtype=np.float32)
        elif t.kind == "normal":
            arrays[t.name] = rng.standard_normal(shape, dtype=np.float32)
        elif t.kind == "class_index":
            arrays[t.name] = rng.integers(0, len(spec.labels), size=shape).astype(np.int64)
        elif t.kind == "tokens":
            tokens = rng.integers(2, spec.preprocessing["vocab_size"], size=shape)
            tokens[np.arange(seq_len)[None, :] >= lengths[:, None]] = spec.preprocessing["pad_id"]
            arrays[t.name] = tokens.astype(np.int64)
        elif t.kind == "lengths":
            arrays[t.name] = lengths.astype(np.int64)
        else:
            raise ValueError(f"no random input for kind {t.kind!r}")
    return arrays


def dynamic_shapes(graph: GraphSpec) -> dict[str, dict[int, torch.export.Dim]]:
    """-1 axes become export dims: axis 0 is the batch, any other the sequence."""
    batch, sequence = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=4096)
    return {t.name: {i: batch if i == 0 else sequence for i, d in enumerate(t.shape) if d == -1} for t in graph.inputs}


def export_graph(module: nn.Module, spec: ModelSpec, graph: GraphSpec, path: str) -> None:
    module.eval()
    example = random_inputs(spec, graph, batch=3, seq_len=11, rng=np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[t.name]) for t in graph.inputs)
    try:
        torch.onnx.export(
            module,
            args,
            path,
            dynamo=True,
            opset_version=OPSET,
            input_names=[t.name for t in graph.inputs],
            output_names=[t.name for t in graph.outputs],
            dynamic_shapes=dynamic_shapes(graph),
            external_data=False,
            verbose=False,
        )
    except Exception as e:  # the exporter raises many types; all mean the same thing here
        raise ExportError(f"{spec.name}/{graph.filename}: torch.onnx.export failed: {e}") from e
    check_graph(path, spec, graph)


def check_graph(path: str, spec: ModelSpec, graph: GraphSpec) -> None:
    """onnx.checker, one self-contained file, and the signature the spec promises."""
    where = f"{spec.name}/{graph.filename}"
    try:
        onnx.checker.check_model(path, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{where}: onnx.checker: {e}") from e
    model = onnx.load(path, load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ExportError(f"{where}: weights were written as external data")
    extra = sorted(set(os.listdir(os.path.dirname(path) or ".")) - {os.path.basename(path)})
    if any(name.startswith(os.path.basename(path)) for name in extra):
        raise ExportError(f"{where}: exporter wrote extra files {extra}")
    for expected, actual in ((graph.inputs, model.graph.input), (graph.outputs, model.graph.output)):
        got = [(v.name, _shape(v)) for v in actual]
        want = [(t.name, list(t.shape)) for t in expected]
        if got != want:
            raise ExportError(f"{where}: signature {got} does not match the spec {want}")
    if model.opset_import[0].version != OPSET:
        raise ExportError(f"{where}: opset {model.opset_import[0].version}, expected {OPSET}")


def _shape(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def verify_parity(module: nn.Module, spec: ModelSpec, graph: GraphSpec, path: str, seed: int = 1234) -> float:
    """Max |ORT - PyTorch| over fresh random inputs at several batch sizes (and sequence
    lengths); raises ExportError above PARITY_TOLERANCE."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    has_sequence = any(-1 in t.shape[1:] for t in graph.inputs)
    worst = 0.0
    for batch in PARITY_BATCHES:
        for seq_len in PARITY_SEQUENCE_LENGTHS if has_sequence else (1,):
            inputs = random_inputs(spec, graph, batch, seq_len, rng)
            with torch.no_grad():
                expected = module(*(torch.from_numpy(inputs[t.name]) for t in graph.inputs))
            expected = expected if isinstance(expected, tuple) else (expected,)
            actual = session.run([t.name for t in graph.outputs], inputs)
            for name, e, a in zip((t.name for t in graph.outputs), expected, actual):
                if a.shape != tuple(e.shape):
                    raise ExportError(f"{spec.name}/{graph.filename}: {name} shape {a.shape} != PyTorch {tuple(e.shape)}")
                worst = max(worst, float(np.max(np.abs(a - e.numpy()))))
            if worst > PARITY_TOLERANCE:
                raise ExportError(
                    f"{spec.name}/{graph.filename}: ONNX Runtime differs from PyTorch by {worst:.2e} "
                    f"(> {PARITY_TOLERANCE:.0e}) at batch {batch}, length {seq_len}"
                )
    return worst

