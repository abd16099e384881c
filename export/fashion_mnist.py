"""Fashion-MNIST (Zalando): 60,000 training and 10,000 test images of clothing, 28x28 grey,
light objects on a dark background, 10 classes, with the dataset's own train/test split.

The four IDX files are looked for, in order, in $FASHION_MNIST_DIR, in Debian's package
`dataset-fashion-mnist` (`make setup` installs it where apt is available) and in the download
cache; where none holds them, they are downloaded from the dataset's public mirror into the
cache, and when that fails too the error says what to do.
"""

from __future__ import annotations

import os

from export.data import IDX_PAIRS, DataError, ImageDataset, download_mnist, find_idx_file, load_idx, parse_idx, read_idx_bytes
from modelspec import FASHION_LABELS

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
MIRROR_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "modelserve", "fashion-mnist")


def candidate_folders() -> list[str]:
    folders = [os.environ["FASHION_MNIST_DIR"]] if os.environ.get("FASHION_MNIST_DIR") else []
    return folders + [DEBIAN_DIR, os.environ.get("FASHION_MNIST_CACHE", CACHE_DIR)]


def holds_all_files(folder: str) -> bool:
    return all(find_idx_file(folder, name) for pair in IDX_PAIRS for name in pair)


def find_or_download(base_url: str = MIRROR_URL) -> str:
    """The first folder holding the four IDX files; else download them into the cache folder."""
    folders = candidate_folders()
    for folder in folders:
        if holds_all_files(folder):
            return folder
    cache = folders[-1]
    try:
        return download_mnist(cache, base_url)
    except DataError as e:
        raise DataError(
            f"Fashion-MNIST not found in {', '.join(folders)}, and the download failed: {e}. "
            "Install Debian's package (`apt-get install dataset-fashion-mnist`, which `make setup` runs), "
            f"or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            f"t10k-labels-idx1-ubyte.gz from {base_url} into a folder and set FASHION_MNIST_DIR to it"
        ) from None


def load_fashion_mnist(folder: str | None = None) -> ImageDataset:
    """The 70,000 images, training images first; `test_start` marks the dataset's test split."""
    folder = folder or find_or_download()
    if not holds_all_files(folder):
        raise DataError(f"{folder}: Fashion-MNIST needs both the train and the t10k IDX files")
    dataset = load_idx(folder)
    if dataset.classes != [str(i) for i in range(len(FASHION_LABELS))]:
        raise DataError(f"{folder}: labels {dataset.classes}, expected Fashion-MNIST's 0..9")
    train_labels = find_idx_file(folder, IDX_PAIRS[0][1])
    train_size = len(parse_idx(train_labels, read_idx_bytes(train_labels), 1))
    dataset.name = "fashion-mnist"
    dataset.classes = list(FASHION_LABELS)
    dataset.test_start = train_size
    return dataset
