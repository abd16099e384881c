"""DCGAN for 28x28 digits. Only the generator is exported; the discriminator exists to train it.

Width 32 rather than the classic 64: a quarter of the compute, for CPU training in minutes.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """z [N, latent] -> image [N, 1, 28, 28] in [0, 1]."""

    def __init__(self, latent: int = 100, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, width * 4 * 7 * 7, bias=False),
            nn.Unflatten(1, (width * 4, 7, 7)),
            nn.BatchNorm2d(width * 4),
            nn.ReLU(),
            nn.ConvTranspose2d(width * 4, width * 2, 4, stride=2, padding=1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(width * 2),
            nn.ReLU(),
            nn.ConvTranspose2d(width * 2, 1, 4, stride=2, padding=1),  # 14 -> 28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


class Discriminator(nn.Module):
    """image [N, 1, 28, 28] in [0, 1] -> one real-vs-fake logit per image, [N]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),  # 28 -> 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=False),  # 14 -> 7
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(width * 2 * 7 * 7, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).squeeze(1)
