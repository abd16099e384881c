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


SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def grey_pixels(image: Image.Image) -> np.ndarray:
    """float32 [H, W] in [0, 1]. 16-bit greys keep their full range; transparent pixels take the
    background that contrasts with the opaque ones, so ink on a transparent canvas stays visible."""
    if image.mode in SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if "A" not in image.getbands() and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rgba = image.convert("RGBA")
    grey = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    opaque_mean = float((grey * alpha).sum() / alpha.sum()) if alpha.sum() > 0 else 1.0
    background = 1.0 if opaque_mean < 0.5 else 0.0
    return grey * alpha + background * (1.0 - alpha)


def light_border(pixels: np.ndarray) -> bool:
    """Whether the border of a grey [H, W] image (its background) is mostly light."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return bool(border.mean() > 0.5)


def light_on_dark(pixels: np.ndarray) -> np.ndarray:
    """Invert an image whose border (its background) is mostly light."""
    return 1.0 - pixels if light_border(pixels) else pixels


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """float32 [3, H, W] in [0, 1]; transparent pixels show white."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = grey_pixels(image)
        return np.repeat(grey[None], 3, axis=0)
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


INK_THRESHOLD = 0.2


def ink_box(pixels: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), exclusive ends, of the pixels above the ink threshold; None if blank."""
    ink = pixels > INK_THRESHOLD * max(float(pixels.max()), 1e-6)
    if not pixels.max() > 0 or not ink.any():
        return None
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def content_margin(images: np.ndarray) -> float:
    """Median empty border around the ink, as a fraction of the image side (0 for images whose
    ink touches the edge, about 0.14 for MNIST's 20-in-28 boxes). Recorded at export so a
    serving transform can frame uploads the way the training images were framed."""
    margins = []
    for pixels in images:
        box = ink_box(pixels)
        if box is not None:
            top, bottom, left, right = box
            side = max(bottom - top, right - left)
            margins.append((max(pixels.shape) - side) / 2 / max(pixels.shape))
    return round(float(np.median(margins)), 4) if margins else 0.0


def frame_like_training(pixels: np.ndarray, preprocessing: dict) -> np.ndarray:
    """A light-on-dark image of any size, grey [H, W] or planes [C, H, W] -> [1, C, H', W'] model
    input: crop to the ink (of the planes' mean), centre it in a square with the training data's
    margin, average down to the training images' source resolution, stretch contrast to [0, 1],
    then resize as in training."""
    planes = np.asarray(pixels, dtype=np.float32)
    planes = planes[None] if planes.ndim == 2 else planes
    box = ink_box(planes.mean(axis=0))
    if box is not None:
        top, bottom, left, right = box
        ink = planes[:, top:bottom, left:right]
        side = max(ink.shape[1:])
        margin = float(preprocessing.get("content_margin", 0.0))
        full = int(round(side / max(1.0 - 2 * margin, 0.1)))
        square = np.zeros((len(planes), full, full), dtype=np.float32)
        y, x = (full - ink.shape[1]) // 2, (full - ink.shape[2]) // 2
        square[:, y : y + ink.shape[1], x : x + ink.shape[2]] = ink
        planes = square
    source = preprocessing.get("source_size", preprocessing["size"])
    small = np.stack([resize_plane(plane, source, "box") for plane in planes])
    if small.max() > 0:
        small = small / small.max()
    return resize_batch(small, preprocessing["size"], preprocessing.get("resample", "bilinear"))[None, :, 0]


def resize_plane(plane: np.ndarray, size, resample: str) -> np.ndarray:
    height, width = int(size[0]), int(size[1])
    if plane.shape == (height, width):
        return np.asarray(plane, dtype=np.float32)
    resized = Image.fromarray(np.asarray(plane, dtype=np.float32), mode="F").resize((width, height), RESAMPLE[resample])
    return np.asarray(resized, dtype=np.float32)


GRID_GAP = 2


def grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """[N, 1, H, W] -> one picture, `columns` images a row, GRID_GAP pixels apart."""
    n, _, h, w = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    out = np.zeros((rows * (h + GRID_GAP) - GRID_GAP, columns * (w + GRID_GAP) - GRID_GAP), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + GRID_GAP) : r * (h + GRID_GAP) + h, c * (w + GRID_GAP) : c * (w + GRID_GAP) + w] = image[0]
    return out
