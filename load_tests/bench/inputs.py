"""The stored models (driven by modelspec) and the request bodies every server is sent."""

from __future__ import annotations

import dataclasses
import io
import json
import os

from load_tests.bench.common import ROOT
from modelspec import DEFAULT_MODEL, IMAGE_CLASSIFICATION, IMAGE_GENERATION, SPECS, TEXT_CLASSIFICATION

CLASSIFIER = DEFAULT_MODEL[IMAGE_CLASSIFICATION]  # the model of /classify, /noop and the peers


def multipart_body(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body: `fields` name -> value, `files` name -> (filename, type, bytes)."""
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content_type, data) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()



class Store:
    """The latest stored version of each model: path, metadata, eval arrays."""

    def __init__(self, names=None):
        import bentoml

        self.models = {name: bentoml.models.get(f"{name}:latest") for name in (names or SPECS)}

    def path(self, name: str, filename: str = "model.onnx") -> str:
        return self.models[name].path_of(filename)

    def metadata(self, name: str) -> dict:
        return self.models[name].info.metadata

    def version(self, name: str) -> str:
        return self.models[name].tag.version

    def eval_arrays(self, name: str):
        import numpy as np

        with np.load(self.path(name, "eval.npz")) as data:
            return {k: data[k] for k in data.files}


@dataclasses.dataclass
class Payloads:
    """The request bodies, and the model inputs the service derives from them."""

    digit: object  # [1, 1, 28, 28] float32: the /classify input as the service parses it
    digit_label: int
    classify_json: bytes
    png: bytes
    image_form: bytes
    image_form_type: str
    review: str
    sentiment_json: bytes
    gan_json: bytes
    gan_seed: int


def make_payloads(store: Store) -> Payloads:
    import numpy as np
    from PIL import Image

    arrays = store.eval_arrays(CLASSIFIER)
    digit = np.round(arrays["x"][0, 0].astype(np.float64), 4)  # one real held-out digit, 28x28
    classify_json = json.dumps({"images": [digit.tolist()], "model": CLASSIFIER, "top_k": 3}).encode()
    buffer = io.BytesIO()
    Image.fromarray(np.round(digit * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    png = buffer.getvalue()
    boundary = "modelserve-bench-boundary"
    form = multipart_body({"model": CLASSIFIER}, {"image": ("digit.png", "image/png", png)}, boundary)
    with open(os.path.join(ROOT, "examples", "reviews.json"), encoding="utf-8") as f:
        review = json.load(f)["texts"][0]
    gan_seed = 7
    return Payloads(
        digit=digit.astype(np.float32)[None, None],
        digit_label=int(arrays["y"][0]),
        classify_json=classify_json,
        png=png,
        image_form=form,
        image_form_type=f"multipart/form-data; boundary={boundary}",
        review=review,
        sentiment_json=json.dumps({"texts": [review]}, ensure_ascii=False).encode(),
        gan_json=json.dumps({"n": 1, "seed": gan_seed, "format": "array"}).encode(),
        gan_seed=gan_seed,
    )


@dataclasses.dataclass(frozen=True)
class Endpoint:
    key: str
    path: str
    body: str  # Payloads attribute
    content_type: str  # or "form": the multipart type
    label: str


ENDPOINTS = [
    Endpoint("noop", "/noop", "classify_json", "application/json", "/noop (no model; /classify body)"),
    Endpoint("classify", "/classify", "classify_json", "application/json", f"/classify {CLASSIFIER} (JSON, 1 digit)"),
    Endpoint("classify_image", "/classify/image", "image_form", "form", f"/classify/image {CLASSIFIER} (PNG upload)"),
    Endpoint("sentiment", "/sentiment", "sentiment_json", "application/json", f"/sentiment {DEFAULT_MODEL[TEXT_CLASSIFICATION]} (1 review)"),
    Endpoint("gan", "/gan/generate", "gan_json", "application/json", f"/gan/generate {DEFAULT_MODEL[IMAGE_GENERATION]} (n=1, array)"),
]
