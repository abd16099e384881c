"""An image of any mode and size -> an image classifier's input, by the spec's preprocessing
(the keys documented above IMAGE_PREPROCESSING). numpy + Pillow only.

Used by `python -m export import --eval` to measure an imported model the way it is meant to
be fed; the service's image contract follows the same keys.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from modelspec.image import RESAMPLE, frame_like_training, grey_pixels, ink_box, resize_batch


def facing(pixels: np.ndarray, polarity: str) -> bool:
    """Whether an image whose grey pixels are `pixels` must be inverted to match `polarity`."""
    if polarity == "as_is":
        return False
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    light_border = border.mean() > 0.5
    return light_border if polarity == "light_on_dark" else not light_border


def grey_input(image: Image.Image, pre: dict) -> np.ndarray:
    """[1, H, W] in [0, 1]."""
    pixels = grey_pixels(image)
    inverted = facing(pixels, pre.get("polarity", "as_is"))
    if inverted:
        pixels = 1.0 - pixels
    if pre.get("framing", "resize") == "crop_to_content":
        # the crop follows the bright content: frame the light-on-dark version
        dark_on_light = pre.get("polarity") == "dark_on_light"
        framed = frame_like_training(1.0 - pixels if dark_on_light else pixels, pre)[0]
        return 1.0 - framed if dark_on_light else framed
    return resize_batch(pixels[None], pre["size"], pre.get("resample", "bilinear"))[0]


def colour_input(image: Image.Image, pre: dict) -> np.ndarray:
    """[3, H, W] in [0, 1]. crop_to_content crops to the content found in the grey version and
    pads it to a square of the background colour with the stored margin."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    grey = rgb.mean(axis=2)
    if facing(grey, pre.get("polarity", "as_is")):
        rgb, grey = 1.0 - rgb, 1.0 - grey
    if pre.get("framing", "resize") == "crop_to_content":
        dark_on_light = pre.get("polarity") == "dark_on_light"
        box = ink_box(1.0 - grey if dark_on_light else grey)
        if box is not None:
            top, bottom, left, right = box
            content = rgb[top:bottom, left:right]
            side = max(content.shape[:2])
            full = int(round(side / max(1.0 - 2 * float(pre.get("content_margin", 0.0)), 0.1)))
            rgb = np.full((full, full, 3), 1.0 if dark_on_light else 0.0, dtype=np.float32)
            y, x = (full - content.shape[0]) // 2, (full - content.shape[1]) // 2
            rgb[y : y + content.shape[0], x : x + content.shape[1]] = content
    height, width = (int(v) for v in pre["size"])
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, c])).resize((width, height), RESAMPLE[pre.get("resample", "bilinear")]))
        for c in range(3)
    ]
    return np.clip(np.stack(channels), 0.0, 1.0).astype(np.float32)


def model_input(image: Image.Image, pre: dict) -> np.ndarray:
    """float32 [C, H, W]: size, channels, polarity and framing, then value_range, mean and std."""
    x = colour_input(image, pre) if int(pre.get("channels", 1)) == 3 else grey_input(image, pre)
    low, high = pre.get("value_range", [0.0, 1.0])
    x = low + x * (high - low)
    if "mean" in pre:
        x = x - np.asarray(pre["mean"], dtype=np.float32)[:, None, None]
    if "std" in pre:
        x = x / np.asarray(pre["std"], dtype=np.float32)[:, None, None]
    return x.astype(np.float32)
