"""Request payloads -> validated model inputs. Every refusal is a ClientError naming the field."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelspec.image import frame_like_training, grey_pixels, light_on_dark
from service.errors import ClientError

MAX_IMAGE_PIXELS = int(os.environ.get("MODELSERVE_MAX_IMAGE_PIXELS", 4096 * 4096))
MAX_ITEMS = int(os.environ.get("MODELSERVE_MAX_ITEMS", 64))
MAX_TEXT_CHARS = int(os.environ.get("MODELSERVE_MAX_TEXT_CHARS", 2000))
MAX_GENERATED = int(os.environ.get("MODELSERVE_MAX_GENERATED", 64))
MAX_SEED = 2**63 - 1
# Decoded uploads wider or taller than this are averaged down (by whole factors) before they are
# framed: framing pads the ink to a square, which for a 1 x 16,000,000 strip would be 16e6^2
# pixels. Framing ends in an average down to the training images' 8x8 (or 28x28) anyway.
FRAME_MAX_SIDE = 1024

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Uploaded bytes -> grey [H, W] in [0, 1], ink bright. PNG, JPEG, GIF (first frame), BMP,
    TIFF, WebP; colour, palette, alpha and 16-bit are converted; either polarity."""
    if not data:
        raise ClientError(field, "the upload is empty", "empty_upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ClientError(
                        field, f"{image.width}x{image.height} pixels is more than the limit of {MAX_IMAGE_PIXELS}", "image_too_large"
                    )
                image.seek(0)
                image.load()
                pixels = grey_pixels(image)
    except ClientError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ClientError(field, f"more than {MAX_IMAGE_PIXELS} pixels", "image_too_large") from None
    except UnidentifiedImageError:
        raise ClientError(field, "not an image that Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP)", "not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ClientError(field, f"damaged or truncated image ({e})", "bad_image") from None
    return light_on_dark(shrink(pixels))


def shrink(pixels: np.ndarray, max_side: int = FRAME_MAX_SIDE) -> np.ndarray:
    """Average [H, W] down by the smallest whole factor that brings both sides to max_side or less."""
    factor = -(-max(pixels.shape) // max_side)
    if factor <= 1:
        return pixels
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F").reduce(factor), dtype=np.float32)


def image_input(data: bytes, preprocessing: dict, field: str = "image") -> np.ndarray:
    """Uploaded bytes -> [1, 1, 28, 28] framed like the training images of the model."""
    return frame_like_training(decode_image(data, field), preprocessing)


def array_batch(values: np.ndarray, size: list[int], field: str = "images") -> np.ndarray:
    """A JSON batch of model-ready images -> float32 [N, 1, H, W]: [N, H, W] or [N, 1, H, W],
    values in [0, 1] with ink bright, as stored in each model's eval.npz."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise ClientError(field, "must be a list of numeric arrays of equal shape", "bad_array") from None
    height, width = size
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1:] != (1, height, width):
        raise ClientError(field, f"shape {list(np.shape(values))}; expected [N, {height}, {width}] or [N, 1, {height}, {width}]", "bad_shape")
    return image_rows(array, field)


def image_rows(values: np.ndarray, field: str = "images") -> np.ndarray:
    """Image rows [N, 1, H, W] (shaped by array_batch, or by BentoML for /infer/): 1 to
    MAX_ITEMS rows, finite, in [0, 1]."""
    array = np.asarray(values, dtype=np.float32)
    check_count(len(array), field)
    check_finite(array, field)
    if array.min() < 0 or array.max() > 1:
        raise ClientError(field, f"values must lie in [0, 1] (got {array.min():g} to {array.max():g})", "out_of_range")
    return np.ascontiguousarray(array)


def latent_rows(values: np.ndarray, field: str = "z") -> np.ndarray:
    """Rows for an /infer/ latent endpoint ([N, latent] float32, checked by BentoML): 1 to MAX_ITEMS, finite."""
    array = np.asarray(values, dtype=np.float32)
    check_count(len(array), field)
    check_finite(array, field)
    return np.ascontiguousarray(array)


def check_finite(array: np.ndarray, field: str) -> None:
    if not np.isfinite(array).all():
        raise ClientError(field, "contains NaN or infinity", "not_finite")


def check_count(count: int, field: str, limit: int = MAX_ITEMS) -> None:
    if count < 1:
        raise ClientError(field, "needs at least one item", "empty")
    if count > limit:
        raise ClientError(field, f"{count} items is more than the limit of {limit}", "too_many_items")


def texts(values: list[str], field: str = "texts") -> list[str]:
    check_count(len(values), field)
    for i, text in enumerate(values):
        where = f"{field}[{i}]"
        if not text.strip():
            raise ClientError(where, "is empty", "empty_text")
        if len(text) > MAX_TEXT_CHARS:
            raise ClientError(where, f"{len(text)} characters is more than the limit of {MAX_TEXT_CHARS}", "text_too_long")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ClientError(where, "contains invalid unicode (a lone surrogate)", "bad_text") from None
    return values


def generation(n: int, seed: int | None, seed_field: str = "seed") -> np.random.Generator:
    if not 1 <= n <= MAX_GENERATED:
        raise ClientError("n", f"must be between 1 and {MAX_GENERATED}", "n_out_of_range")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ClientError(seed_field, f"must be between 0 and {MAX_SEED}", "seed_out_of_range")
    return np.random.default_rng(seed)
