"""What a training recipe hands to the export pipeline.

A recipe (`export/train_*.py`) trains one model and returns `Trained`; the pipeline
(`export/pipeline.py`) exports every module to ONNX, checks parity with PyTorch, measures the
stored metric with ONNX Runtime on `eval_arrays`, applies the floor and stores the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from modelspec import ModelSpec

if TYPE_CHECKING:  # torch only where a model is trained: `export verify` and `export import` run without it
    import torch
    from torch import nn

PROFILES = ("smoke", "quick", "full")


@dataclass
class Trained:
    spec: ModelSpec  # preprocessing completed with what the dataset decided
    modules: dict[str, nn.Module]  # graph filename -> module; forward takes the graph inputs in order
    eval_arrays: dict[str, np.ndarray]  # saved as eval.npz: the exact ONNX inputs the metric uses
    dataset: dict  # name, sha256, sizes, split_seed
    training: dict = field(default_factory=dict)  # profile, epochs, seconds, PyTorch-side metrics
    files: dict[str, bytes] = field(default_factory=dict)  # extra stored files, e.g. vocab.json
    history: dict[str, list[float]] = field(default_factory=dict)  # per-epoch curves for the PNG
    samples: np.ndarray | None = None  # [N, 1, 28, 28] images for a sample grid PNG


@dataclass
class TrainOptions:
    profile: str = "quick"
    dataset: str | None = None  # None: the spec's offline default
    seed: int = 0
    progress: bool = True
    judge_path: str | None = None  # cnn model.onnx that judges generated samples


def seed_everything(seed: int) -> torch.Generator:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def torch_threads() -> int:
    return int(os.environ.get("TRAIN_THREADS", os.cpu_count() or 1))
