"""`python -m export import --eval SOURCE`: labelled images made into the imported model's
inputs by its stored preprocessing, for an accuracy measured with ONNX Runtime.

SOURCE is an image folder (one sub-folder per class, named like the labels) or a folder of
MNIST-style IDX files (label value v is output v: the t10k pair, or the train pair when there is
no t10k one); `folder:` and `idx:` prefixes are accepted.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
from PIL import Image

from export.data import IDX_PAIRS, IMAGE_EXTENSIONS, DataError, find_idx_file, load_idx, visible_entries
from export.import_checks import ImportRefused
from modelspec import ModelSpec
from modelspec.convert import model_input


def folder_images(folder: str, labels: tuple[str, ...]):
    """(PIL image, output index) for every image of every class sub-folder; the sha256 of it all."""
    classes = [name for name in visible_entries(folder) if os.path.isdir(os.path.join(folder, name))]
    if not classes:
        raise ImportRefused(f"--eval {folder}: no class sub-folders")
    unknown = [name for name in classes if name not in labels]
    if unknown:
        raise ImportRefused(f"--eval {folder}: class folders {unknown} are not among the labels {list(labels)}")
    digest, items = hashlib.sha256(), []
    for cls in classes:
        for name in visible_entries(os.path.join(folder, cls)):
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(folder, cls, name)
            with open(path, "rb") as f:
                raw = f.read()
            digest.update(f"{cls}/{name}\0{len(raw)}\0".encode("utf-8") + raw)
            try:
                image = Image.open(io.BytesIO(raw))
                image.load()
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise ImportRefused(f"--eval {path}: not a readable image ({e})") from None
            items.append((image, labels.index(cls)))
    if not items:
        raise ImportRefused(f"--eval {folder}: no images in its class folders")
    return items, digest.hexdigest()


def idx_images(folder: str, width: int):
    """The t10k pair when the folder holds it (a model is judged on its test images, not on the
    60,000 it may have been trained on), else the train pair."""
    test_pair = IDX_PAIRS[1]
    pairs = (test_pair,) if find_idx_file(folder, test_pair[0]) or find_idx_file(folder, test_pair[1]) else IDX_PAIRS[:1]
    try:
        dataset = load_idx(folder, pairs)
    except DataError as e:
        raise ImportRefused(f"--eval: {e}") from None
    values = np.array([int(c) for c in dataset.classes])[dataset.labels]
    if values.max() >= width:
        raise ImportRefused(f"--eval {folder}: IDX label {values.max()} is not an output of a model with {width} classes")
    pixels = np.round(dataset.images * 255).astype(np.uint8)
    return [(Image.fromarray(p, mode="L"), int(v)) for p, v in zip(pixels, values)], dataset.sha256


def eval_arrays(source: str, spec: ModelSpec) -> tuple[dict[str, np.ndarray], dict]:
    """eval.npz's arrays (x: the model's inputs, y: the output index of each) and a dataset record."""
    kind, sep, rest = source.partition(":")
    folder = rest if sep and kind in ("folder", "idx") else source
    if not os.path.isdir(folder):
        raise ImportRefused(f"--eval {source}: not a folder")
    holds_idx = any(find_idx_file(folder, images) for images, _ in IDX_PAIRS)
    is_idx = kind == "idx" or (kind != "folder" and holds_idx)
    if is_idx:
        items, sha256 = idx_images(folder, len(spec.labels))
    else:
        items, sha256 = folder_images(folder, spec.labels)
    x = np.stack([model_input(image, spec.preprocessing) for image, _ in items])
    y = np.array([label for _, label in items], dtype=np.int64)
    dataset = {"name": f"{'idx' if is_idx else 'folder'}:{os.path.basename(os.path.normpath(folder))}", "sha256": sha256,
               "sizes": {"total": len(y), "test": len(y), "train": 0}}
    return {"x": x, "y": y}, dataset
