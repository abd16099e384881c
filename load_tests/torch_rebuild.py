"""The PyTorch modules of stored models, rebuilt from their ONNX files, for benchmarks only.

The store keeps ONNX graphs, not PyTorch state_dicts. The graphs keep the modules' parameter
names, with two rewrites by the exporter that this undoes:

- a batch norm right after a bias-free convolution is folded into it: the graph's
  `<conv>.weight` is the folded weight and `<conv>.weight_bias` the folded bias. The module's
  batch norm becomes an exact pass-through that adds that bias (mean 0, variance 1 - eps,
  scale 1), so eager PyTorch still runs the same layers it ran in training;
- an LSTM's input weights and both biases are stored in ONNX gate order (i, o, f, c) as LSTM
  node inputs; PyTorch wants (i, f, g, o);
- a layer the exported forward does not use is left out of the graph: the module keeps its own.

`parity` compares a rebuilt module with ONNX Runtime on the same inputs; the benchmark runs it
for every module it times and leaves out the PyTorch figures of one that differs, so a wrong
mapping shows up as a large difference, never as a silently different model.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.cnn import DigitCNN
from models.gan import Generator
from models.resnet import SmallResNet
from models.sentiment import SentimentLSTM
from models.vae import VAEDecoder, VAEEncoder

# ONNX LSTM gate blocks (i, o, f, c) -> PyTorch (i, f, g, o), as indices into the ONNX blocks.
ONNX_TO_TORCH_GATES = (0, 2, 3, 1)


class RebuildError(RuntimeError):
    """The graph's weights do not map onto the module."""


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def architecture(name: str, filename: str, metadata: dict) -> nn.Module:
    """The module of a store entry, with the sizes its recipe used (defaults, or the metadata's)."""
    training = metadata.get("training", {})
    preprocessing = metadata["spec"]["preprocessing"]
    if name == "cnn":
        return DigitCNN()
    if name == "resnet":
        return SmallResNet()
    if name == "sentiment":
        return SentimentLSTM(
            int(preprocessing["vocab_size"]),
            embedding_size=int(training.get("embedding_size", 32)),
            ngram_buckets=int(training.get("ngram_buckets", 262144)),
            hidden_size=int(training.get("hidden_size", 64)),
        )
    if name == "gan":
        graph = next(g for g in metadata["spec"]["graphs"] if g["filename"] == filename)
        if not any(t["kind"] == "class_index" for t in graph["inputs"]):
            raise RebuildError("this gan takes no label: it is the unconditional generator stored before issue 13, and models/gan.py is the conditional one")
        return Generator(int(preprocessing.get("latent_size", 100)), classes=len(metadata["spec"]["labels"]))
    if name == "vae":
        latent = int(preprocessing.get("latent_size", 16))
        return {"encoder.onnx": VAEEncoder(latent), "decoder.onnx": VAEDecoder(latent)}[filename]
    raise RebuildError(f"no PyTorch module for {name!r}")


def _tensor(value: np.ndarray, shape: torch.Size, where: str) -> torch.Tensor:
    if tuple(value.shape) == tuple(shape):
        return torch.from_numpy(value.copy())
    if value.ndim == 2 and tuple(value.T.shape) == tuple(shape):  # Gemm with transB=0
        return torch.from_numpy(value.T.copy())
    raise RebuildError(f"{where}: graph shape {value.shape} does not fit the module's {tuple(shape)}")


def _lstm_inputs(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module name of each LSTM: (W [4H, in] and B [8H] in ONNX gate order)}, matched through
    the recurrent weight's initializer, which the graph keeps under the module's name."""
    producers = {out: node for node in model.graph.node for out in node.output}

    def source_initializer(value: str, depth: int = 0) -> str | None:
        if value in weights:
            return value
        node = producers.get(value)
        if node is None or depth > 20:
            return None
        for name in node.input:
            found = source_initializer(name, depth + 1)
            if found is not None and found.endswith("weight_hh_l0"):
                return found
        return None

    found = {}
    for node in model.graph.node:
        if node.op_type != "LSTM":
            continue
        recurrent = source_initializer(node.input[2])
        if recurrent is None or node.input[1] not in weights or node.input[3] not in weights:
            raise RebuildError(f"LSTM node {node.name}: cannot trace its weights to initializers")
        module = recurrent.removesuffix(".weight_hh_l0")
        found[module] = (weights[node.input[1]][0], weights[node.input[3]][0])
    return found


def _reorder_gates(value: np.ndarray, hidden: int) -> np.ndarray:
    blocks = [value[i * hidden : (i + 1) * hidden] for i in range(4)]
    return np.concatenate([blocks[i] for i in ONNX_TO_TORCH_GATES])


def load_from_onnx(module: nn.Module, path: str) -> nn.Module:
    """Fill every parameter and buffer of `module` from the ONNX file at `path`."""
    model = onnx.load(path)
    weights = initializers(model)
    state = module.state_dict()
    filled: set[str] = set()
    pending_bias: list[tuple[str, np.ndarray]] = []  # folded conv biases waiting for their batch norm
    unused: set[str] = set()

    def put(key: str, value: np.ndarray) -> None:
        state[key] = _tensor(value, state[key].shape, key)
        filled.add(key)

    lstms = _lstm_inputs(model, weights) if any(isinstance(m, nn.LSTM) for m in module.modules()) else {}
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            if prefix + "weight" not in weights and not any(n.startswith(prefix) for n in weights):
                # A layer the exported forward never reaches (the vae encoder's stage-one logvar
                # head): the exporter drops it, and it cannot change what parity compares.
                unused.update(k for k in state if k.startswith(prefix))
                continue
            put(prefix + "weight", weights[prefix + "weight"])
            if getattr(sub, "bias", None) is not None:
                put(prefix + "bias", weights[prefix + "bias"])
            elif prefix + "weight_bias" in weights:
                pending_bias.append((prefix + "weight", weights[prefix + "weight_bias"]))
        elif isinstance(sub, nn.BatchNorm2d):
            if prefix + "running_mean" in weights:  # not folded: stored as it is
                for key in ("weight", "bias", "running_mean", "running_var"):
                    put(prefix + key, weights[prefix + key])
            elif pending_bias:
                _, bias = pending_bias.pop(0)
                put(prefix + "weight", np.ones_like(bias))
                put(prefix + "bias", bias)
                put(prefix + "running_mean", np.zeros_like(bias))
                put(prefix + "running_var", np.full_like(bias, 1.0 - sub.eps))
            else:
                raise RebuildError(f"{name}: batch norm neither stored nor folded into a convolution")
            if prefix + "num_batches_tracked" in state:
                filled.add(prefix + "num_batches_tracked")
        elif isinstance(sub, nn.LSTM):
            if name not in lstms:
                raise RebuildError(f"{name}: no LSTM node in the graph")
            w, b = lstms[name]
            hidden = sub.hidden_size
            put(prefix + "weight_ih_l0", _reorder_gates(w, hidden))
            put(prefix + "weight_hh_l0", weights[prefix + "weight_hh_l0"])
            put(prefix + "bias_ih_l0", _reorder_gates(b[: 4 * hidden], hidden))
            put(prefix + "bias_hh_l0", _reorder_gates(b[4 * hidden :], hidden))
    if pending_bias:
        raise RebuildError(f"folded biases without a batch norm: {[k for k, _ in pending_bias]}")
    missing = sorted(set(state) - filled - unused)
    if missing:
        raise RebuildError(f"not filled from the graph: {missing}")
    module.load_state_dict(state, strict=True)
    return module.eval()


def rebuild(name: str, filename: str, model_path: str, metadata: dict) -> nn.Module:
    return load_from_onnx(architecture(name, filename, metadata), os.path.join(model_path, filename))


def parity(module: nn.Module, session, feeds: dict[str, np.ndarray]) -> float:
    """Max |PyTorch - ONNX Runtime| over every output for the same inputs."""
    with torch.inference_mode():
        expected = module(*(torch.from_numpy(v) for v in feeds.values()))
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = session.run(None, feeds)
    return max(float(np.max(np.abs(a - e.numpy()))) for a, e in zip(actual, expected))
