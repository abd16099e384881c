"""Convolutional VAE of 28x28 digits: the encoder and decoder are separate graphs."""

from __future__ import annotations

import torch
from torch import nn


class VAEEncoder(nn.Module):
    """image [N, 1, 28, 28] in [0, 1] -> (mu, logvar), each [N, latent]."""

    def __init__(self, latent: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),  # 28 -> 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 14 -> 7
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256),
            nn.LeakyReLU(0.2),
        )
        self.mu = nn.Linear(256, latent)
        self.logvar = nn.Linear(256, latent)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(image)
        return self.mu(h), self.logvar(h)


class VAEDecoder(nn.Module):
    """z [N, latent] -> image [N, 1, 28, 28] in [0, 1]."""

    def __init__(self, latent: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent, 256),
            nn.LeakyReLU(0.2),
            nn.Linear(256, 64 * 7 * 7),
            nn.LeakyReLU(0.2),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 7 -> 14
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),  # 14 -> 28
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid pixels: training takes BCE on these, which is stabler than on probabilities."""
        return self.net(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))
