"""One BentoML service serving every model of the registry through the contract of its task.

The registry (service/registry.py) holds the stored models the serving state names, each
version served through the class of its task (service/tasks.py). The typed endpoints below are
the tasks' public API; `/infer/{name}`, `/models`, the Open Inference Protocol (service/v2.py)
and the admin API (service/admin.py) are plain routes over the same registry. No endpoint
names a model: a request picks one with `model` (default: the task's default in modelspec).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from pydantic import Field  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from modelspec import AUTOENCODER, DEFAULT_MODEL, IMAGE_CLASSIFICATION, IMAGE_GENERATION, TEXT_CLASSIFICATION  # noqa: E402
from service import admin, guard, images, inputs, metrics, openapi, patches, state, stats, ui, v2  # noqa: E402
from service.errors import ClientError, answers_client_errors  # noqa: E402
from service.registry import Registry, Route as ModelRoute, check_once  # noqa: E402

WORKERS = int(os.environ.get("MODELSERVE_WORKERS", 1))
ORT_THREADS = int(os.environ.get("MODELSERVE_ORT_THREADS", 1))
GC_YOUNG_THRESHOLD = 10_000
NOOP_ROUTE = os.environ.get("MODELSERVE_NOOP_ROUTE", "").lower() == "true"

# Every limit is in the schema, so the OpenAPI document says what the service takes; integers
# are strict (no "2" for 2, no true for 1). Nullable fields say so (BentoML's document drops the
# null of a union).
OutputFormat = Literal["png", "base64", "array"]
TopK = Annotated[int, Field(ge=1, le=10, strict=True, description="How many labels per item, most probable first")]
Count = Annotated[int, Field(ge=1, le=inputs.MAX_GENERATED, strict=True, description="How many images")]
Seed = Annotated[int, Field(ge=0, le=inputs.MAX_SEED, strict=True)]
Steps = Annotated[int, Field(ge=2, le=32, strict=True, description="Images in the strip, both ends included")]
NULLABLE = {"nullable": True}
Text = Annotated[str, Field(min_length=1, max_length=inputs.MAX_TEXT_CHARS, pattern=r"\S")]
# A class index, or one per image; validated by inputs.class_labels (BentoML's document keeps
# only the first type of a union, so the field carries its own schema).
LABEL_SCHEMA = {"nullable": True, "oneOf": [{"type": "integer", "minimum": 0}, {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}]}

# Decoding and framing an upload (up to 16 megapixels) would stall every other request of the
# worker if it ran on the event loop (MODELSERVE_DECODE_THREADS=0 does that, for the benchmark).
DECODE_THREADS = int(os.environ.get("MODELSERVE_DECODE_THREADS", 2))
DECODE_POOL = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode") if DECODE_THREADS else None


async def off_the_loop(function, *args):
    if DECODE_POOL is None:
        return function(*args)
    return await asyncio.get_running_loop().run_in_executor(DECODE_POOL, function, *args)


check_once()  # a missing, damaged or unloadable model stops `bentoml serve` itself
patches.harden_bentoml()  # before the APIs below are declared: pydantic keeps the validator it sees
patches.trim_middlewares()
patches.listen_per_worker()


def describe(entry, figures: dict | None = None) -> dict:
    """A served model: its default version's metadata, and every loaded version with its role,
    traffic share, sha256, quality metrics and (with `figures`, summed over the workers from
    the metrics files: too slow to read for every model of a listing) its request figures."""
    state = entry.state
    versions = []
    for version, served in entry.versions.items():
        md = served.loaded.metadata
        versions.append({
            "version": version,
            "role": state.role(version),
            "traffic_share": state.share(version),
            "sha256": {name: info["sha256"] for name, info in md.get("onnx_files", {}).items()},
            "metrics": md.get("metrics", {}),
            **(stats.summary(figures.get((entry.name, version), {})) if figures is not None else {}),
        })
    return {**entry.default.loaded.describe(), "tensor_views": list(entry.default.views), "versions": versions}


def generation_classes(served, label, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """The classes a generator is asked for: `label`, or drawn from the seeded generator (after
    the latents, so a seed gives the same images as before) for a conditional graph; None for
    an unconditional one, which refuses a label."""
    classes = inputs.class_labels(label, n, served.spec.labels)
    if not served.conditional:
        if classes is not None:
            raise ClientError("label", f"{served.name} is not a conditional generator: it takes no label", "not_conditional")
        return None
    return classes if classes is not None else rng.integers(0, len(served.spec.labels), n)


async def list_models(request: Request) -> JSONResponse:
    registry = bentoml.get_current_service().registry
    return JSONResponse({"models": [describe(entry) for entry in registry.entries.values()]})


async def one_model(request: Request) -> JSONResponse:
    registry = bentoml.get_current_service().registry
    try:
        entry = registry.entry(request.path_params["name"])
    except ClientError as e:
        return e.response()
    return JSONResponse(describe(entry, stats.collect()))


async def infer_tensor(request: Request) -> Response:
    """POST /infer/{name}: {"<input>": array, ...} -> {"model", "version", "outputs": {"<output>": array}}."""
    registry, name = bentoml.get_current_service().registry, request.path_params["name"]
    try:
        route, view = registry.view(name, request.headers)
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise ClientError("body", "is not JSON", "invalid_json") from None
        if not isinstance(body, dict):
            raise ClientError("body", f"must be a JSON object of inputs {[t.name for t in view.inputs]}", "invalid_input")
        try:
            feeds = route.primary.read_inputs(view, body)
        except ClientError as e:
            metrics.REJECTED.labels(endpoint="infer", model=route.model, version=route.primary.version, reason=e.reason).inc()
            raise
        del body  # the parsed lists, freed before the wait for a batch (as in /classify)
        outputs = await route.call("infer", view.name, feeds)
    except ClientError as e:
        return e.response()
    answer = {"model": view.name, "version": route.primary.version, "outputs": {k: v.tolist() for k, v in outputs.items()}}
    return route.answer(JSONResponse(answer))


# Routes BentoML's typed POST APIs cannot be: GET metadata, any-model tensor routes, the Open
# Inference Protocol, the admin API and the demo page.
plain_routes = Starlette(
    routes=[
        Route("/models", list_models),
        Route("/models/{name}", one_model),
        Route("/infer/{name}", infer_tensor, methods=["POST"]),
        *v2.routes,
        *admin.routes,
        *ui.routes,
    ]
)


@bentoml.asgi_app(plain_routes, path="/")
@bentoml.service(
    name="modelserve",
    description=ui.DESCRIPTION,
    service_class=patches.described_service(),
    workers=WORKERS,
    logging={"access": {"enabled": os.environ.get("MODELSERVE_ACCESS_LOG", "true") == "true"}},
    metrics={"enabled": True, "namespace": "bentoml_service"},
)
class ModelServe:
    def __init__(self) -> None:
        self.registry = Registry(ORT_THREADS)
        watcher = state.Watcher(lambda generation, models: self.registry.apply(models))
        watcher.check_now()  # load what the serving state names before the first request
        watcher.start()
        # What is loaded by now lives as long as the worker: out of the garbage collector's full
        # passes, which would otherwise rescan its ~120,000 objects every ~1,000 requests (60 ms).
        gc.collect()
        gc.freeze()
        # A request's objects die by reference counting: a young pass of the collector only
        # rescans what the requests in progress hold (parsed bodies, futures, frames). At Python's
        # default, a pass every 700 allocations, that was a pass every few requests under load,
        # each freeing nothing; the older generations' passes still collect the rare cycle.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.ready = True

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    def route(self, ctx: bentoml.Context, model: str, task: str) -> ModelRoute:
        if model == DEFAULT_MODEL.get(task):
            model = self.registry.first_of(task, model)
        return self.registry.route(model, task, ctx.request.headers)

    def predictions(self, route: ModelRoute, probabilities: np.ndarray, top_k: int) -> list[list[dict]]:
        served = route.primary
        labels = served.spec.labels
        orders = np.argsort(-probabilities, axis=1)[:, :top_k].tolist()  # one numpy call a request, not a few a row
        found = []
        for row, order in zip(probabilities.tolist(), orders):
            served.predicted(labels[order[0]])
            found.append([{"label": labels[i], "probability": row[i]} for i in order])
        return found

    if NOOP_ROUTE:

        @bentoml.api(route="/noop")
        async def noop(self, images: list = Field(description="Anything; nothing is run"), model: str = "", top_k: int = 3) -> dict:
            """Takes a /classify body and runs nothing: the HTTP ceiling the benchmark measures
            against (served only with MODELSERVE_NOOP_ROUTE=true)."""
            return JSONResponse({"ok": True})

    # Image classification.

    @bentoml.api(route="/classify")
    @answers_client_errors(DEFAULT_MODEL[IMAGE_CLASSIFICATION])
    async def classify(
        self,
        ctx: bentoml.Context,
        images: list = Field(  # not list[list[list]]: array_batch checks the shape, and pydantic's copy of each row costs more
            min_length=1, max_length=inputs.MAX_ITEMS, json_schema_extra={"items": {"type": "array", "items": {"type": "array"}}},
            description="Images in [0, 1]: [N, H, W] (one channel) or [N, C, H, W] at the model's size; digits: 28x28, ink bright",
        ),
        model: str = Field(DEFAULT_MODEL[IMAGE_CLASSIFICATION], description="An image-classification model (GET /models)"),
        top_k: TopK = 3,
    ) -> dict:
        """Classes of a JSON batch of images, top_k labels with probabilities each."""
        route = self.route(ctx, model, IMAGE_CLASSIFICATION)
        pixels = route.primary.pixels_of_json(images)
        # Free the parsed lists (784 Python floats an image) now rather than when BentoML drops
        # the request, after the batch: the memory is reused warm by the next request's parse.
        images.clear()
        probabilities = (await route.call("classify", pixels))["probabilities"]
        answer = {"model": route.model, "version": route.primary.version, "predictions": self.predictions(route, probabilities, top_k)}
        return route.answer(JSONResponse(answer))

    @bentoml.api(route="/classify/image")
    @answers_client_errors(DEFAULT_MODEL[IMAGE_CLASSIFICATION])
    async def classify_image(
        self,
        ctx: bentoml.Context,
        image: Path,
        model: str = Field(DEFAULT_MODEL[IMAGE_CLASSIFICATION], description="An image-classification model (GET /models)"),
        top_k: TopK = 3,
    ) -> dict:
        """Classes of one uploaded image (PNG, JPEG, ...; any size, colour or grey, either
        polarity), made like the model's training images by its stored preprocessing."""
        route = self.route(ctx, model, IMAGE_CLASSIFICATION)
        pixels = await off_the_loop(route.primary.pixels_of_upload, image.read_bytes())
        probabilities = (await route.call("classify", pixels))["probabilities"]
        predictions = self.predictions(route, probabilities, top_k)
        answer = {"model": route.model, "version": route.primary.version, "predictions": predictions, **predictions[0][0]}
        return route.answer(JSONResponse(answer))

    # Text classification.

    @bentoml.api(route="/sentiment")
    @answers_client_errors(DEFAULT_MODEL[TEXT_CLASSIFICATION])
    async def sentiment(
        self,
        ctx: bentoml.Context,
        texts: list[Text] = Field(min_length=1, max_length=inputs.MAX_ITEMS, description="Texts to classify (Chinese product reviews)"),
        model: str = Field(DEFAULT_MODEL[TEXT_CLASSIFICATION], description="A text-classification model (GET /models)"),
    ) -> dict:
        """Label and probability per text."""
        route = self.route(ctx, model, TEXT_CLASSIFICATION)
        probabilities = (await route.call("classify", inputs.texts(texts)))["probabilities"]
        labels = route.primary.spec.labels
        results = []
        for row, (top,) in zip(probabilities.tolist(), self.predictions(route, probabilities, 1)):
            results.append({**top, "probabilities": dict(zip(labels, row))})
        return route.answer(JSONResponse({"model": route.model, "version": route.primary.version, "results": results}))

    # Image generation.

    async def _generated(self, route: ModelRoute, n: int, seed: int | None, output: str, label=None):
        """Images from latents drawn from `seed`: a generator's (with classes, for a conditional
        one), or a variational autoencoder's decoder's."""
        if seed is None:
            seed = secrets.randbits(63)
        rng = inputs.generation(n, seed)
        served = route.primary
        z = rng.standard_normal((n, served.latent.shape[1]), dtype=np.float32)
        about = {"model": route.model, "version": served.version, "seed": seed}
        if served.task == IMAGE_GENERATION:
            classes = generation_classes(served, label, n, rng)
            pictures = (await route.call("generate", z, classes))["images"]
            if classes is not None:
                about["labels"] = [served.spec.labels[i] for i in classes]
        else:
            pictures = (await route.call("decode", z))["images"]
        answer = images.answer(pictures, output, about)
        return route.answer(answer if isinstance(answer, Response) else JSONResponse(answer))

    @bentoml.api(route="/gan/generate")
    @answers_client_errors(DEFAULT_MODEL[IMAGE_GENERATION])
    async def gan_generate(
        self,
        ctx: bentoml.Context,
        n: Count = 16,
        seed: Seed | None = Field(None, json_schema_extra=NULLABLE, description="Same seed, same images; none: a random one, reported"),
        format: OutputFormat = "png",
        label: Any = Field(None, json_schema_extra=LABEL_SCHEMA, description="A class index (e.g. 3), or one per image, for a conditional generator; none: classes drawn at random"),
        model: str = Field(DEFAULT_MODEL[IMAGE_GENERATION], description="An image-generation model (GET /models)"),
    ) -> dict:
        """`n` generated images from `seed` (same seed, same images): a PNG grid, or JSON with
        base64 PNGs or arrays. Without a seed, a random one is drawn and reported."""
        return await self._generated(self.route(ctx, model, IMAGE_GENERATION), n, seed, format, label)

    # The variational autoencoder.

    @bentoml.api(route="/vae/sample")
    @answers_client_errors(DEFAULT_MODEL[AUTOENCODER])
    async def vae_sample(
        self,
        ctx: bentoml.Context,
        n: Count = 16,
        seed: Seed | None = Field(None, json_schema_extra=NULLABLE, description="Same seed, same images; none: a random one, reported"),
        format: OutputFormat = "png",
        model: str = Field(DEFAULT_MODEL[AUTOENCODER], description="A variational-autoencoder model (GET /models)"),
    ) -> dict:
        """`n` images decoded from the prior, like /gan/generate."""
        return await self._generated(self.route(ctx, model, AUTOENCODER), n, seed, format)

    @bentoml.api(route="/vae/reconstruct")
    @answers_client_errors(DEFAULT_MODEL[AUTOENCODER])
    async def vae_reconstruct(
        self,
        ctx: bentoml.Context,
        image: Path,
        model: str = Field(DEFAULT_MODEL[AUTOENCODER], description="A variational-autoencoder model (GET /models)"),
    ) -> dict:
        """Encode and decode an uploaded image. The reconstruction error (mean squared, per
        pixel) is an anomaly score: `relative_error` compares it with the held-out images'."""
        route = self.route(ctx, model, AUTOENCODER)
        x = await off_the_loop(inputs.image_input, image.read_bytes(), route.primary.spec.preprocessing)
        outputs = await route.call("reconstruct", x)
        error = float(np.mean((outputs["reconstruction"] - x) ** 2))
        typical = route.primary.loaded.metadata["metrics"].get("reconstruction_mse")
        return route.answer(JSONResponse({
            "model": route.model,
            "version": route.primary.version,
            "reconstruction_error": error,
            "relative_error": error / typical if typical else None,
            "latent": outputs["latent"][0].tolist(),
            "png": images.base64_png(images.strip(np.concatenate([x, outputs["reconstruction"]]))),
        }))

    @bentoml.api(route="/vae/interpolate")
    @answers_client_errors(DEFAULT_MODEL[AUTOENCODER])
    async def vae_interpolate(
        self,
        ctx: bentoml.Context,
        seed_a: Seed = 0,
        seed_b: Seed = 1,
        steps: Steps = 8,
        model: str = Field(DEFAULT_MODEL[AUTOENCODER], description="A variational-autoencoder model (GET /models)"),
    ) -> Image.Image:
        """A PNG strip decoded along the straight line between the latents of two seeds."""
        route = self.route(ctx, model, AUTOENCODER)
        size = route.primary.latent.shape[1]
        za = inputs.generation(1, seed_a, "seed_a").standard_normal((1, size), dtype=np.float32)
        zb = inputs.generation(1, seed_b, "seed_b").standard_normal((1, size), dtype=np.float32)
        pictures = (await route.call("interpolate", za, zb, steps))["images"]
        return route.answer(Response(images.png(images.strip(pictures)), media_type="image/png"))

    @bentoml.api(route="/vae/interpolate/images")
    @answers_client_errors(DEFAULT_MODEL[AUTOENCODER])
    async def vae_interpolate_images(
        self,
        ctx: bentoml.Context,
        image_a: Path,
        image_b: Path,
        steps: Steps = 8,
        model: str = Field(DEFAULT_MODEL[AUTOENCODER], description="A variational-autoencoder model (GET /models)"),
    ) -> Image.Image:
        """A PNG strip from one uploaded image to another, through the VAE's latent space."""
        route = self.route(ctx, model, AUTOENCODER)
        pre = route.primary.spec.preprocessing
        both = np.concatenate([
            await off_the_loop(inputs.image_input, image_a.read_bytes(), pre, "image_a"),
            await off_the_loop(inputs.image_input, image_b.read_bytes(), pre, "image_b"),
        ])
        pictures = (await route.call("interpolate_images", both, steps))["images"]
        return route.answer(Response(images.png(images.strip(pictures)), media_type="image/png"))


ModelServe.add_asgi_middleware(guard.Guard)
patches.forbid_unknown_fields(ModelServe)
patches.document_answers(ModelServe, {"/gan/generate": ("image/png",), "/vae/sample": ("image/png",)}, openapi.PATHS)
