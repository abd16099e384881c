"""Generated images -> PNG bytes, grids, strips and JSON answers."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from starlette.responses import Response

from modelspec.image import grid

def png(pixels: np.ndarray) -> bytes:
    """[H, W] in [0, 1] -> 8-bit grey PNG. Deterministic: same pixels, same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def base64_png(pixels: np.ndarray) -> str:
    return base64.b64encode(png(pixels)).decode("ascii")


def strip(images: np.ndarray) -> np.ndarray:
    return grid(images, columns=len(images))


def answer(images: np.ndarray, output: str, about: dict):
    """png: one grid image (model, version and seed in X- headers); base64 or array: JSON."""
    if output == "png":
        headers = {f"X-{key.capitalize()}": str(value) for key, value in about.items()}
        return Response(png(grid(images)), media_type="image/png", headers=headers)
    if output == "base64":
        return {**about, "images": [base64_png(image[0]) for image in images]}
    return {**about, "images": images[:, 0].tolist()}
