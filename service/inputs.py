"""Request payloads -> validated model inputs. Every refusal is a ClientError naming the field."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelspec import TensorSpec
from modelspec.image import frame_like_training, grey_pixels, light_border, resize_plane, rgb_pixels
from service.errors import ClientError

MAX_IMAGE_PIXELS = int(os.environ.get("MODELSERVE_MAX_IMAGE_PIXELS", 4096 * 4096))
MAX_ITEMS = int(os.environ.get("MODELSERVE_MAX_ITEMS", 64))
MAX_TEXT_CHARS = int(os.environ.get("MODELSERVE_MAX_TEXT_CHARS", 2000))
MAX_GENERATED = int(os.environ.get("MODELSERVE_MAX_GENERATED", 64))
MAX_SEED = 2**63 - 1
# Latent inputs are samples of N(0, 1): far beyond this a generator's output overflows to NaN.
LATENT_LIMIT = 100.0
# Decoded uploads wider or taller than this are averaged down (by whole factors) before they are
# framed: framing pads the ink to a square, which for a 1 x 16,000,000 strip would be 16e6^2
# pixels. Framing ends in an average down to the training images' 8x8 (or 28x28) anyway.
FRAME_MAX_SIDE = 1024

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# What the README promises; Pillow would also open PSD, FITS, EPS (through Ghostscript), ...
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
# An upload whose pixels all lie within this of each other shows nothing to classify.
NO_CONTENT_RANGE = 2 / 255


def open_image(data: bytes, field: str = "image") -> Image.Image:
    """Uploaded bytes -> a decoded Pillow image (first frame). PNG, JPEG, GIF, BMP, TIFF, WebP."""
    if not data:
        raise ClientError(field, "the upload is empty", "empty_upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ClientError(
                    field, f"{image.width}x{image.height} pixels is more than the limit of {MAX_IMAGE_PIXELS}", "image_too_large"
                )
            image.seek(0)
            image.load()
            return image
    except ClientError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ClientError(field, f"more than {MAX_IMAGE_PIXELS} pixels", "image_too_large") from None
    except UnidentifiedImageError:
        raise ClientError(field, "not an image that Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP)", "not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ClientError(field, f"damaged or truncated image ({e})", "bad_image") from None


def shrink(pixels: np.ndarray, max_side: int = FRAME_MAX_SIDE) -> np.ndarray:
    """Average [C, H, W] down by the smallest whole factor that brings both sides to max_side or less."""
    factor = -(-max(pixels.shape[1:]) // max_side)
    if factor <= 1:
        return pixels
    return np.stack([
        np.asarray(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F").reduce(factor), dtype=np.float32)
        for plane in pixels
    ])


def image_input(data: bytes, preprocessing: dict, field: str = "image") -> np.ndarray:
    """Uploaded bytes -> [1, C, H, W] pixels in [0, 1], made like the model's training images
    by its stored preprocessing: channels, polarity, framing and size."""
    with open_image(data, field) as image:
        channels = int(preprocessing.get("channels", 1))
        planes = grey_pixels(image)[None] if channels == 1 else rgb_pixels(image)
    if float(planes.max() - planes.min()) <= NO_CONTENT_RANGE:
        raise ClientError(field, "the image is one flat colour: there is nothing to classify", "no_content")
    planes = shrink(planes)
    polarity = preprocessing.get("polarity", "as_is")
    light = light_border(planes.mean(axis=0))
    if (polarity == "light_on_dark" and light) or (polarity == "dark_on_light" and not light):
        planes = 1.0 - planes
    if preprocessing.get("framing", "crop_to_content") == "crop_to_content":
        return frame_like_training(planes, preprocessing)
    size, resample = preprocessing["size"], preprocessing.get("resample", "bilinear")
    return np.stack([resize_plane(plane, size, resample) for plane in planes])[None].clip(0.0, 1.0)


def array_batch(values, preprocessing: dict, field: str = "images") -> np.ndarray:
    """A JSON batch of images -> float32 [N, C, H, W] pixels: [N, C, H, W], or [N, H, W] for one
    channel, values in [0, 1] (ink bright for the digit models, as stored in their eval.npz)."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise ClientError(field, "must be a list of numeric arrays of equal shape", "bad_array") from None
    (height, width), channels = preprocessing["size"], int(preprocessing.get("channels", 1))
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    expected = f"[N, {height}, {width}] or " * (channels == 1) + f"[N, {channels}, {height}, {width}]"
    if array.ndim != 4 or array.shape[1:] != (channels, height, width):
        raise ClientError(field, f"shape {list(np.shape(values))}; expected {expected}", "bad_shape")
    return image_rows(array, field)


def image_rows(values: np.ndarray, field: str = "images") -> np.ndarray:
    """Image rows [N, C, H, W]: 1 to MAX_ITEMS rows, finite, in [0, 1]."""
    array = np.asarray(values, dtype=np.float32)
    check_count(len(array), field)
    # Two reductions on the hot path (a NaN makes both NaN, which fails both comparisons); the
    # reasons only for a refusal.
    if array.size and not (array.min() >= 0 and array.max() <= 1):
        check_finite(array, field)
        raise ClientError(field, f"values must lie in [0, 1] (got {array.min():g} to {array.max():g})", "out_of_range")
    return np.ascontiguousarray(array)


def tensor(spec: TensorSpec, values, field: str, classes: int = 0) -> np.ndarray:
    """Request values for one graph input -> a checked array: its dtype and shape (-1: any), 1 to
    MAX_ITEMS rows, finite, and the rule of its kind (pixels in [0, 1], latents within
    LATENT_LIMIT, class indices below the number of classes)."""
    try:
        array = np.asarray(values, dtype=spec.dtype)
    except (TypeError, ValueError, OverflowError):
        raise ClientError(field, f"must be an array of {spec.dtype} numbers", "bad_array") from None
    if array.ndim != len(spec.shape) or any(e != -1 and d != e for d, e in zip(array.shape, spec.shape)):
        raise ClientError(field, f"shape {list(array.shape)}; expected {list(spec.shape)} (-1: any size)", "bad_shape")
    if spec.kind == "image01":
        return image_rows(array, field)
    check_count(len(array), field)
    if array.dtype.kind == "f":
        check_finite(array, field)
    if spec.kind == "normal" and array.size and np.abs(array).max() > LATENT_LIMIT:
        raise ClientError(field, f"latent values must lie within +-{LATENT_LIMIT:g}", "out_of_range")
    if spec.kind == "class_index" and array.size and (array.min() < 0 or array.max() >= classes):
        raise ClientError(field, f"class indices must lie in [0, {classes - 1}]", "out_of_range")
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
    if not isinstance(values, list) or not all(isinstance(text, str) for text in values):
        raise ClientError(field, "must be a list of strings", "bad_text")
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


def class_labels(label, n: int, labels: tuple[str, ...], field: str = "label") -> np.ndarray | None:
    """`label`: None, one class index for all n images, or a list of n -> int64 [n]."""
    if label is None:
        return None
    asked = label if isinstance(label, list) else [label] * n
    if len(asked) != n:
        raise ClientError(field, f"{len(asked)} labels for {n} images: give one label, or one per image", "bad_label")
    for item in asked:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < len(labels):
            raise ClientError(field, f"{item!r} is not a class index from 0 to {len(labels) - 1} (classes {list(labels)})", "bad_label")
    return np.asarray(asked, dtype=np.int64)
