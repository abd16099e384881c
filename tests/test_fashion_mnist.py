"""The Fashion-MNIST loader, on small IDX files written here (the real ones are ~30 MB)."""

import gzip

import numpy as np
import pytest

from export import data, fashion_mnist
from export.data import DataError, prepare_images
from export.fashion_mnist import MIRROR_URL, load_fashion_mnist
from modelspec import FASHION_LABELS, SPECS
from test_data import idx_bytes, write

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def small_fashion(seed: int = 0) -> dict[str, bytes]:
    """12 training images holding every class, 4 test images; 28x28 like the real ones."""
    rng = np.random.default_rng(seed)
    train_labels = np.array([*range(10), 3, 7], dtype=np.uint8)
    test_labels = np.array([9, 0, 5, 5], dtype=np.uint8)
    return {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (12, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (4, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(test_labels),
    }


def write_fashion(folder, payloads: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        write(folder / name, payload, gzipped=True)  # the Debian package ships them gzipped
    return folder


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No Debian package, no FASHION_MNIST_DIR, an empty download cache, and no network."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no-debian-package"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("FASHION_MNIST_CACHE", str(tmp_path / "cache"))

    def offline(url, path):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", offline)
    return tmp_path


def test_loads_names_the_classes_and_keeps_the_datasets_own_split(tmp_path):
    payloads = small_fashion()
    ds = load_fashion_mnist(str(write_fashion(tmp_path / "fm", payloads)))
    assert ds.name == "fashion-mnist" and ds.classes == list(FASHION_LABELS)
    assert ds.images.shape == (16, 28, 28) and ds.test_start == 12
    assert ds.labels.tolist() == [*range(10), 3, 7, 9, 0, 5, 5]
    raw = np.frombuffer(payloads["t10k-images-idx3-ubyte"], dtype=np.uint8, offset=16).reshape(4, 28, 28)
    np.testing.assert_allclose(ds.images[12:], raw / 255.0, atol=1e-6)


def test_prepare_images_uses_the_test_split_and_the_class_names(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(write_fashion(tmp_path / "fm", small_fashion())))
    spec, dataset, x, train_idx, test_idx = prepare_images(SPECS["fashion"], None, seed=0)
    assert train_idx.tolist() == list(range(12)) and test_idx.tolist() == [12, 13, 14, 15]
    assert spec.labels == FASHION_LABELS and x.shape == (16, 1, 28, 28)
    assert spec.preprocessing["source_size"] == [28, 28] and spec.preprocessing["polarity"] == "light_on_dark"
    assert 0.0 <= spec.preprocessing["content_margin"] < 0.5


def test_found_in_the_debian_package_folder(nowhere, monkeypatch):
    debian = write_fashion(nowhere / "usr-share-datasets", small_fashion())
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(debian))
    assert fashion_mnist.find_or_download() == str(debian)
    assert load_fashion_mnist().test_start == 12


def test_downloaded_from_the_mirror_into_the_cache_when_nowhere_else(nowhere, monkeypatch):
    payloads, fetched = small_fashion(), []

    def mirror(url, path):
        fetched.append(url)
        with open(path, "wb") as f:
            f.write(gzip.compress(payloads[url.rsplit("/", 1)[1].removesuffix(".gz")]))

    monkeypatch.setattr(data.urllib.request, "urlretrieve", mirror)
    ds = load_fashion_mnist()
    assert sorted(fetched) == sorted(MIRROR_URL + name + ".gz" for name in IDX_NAMES)
    assert ds.test_start == 12 and len(ds.labels) == 16
    fetched.clear()
    load_fashion_mnist()  # the second time from the cache
    assert fetched == []


def test_nowhere_and_offline_says_what_to_do(nowhere):
    with pytest.raises(DataError) as error:
        load_fashion_mnist()
    message = str(error.value)
    assert "download failed" in message and "network unreachable" in message
    assert "apt-get install dataset-fashion-mnist" in message and "FASHION_MNIST_DIR" in message


def test_labels_other_than_0_to_9_are_refused(tmp_path):
    payloads = small_fashion()
    payloads["train-labels-idx1-ubyte"] = idx_bytes(np.array([*range(1, 11), 3, 7], dtype=np.uint8))
    with pytest.raises(DataError, match="expected Fashion-MNIST's 0..9"):
        load_fashion_mnist(str(write_fashion(tmp_path / "fm", payloads)))


def test_the_train_pair_alone_is_refused(tmp_path):
    payloads = small_fashion()
    folder = write_fashion(tmp_path / "fm", {k: v for k, v in payloads.items() if k.startswith("train")})
    with pytest.raises(DataError, match="needs both the train and the t10k IDX files"):
        load_fashion_mnist(str(folder))


def test_a_product_photo_is_framed_like_the_training_images():
    """Colour, a light background, any size: grey, inverted to light on dark, cropped to the
    object, 28x28 (modelspec.convert, by the spec's preprocessing)."""
    from PIL import Image

    from modelspec.convert import model_input

    photo = Image.new("RGB", (90, 60), (245, 245, 240))
    photo.paste((120, 20, 30), (30, 10, 60, 50))  # a dark red garment, 30 wide and 40 high
    pre = {**SPECS["fashion"].preprocessing, "source_size": [28, 28], "content_margin": 0.0}
    x = model_input(photo, pre)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert x.max() == pytest.approx(1.0) and x[0, 14, 14] > 0.9  # the garment is bright, in the middle
    assert x[0, :, :2].max() < 0.05 and x[0, :, -2:].max() < 0.05  # dark on both sides of the narrower garment
    assert x[0, 0, 14] > 0.9  # cropped to it: its top touches the top, as in Fashion-MNIST (margin 0)
