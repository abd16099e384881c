"""Train `fashion` on Fashion-MNIST's 60,000 training images; measured on its 10,000 test images.

Made for a 2-core CPU: a narrow network (see models/fashion.py) in channels-last memory
format, few epochs at a high one-cycle learning rate, large batches while the learning rate is
high and smaller ones at the end, random horizontal flips (clothes are near-symmetric, so a
flipped image is a new one of the same class), label smoothing. No test-set accuracy is
computed during training: the pipeline measures it once, with ONNX Runtime.
"""

from __future__ import annotations

import math
import time

import torch
from torch.nn import functional as F
from tqdm import tqdm

from export.data import dataset_record, prepare_images
from export.recipe import Trained, TrainOptions, seed_everything, torch_threads
from modelspec import SPECS
from models.fashion import FashionCNN

EPOCHS = {"smoke": 1, "quick": 8, "full": 20}
SMOKE_TRAIN, SMOKE_TEST = 1000, 500  # the smoke profile: seconds, not accuracy
MAX_LR = 6e-3
WEIGHT_DECAY = 5e-4


def batch_size(epoch: int, epochs: int) -> int:
    """512 images a step, then 128 in the last epoch: large batches are cheaper per image on a CPU
    while the learning rate is high; small ones refine at the end."""
    return 128 if epoch == epochs - 1 else 512


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def train_fashion(options: TrainOptions) -> Trained:
    torch.set_num_threads(torch_threads())
    generator = seed_everything(options.seed)
    spec, dataset, x, train_idx, test_idx = prepare_images(SPECS["fashion"], options.dataset, options.seed)
    if options.profile == "smoke":
        train_idx, test_idx = train_idx[:SMOKE_TRAIN], test_idx[:SMOKE_TEST]
    x_train, y_train = torch.from_numpy(x[train_idx]), torch.from_numpy(dataset.labels[train_idx])

    model = FashionCNN(num_classes=len(spec.labels)).to(memory_format=torch.channels_last)
    epochs = EPOCHS[options.profile]
    steps = sum(math.ceil(len(x_train) / batch_size(e, epochs)) for e in range(epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=steps, pct_start=0.25)
    history: dict[str, list[float]] = {"train_loss": [], "train_accuracy": []}
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in tqdm(range(epochs), desc="train fashion", disable=not options.progress):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        size = batch_size(epoch, epochs)
        total_loss, correct = 0.0, 0
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            images = random_flip(x_train[batch], generator).contiguous(memory_format=torch.channels_last)
            logits = model(images)
            loss = F.cross_entropy(logits, y_train[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y_train[batch]).sum())
        history["train_loss"].append(total_loss / len(x_train))
        history["train_accuracy"].append(correct / len(x_train))

    model = model.to(memory_format=torch.contiguous_format).eval()
    return Trained(
        spec=spec,
        modules={"model.onnx": model},
        eval_arrays={"x": x[test_idx], "y": dataset.labels[test_idx], "indices": test_idx},
        dataset=dataset_record(dataset, train_idx, test_idx, options.seed),
        training={
            "profile": options.profile,
            "epochs": epochs,
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        history=history,
    )
