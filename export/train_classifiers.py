"""Train the digit classifiers (`cnn`, `resnet`) on 28x28 images with light affine augmentation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from export.data import dataset_record, prepare_images
from export.recipe import Trained, TrainOptions, seed_everything, torch_threads
from modelspec import SPECS
from models.cnn import DigitCNN
from models.resnet import SmallResNet

EPOCHS = {"smoke": 1, "quick": 30, "full": 80}
BATCH_SIZE = 64


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate up to 10 degrees, scale 0.9-1.1, shift up to 2 pixels: what handwriting varies by."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(n, generator=generator) * 0.2
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train_classifier(name: str, make_model: Callable[[], nn.Module], options: TrainOptions) -> Trained:
    torch.set_num_threads(torch_threads())
    generator = seed_everything(options.seed)
    model = make_model()
    spec, dataset, x, train_idx, test_idx = prepare_images(SPECS[name], options.dataset, options.seed)
    if options.profile == "smoke":
        train_idx = train_idx[:256]
    x_train, y_train = torch.from_numpy(x[train_idx]), torch.from_numpy(dataset.labels[train_idx])
    x_test, y_test = torch.from_numpy(x[test_idx]), torch.from_numpy(dataset.labels[test_idx])

    epochs = EPOCHS[options.profile]
    steps_per_epoch = math.ceil(len(x_train) / BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    history: dict[str, list[float]] = {"train_loss": [], "test_accuracy": []}
    started = time.perf_counter()
    for _ in tqdm(range(epochs), desc=f"train {name}", disable=not options.progress):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            loss = F.cross_entropy(model(random_affine(x_train[batch], generator)), y_train[batch], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        history["train_loss"].append(total / len(x_train))
        history["test_accuracy"].append(accuracy(model, x_test, y_test))

    return Trained(
        spec=spec,
        modules={"model.onnx": model.eval()},
        eval_arrays={"x": x[test_idx], "y": dataset.labels[test_idx], "indices": test_idx},
        dataset=dataset_record(dataset, train_idx, test_idx, options.seed),
        training={
            "profile": options.profile,
            "epochs": epochs,
            "seconds": round(time.perf_counter() - started, 1),
            "torch_accuracy": history["test_accuracy"][-1],
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        history=history,
    )


def train_cnn(options: TrainOptions) -> Trained:
    return train_classifier("cnn", DigitCNN, options)


def train_resnet(options: TrainOptions) -> Trained:
    return train_classifier("resnet", SmallResNet, options)
