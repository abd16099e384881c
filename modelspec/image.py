"""Image transforms shared by training and serving (numpy + Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX, "nearest": Image.Resampling.NEAREST}


def resize_batch(images: np.ndarray, size: tuple[int, int] | list[int], resample: str = "bilinear") -> np.ndarray:
    """[N, H, W] float images -> [N, 1, size] float32, each resized with Pillow in float mode."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected images of shape [N, H, W], got {images.shape}")
    height, width = int(size[0]), int(size[1])
    if images.shape[1:] == (height, width):
        return images[:, None].copy()
    out = np.empty((len(images), 1, height, width), dtype=np.float32)
    for i, image in enumerate(images):
        resized = Image.fromarray(image, mode="F").resize((width, height), RESAMPLE[resample])
        out[i, 0] = np.asarray(resized, dtype=np.float32)
    return np.clip(out, 0.0, 1.0)
