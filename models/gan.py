"""Conditional DCGAN for 28x28 digits. Only the generator is exported; the discriminator exists
to train it.

The generator draws the digit it is given; the discriminator both tells real from generated and
names the digit it sees (an auxiliary classifier, as in AC-GAN), so the generator is rewarded for
digits that are recognisably the one it was asked for. Width 32 rather than the classic 64: a
quarter of the compute, for CPU training in minutes.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """(z [N, latent], label int64 [N]) -> image [N, 1, 28, 28] in [0, 1]."""

    def __init__(self, latent: int = 100, classes: int = 10, width: int = 32):
        super().__init__()
        self.label_embedding = nn.Embedding(classes, latent)
        self.net = nn.Sequential(
            nn.Linear(2 * latent, width * 4 * 7 * 7, bias=False),
            nn.Unflatten(1, (width * 4, 7, 7)),
            nn.BatchNorm2d(width * 4),
            nn.ReLU(),
            nn.ConvTranspose2d(width * 4, width * 2, 4, stride=2, padding=1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
            nn.ConvTranspose2d(width * 2, 1, 4, stride=2, padding=1),  # 14 -> 28
        )

    def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([z, self.label_embedding(label)], dim=1)))


class Discriminator(nn.Module):
    """image [N, 1, 28, 28] in [0, 1] -> (real-vs-fake logit [N], class logits [N, classes])."""

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),  # 28 -> 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=False),  # 14 -> 7
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.real = nn.Linear(width * 2 * 7 * 7, 1)
        self.classes = nn.Linear(width * 2 * 7 * 7, classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(image)
        return self.real(h).squeeze(1), self.classes(h)
