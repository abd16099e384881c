"""Two-stage VAE of 28x28 digits (Dai & Wipf, "Diagnosing and Enhancing VAE Models", 2019).

Stage one is a convolutional VAE: good reconstructions, but its codes of real digits do not
fill its N(0, I) prior, so decoded prior samples fall between digits (blurry blends). Stage two
is a small VAE of stage one's codes, whose own prior is matched well: a prior sample goes
through both decoders. The exported encoder and decoder are the two stages composed, so
`encoder.onnx` and `decoder.onnx` keep the plain VAE's signatures.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageEncoder(nn.Module):
    """image [N, 1, 28, 28] in [0, 1] -> (mu, logvar) of stage one's code, each [N, latent]."""

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


class ImageDecoder(nn.Module):
    """stage one's code [N, latent] -> image [N, 1, 28, 28] in [0, 1]."""

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

    def logits(self, code: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid pixels: training takes BCE on these, which is stabler than on probabilities."""
        return self.net(code)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(code))


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class LatentEncoder(nn.Module):
    """stage one's code [N, latent] -> (mu, logvar) of stage two's, each [N, latent]."""

    def __init__(self, latent: int = 16, hidden: int = 256):
        super().__init__()
        self.net = mlp(latent, hidden, 2 * latent)

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(code).chunk(2, dim=1)
        return mu, logvar


class LatentDecoder(nn.Module):
    """stage two's z [N, latent] -> stage one's code [N, latent] (the mean; its variance is a
    training-only parameter, see export/train_generative.py)."""

    def __init__(self, latent: int = 16, hidden: int = 256):
        super().__init__()
        self.net = mlp(latent, hidden, latent)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAEEncoder(nn.Module):
    """encoder.onnx: image [N, 1, 28, 28] -> (mu, logvar) of z, each [N, latent]."""

    def __init__(self, latent: int = 16):
        super().__init__()
        self.image = ImageEncoder(latent)
        self.latent = LatentEncoder(latent)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latent(self.image(image)[0])


class VAEDecoder(nn.Module):
    """decoder.onnx: z [N, latent] ~ N(0, I) -> image [N, 1, 28, 28] in [0, 1]."""

    def __init__(self, latent: int = 16):
        super().__init__()
        self.latent = LatentDecoder(latent)
        self.image = ImageDecoder(latent)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image(self.latent(z))
