"""One description of every model, shared by export (which writes it into the store) and the
service (which reads it back from the store's metadata). Plain data: no torch, no onnx."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

OPSET = 18
DIGIT_LABELS = [str(d) for d in range(10)]
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Every model is served through the contract of its task (service/tasks.py), never by its name.
IMAGE_CLASSIFICATION = "image-classification"
TEXT_CLASSIFICATION = "text-classification"
IMAGE_GENERATION = "image-generation"  # latent (and optionally a class) -> images
AUTOENCODER = "variational-autoencoder"  # an encoder.onnx and a decoder.onnx
TENSOR = "tensor"  # any graph: tensors in, tensors out (V2 and /infer/NAME only)
GENERATIVE_TASKS = (IMAGE_GENERATION, AUTOENCODER)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` uses -1 for a dynamic axis.

    `kind` says what the values mean, so parity checks and clients can make valid inputs:
    image01 (pixels in [0, 1], ink bright), normal (standard normal latent), class_index (an
    index into the model's labels, one per row), tokens (ids into the vocabulary, 0 =
    padding), lengths (valid tokens per row), logits, image01_out, tensor (an imported
    model's input or output: its task and preprocessing say what it holds).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), d["kind"])


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file of a model and its signature."""

    filename: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(
            d["filename"],
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
        )


@dataclass(frozen=True)
class Floor:
    """The quality a model must reach before it is stored.

    Either an absolute minimum of `metric`, or (with `relative_to`) at most `max_drop` below
    the same metric of the latest stored version of another model.
    """

    metric: str
    minimum: float | None = None
    relative_to: str | None = None
    max_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelSpec:
    """Name (the store name), what the model does, its graphs, labels and preprocessing.

    `preprocessing` holds the defaults; export completes it with what the dataset decides
    (source image size, vocabulary size, ...) before storing.
    """

    name: str
    task: str
    input_kind: str
    description: str
    graphs: tuple[GraphSpec, ...]
    floor: Floor
    labels: tuple[str, ...] = ()
    preprocessing: dict[str, Any] = field(default_factory=dict)
    also: tuple[Floor, ...] = ()  # further floors, all of which must hold too

    @property
    def floors(self) -> tuple[Floor, ...]:
        return (self.floor, *self.also)

    def graph(self, filename: str) -> GraphSpec:
        for g in self.graphs:
            if g.filename == filename:
                return g
        raise KeyError(f"{self.name} has no graph {filename!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "input_kind": self.input_kind,
            "description": self.description,
            "graphs": [g.to_dict() for g in self.graphs],
            "floor": self.floor.to_dict(),
            "labels": list(self.labels),
            "preprocessing": dict(self.preprocessing),
            "also": [f.to_dict() for f in self.also],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(
            name=d["name"],
            task=d["task"],
            input_kind=d["input_kind"],
            description=d["description"],
            graphs=tuple(GraphSpec.from_dict(g) for g in d["graphs"]),
            floor=Floor(**d["floor"]),
            labels=tuple(d["labels"]),
            preprocessing=dict(d["preprocessing"]),
            also=tuple(Floor(**f) for f in d.get("also", [])),
        )


def _image(name: str = "image") -> TensorSpec:
    return TensorSpec(name, "float32", (-1, 1, 28, 28), "image01")


def _logits(classes: int) -> TensorSpec:
    return TensorSpec("logits", "float32", (-1, classes), "logits")


def _latent(size: int) -> TensorSpec:
    return TensorSpec("z", "float32", (-1, size), "normal")


# How an image classifier's input is made, read by the serving contract (service/tasks.py):
# - size [H, W] and channels (1 or 3), layout NCHW;
# - value_range [lo, hi]: pixel intensities in [0, 1] are mapped linearly onto it, then
#   mean and std (one value per channel, optional) normalise: (x - mean) / std;
# - polarity: light_on_dark (an upload with a light border is inverted), dark_on_light, as_is;
# - framing: crop_to_content (crop to the ink, centre it in a square with `content_margin`,
#   average down to `source_size`, then resize) or resize (the whole image, as it is);
# - resample: bilinear, box or nearest;
# - max_batch: 1 when an imported graph's batch axis (any task's) is fixed at 1 (`export import --fixed-batch`):
#   it must never be batched. Absent: the batch axis is dynamic.
# Pixels in [0, 1], ink bright on a dark background, 28x28. Export adds `source_size`, the
# resolution of the training images, so a serving transform can match their level of detail.
IMAGE_PREPROCESSING = {
    "size": [28, 28],
    "channels": 1,
    "value_range": [0.0, 1.0],
    "polarity": "light_on_dark",
    "framing": "crop_to_content",
    "resample": "bilinear",
}

# Characters, one token each; 0 pads on the right, 1 is an unknown character. Export adds the
# vocabulary size; the vocabulary itself is stored as vocab.json.
TEXT_PREPROCESSING = {
    "tokenizer": "char",
    "normalize": "NFKC",
    "lowercase": True,
    "pad_id": 0,
    "unk_id": 1,
    "padding": "right",
    "max_length": 256,
}

VAE_LATENT = 16
GAN_LATENT = 100

# A generator is stored only if the cnn is sure of its samples (mean top-1 softmax confidence
# over 1,000 prior samples) and they spread over the classes: class_spread is the smallest
# min(share / fair share, fair share / share) over the classes the cnn sees, so 0.5 means no class
# under half or over twice its share.
GENERATOR_FLOORS = (Floor("mean_confidence", minimum=0.8), Floor("class_spread", minimum=0.5))


def _classifier(name: str, description: str, floor: Floor, labels: tuple[str, ...] = tuple(DIGIT_LABELS)) -> ModelSpec:
    return ModelSpec(
        name=name,
        task=IMAGE_CLASSIFICATION,
        input_kind="image",
        description=description,
        graphs=(GraphSpec("model.onnx", (_image(),), (_logits(len(labels)),)),),
        floor=floor,
        labels=labels,
        preprocessing=dict(IMAGE_PREPROCESSING),
    )


SPECS: dict[str, ModelSpec] = {
    "cnn": _classifier("cnn", "Small CNN digit classifier.", Floor("accuracy", minimum=0.990)),
    "resnet": _classifier(
        "resnet", "Small ResNet (basic blocks, batch norm) digit classifier.", Floor("accuracy", minimum=0.985)
    ),
    "resnet-int8": _classifier(
        "resnet-int8",
        "resnet quantized by ONNX Runtime static QDQ (U8 activations, S8 per-channel weights).",
        Floor("accuracy", relative_to="resnet", max_drop=0.005),
    ),
    "fashion": _classifier(
        "fashion",
        "Small CNN clothing classifier (Fashion-MNIST).",
        Floor("accuracy", minimum=0.92),
        FASHION_LABELS,
    ),
    "fashion-int8": _classifier(
        "fashion-int8",
        "fashion quantized by ONNX Runtime static QDQ.",
        Floor("accuracy", relative_to="fashion", max_drop=0.005),
        FASHION_LABELS,
    ),
    "sentiment": ModelSpec(
        name="sentiment",
        task=TEXT_CLASSIFICATION,
        input_kind="text",
        description="Character embedding + bidirectional LSTM, beside a hashed character 1-3-gram bag, sentiment classifier (Chinese reviews).",
        graphs=(
            GraphSpec(
                "model.onnx",
                (
                    TensorSpec("tokens", "int64", (-1, -1), "tokens"),
                    TensorSpec("lengths", "int64", (-1,), "lengths"),
                ),
                (_logits(2),),
            ),
        ),
        floor=Floor("accuracy", minimum=0.85),
        labels=("negative", "positive"),
        preprocessing=dict(TEXT_PREPROCESSING),
    ),
    "vae": ModelSpec(
        name="vae",
        task=AUTOENCODER,
        input_kind="latent",
        description=f"Two-stage VAE of digits (a convolutional VAE, and a VAE of its codes), latent size {VAE_LATENT}.",
        graphs=(
            GraphSpec(
                "encoder.onnx",
                (_image(),),
                (
                    TensorSpec("mu", "float32", (-1, VAE_LATENT), "latent"),
                    TensorSpec("logvar", "float32", (-1, VAE_LATENT), "latent"),
                ),
            ),
            GraphSpec(
                "decoder.onnx", (_latent(VAE_LATENT),), (TensorSpec("image", "float32", (-1, 1, 28, 28), "image01"),)
            ),
        ),
        floor=GENERATOR_FLOORS[0],
        also=GENERATOR_FLOORS[1:],
        labels=tuple(DIGIT_LABELS),
        preprocessing=dict(IMAGE_PREPROCESSING, latent_size=VAE_LATENT),
    ),
    "gan": ModelSpec(
        name="gan",
        task=IMAGE_GENERATION,
        input_kind="latent",
        description=f"Conditional DCGAN generator of digits (auxiliary-classifier discriminator), latent size {GAN_LATENT}.",
        graphs=(
            GraphSpec(
                "model.onnx",
                (_latent(GAN_LATENT), TensorSpec("label", "int64", (-1,), "class_index")),
                (TensorSpec("image", "float32", (-1, 1, 28, 28), "image01"),),
            ),
        ),
        floor=GENERATOR_FLOORS[0],
        also=GENERATOR_FLOORS[1:],
        labels=tuple(DIGIT_LABELS),
        preprocessing=dict(IMAGE_PREPROCESSING, latent_size=GAN_LATENT),
    ),
}

# The model a task's endpoints use when a request names none.
DEFAULT_MODEL = {IMAGE_CLASSIFICATION: "cnn", TEXT_CLASSIFICATION: "sentiment", IMAGE_GENERATION: "gan", AUTOENCODER: "vae"}

# The order that satisfies dependencies: an int8 variant quantizes the stored model its floor is
# relative to, the generators are judged by cnn.
EXPORT_ORDER = ["cnn", "resnet", "resnet-int8", "fashion", "fashion-int8", "sentiment", "vae", "gan"]


def sha256_file(path: str) -> str:
    """The checksum stored for every ONNX file, checked again before a model is served."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
