"""One BentoML service for every stored model, run with ONNX Runtime.

Each graph has a `Batcher` (service/batching.py): public endpoints validate and preprocess a
request, then await their model's batcher, so rows from concurrent requests run as one ONNX
Runtime batch. The `/infer/*` endpoints take model-ready tensors through the same batchers.
"""

from __future__ import annotations

import gc
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Literal

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from bentoml.validators import DType, Shape  # noqa: E402
from pydantic import Field  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from modelspec import EXPORT_ORDER, GAN_LATENT, VAE_LATENT  # noqa: E402
from modelspec.text import encode_batch  # noqa: E402
from service import guard, images, inputs, metrics, overhead, ui, v2  # noqa: E402
from service.batching import Batcher, chain  # noqa: E402
from service.errors import ClientError, answers_client_errors  # noqa: E402
from service.runtime import LoadedModel, ModelLoadError, check_store_once  # noqa: E402

WORKERS = int(os.environ.get("MODELSERVE_WORKERS", 1))
ORT_THREADS = int(os.environ.get("MODELSERVE_ORT_THREADS", 1))
MAX_BATCH = int(os.environ.get("MODELSERVE_MAX_BATCH", 64))
BATCH_WAIT_MS = float(os.environ.get("MODELSERVE_BATCH_WAIT_MS", 0))

# The batchers, named like their /infer/ routes and their V2 models: (stored model, graph).
TENSOR_GRAPHS = {
    "cnn": ("cnn", "model.onnx"),
    "resnet": ("resnet", "model.onnx"),
    "resnet-int8": ("resnet-int8", "model.onnx"),
    "gan": ("gan", "model.onnx"),
    "vae-decoder": ("vae", "decoder.onnx"),
    "vae-encoder": ("vae", "encoder.onnx"),
}

Classifier = Literal["cnn", "resnet", "resnet-int8"]
ImageRows = Annotated[np.ndarray, Shape((-1, 1, 28, 28)), DType("float32")]
VAELatent = Annotated[np.ndarray, Shape((-1, VAE_LATENT)), DType("float32")]
GANLatent = Annotated[np.ndarray, Shape((-1, GAN_LATENT)), DType("float32")]
OutputFormat = Literal["png", "base64", "array"]
# Output shapes, for the OpenAPI document (BentoML documents a bare ndarray as a flat list).
Logits = Annotated[np.ndarray, Shape((-1, 10)), DType("float32")]
Pictures = Annotated[np.ndarray, Shape((-1, 1, 28, 28)), DType("float32")]
Moments = Annotated[np.ndarray, Shape((-1, 2 * VAE_LATENT)), DType("float32")]


def require_stored_models() -> None:
    """Stop at start-up, naming the model and the fix, when a model is not in the store."""
    missing = []
    for name in EXPORT_ORDER:
        try:
            bentoml.models.get(f"{name}:latest")
        except bentoml.exceptions.NotFound:
            missing.append(name)
    if missing:
        store = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise ModelLoadError(f"not in the model store {store}: {', '.join(missing)}; run `make models` (or `python -m export {missing[0]}`)")


require_stored_models()
check_store_once(EXPORT_ORDER)  # a damaged or unloadable model stops `bentoml serve` itself
overhead.trim()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


async def list_models(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse({"models": [loaded.describe() for loaded in service.models.values()]})


async def one_model(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    loaded = service.models.get(request.path_params["name"])
    if loaded is None:
        return ClientError("name", f"no model {request.path_params['name']!r}; see GET /models", "unknown_model", 404).response()
    return JSONResponse(loaded.describe())


# Routes BentoML's POST-only APIs cannot be: GET model metadata (version, metrics, spec,
# preprocessing, sha256) and the Open Inference Protocol.
# The demo page (service/ui.py) too.
plain_routes = Starlette(routes=[Route("/models", list_models), Route("/models/{name}", one_model), *v2.routes, *ui.routes])


@bentoml.asgi_app(plain_routes, path="/")
@bentoml.service(
    name="modelserve",
    description=ui.DESCRIPTION,  # the text atop the OpenAPI page, with its link to the demo page
    service_class=ui.DescribedService,
    workers=WORKERS,
    logging={"access": {"enabled": os.environ.get("MODELSERVE_ACCESS_LOG", "true") == "true"}},
    metrics={"enabled": True, "namespace": "bentoml_service"},
)
class ModelServe:
    cnn_model = bentoml.models.BentoModel("cnn:latest")
    resnet_model = bentoml.models.BentoModel("resnet:latest")
    resnet_int8_model = bentoml.models.BentoModel("resnet-int8:latest")
    sentiment_model = bentoml.models.BentoModel("sentiment:latest")
    vae_model = bentoml.models.BentoModel("vae:latest")
    gan_model = bentoml.models.BentoModel("gan:latest")

    def __init__(self) -> None:
        refs = {
            "cnn": type(self).cnn_model,
            "resnet": type(self).resnet_model,
            "resnet-int8": type(self).resnet_int8_model,
            "sentiment": type(self).sentiment_model,
            "vae": type(self).vae_model,
            "gan": type(self).gan_model,
        }
        self.models: dict[str, LoadedModel] = {}
        for name, ref in refs.items():
            stored = ref.stored
            loaded = LoadedModel.load(name, stored.tag.version, stored.path, stored.info.metadata, ORT_THREADS)
            self.models[name] = loaded
            for info in loaded.metadata["onnx_files"].values():
                metrics.MODEL_INFO.labels(model=name, version=loaded.version, sha256=info["sha256"]).set(1)
        self.batchers = self._batchers()
        self.graph_of = {**TENSOR_GRAPHS, "sentiment": ("sentiment", None)}  # None: it takes texts
        # What is loaded by now lives as long as the worker: out of the garbage collector's full
        # passes, which would otherwise rescan its ~120,000 objects every ~1,000 requests (60 ms).
        gc.collect()
        gc.freeze()
        self.ready = True

    def __is_ready__(self) -> bool:
        return getattr(self, "ready", False)

    def _run(self, name: str, filename: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One executed batch: ONNX Runtime time and rows are recorded per model and version."""
        loaded = self.models[name]
        started = time.perf_counter()
        outputs = loaded.run(filename, feeds)
        metrics.INFERENCE_SECONDS.labels(model=name, version=loaded.version).observe(time.perf_counter() - started)
        metrics.BATCH_ROWS.labels(model=name, version=loaded.version).observe(len(next(iter(feeds.values()))))
        return outputs

    def _batchers(self) -> dict[str, Batcher]:
        """One batcher per graph, named like its /infer/ route."""

        def tensor(name: str, filename: str, input_name: str):
            # Graphs with several outputs (the VAE encoder's mu and logvar) answer them side by side.
            return lambda rows: np.concatenate(self._run(name, filename, {input_name: rows}), axis=1)

        def sentiment(texts: list[str]) -> np.ndarray:
            loaded = self.models["sentiment"]
            tokens, lengths = encode_batch(texts, loaded.vocab, loaded.spec.preprocessing)
            return softmax(self._run("sentiment", "model.onnx", {"tokens": tokens, "lengths": lengths})[0])

        batchers = {
            key: Batcher(key, tensor(model, filename, self.graph(model, filename).inputs[0].name), MAX_BATCH, BATCH_WAIT_MS)
            for key, (model, filename) in TENSOR_GRAPHS.items()
        }
        batchers["sentiment"] = Batcher("sentiment", sentiment, MAX_BATCH, BATCH_WAIT_MS, join=chain)
        return batchers

    def graph(self, model: str, filename: str):
        return next(g for g in self.models[model].spec.graphs if g.filename == filename)

    # Tensor endpoints: model-ready rows in, raw outputs out, through the same batchers.

    @bentoml.api(route="/infer/cnn")
    @answers_client_errors("infer_cnn", model="cnn")
    async def infer_cnn(self, images: ImageRows) -> Logits:
        """Logits [N, 10] of `cnn` for images [N, 1, 28, 28] in [0, 1]."""
        return JSONResponse((await self.batchers["cnn"](inputs.image_rows(images))).tolist())

    @bentoml.api(route="/infer/resnet")
    @answers_client_errors("infer_resnet", model="resnet")
    async def infer_resnet(self, images: ImageRows) -> Logits:
        """Logits [N, 10] of `resnet`."""
        return JSONResponse((await self.batchers["resnet"](inputs.image_rows(images))).tolist())

    @bentoml.api(route="/infer/resnet-int8")
    @answers_client_errors("infer_resnet_int8", model="resnet-int8")
    async def infer_resnet_int8(self, images: ImageRows) -> Logits:
        """Logits [N, 10] of `resnet-int8`."""
        return JSONResponse((await self.batchers["resnet-int8"](inputs.image_rows(images))).tolist())

    @bentoml.api(route="/infer/sentiment")
    @answers_client_errors("infer_sentiment", model="sentiment")
    async def infer_sentiment(self, texts: list[str]) -> list[list[float]]:
        """Class probabilities [negative, positive] per text; a batch is right-padded to its
        longest text, which the model ignores."""
        return JSONResponse((await self.batchers["sentiment"](inputs.texts(texts))).tolist())

    @bentoml.api(route="/infer/gan")
    @answers_client_errors("infer_gan", model="gan")
    async def infer_gan(self, z: GANLatent) -> Pictures:
        """Images [N, 1, 28, 28] from latents [N, GAN_LATENT]."""
        return JSONResponse((await self.batchers["gan"](inputs.latent_rows(z))).tolist())

    @bentoml.api(route="/infer/vae-decoder")
    @answers_client_errors("infer_vae_decoder", model="vae")
    async def infer_vae_decoder(self, z: VAELatent) -> Pictures:
        """Images [N, 1, 28, 28] from latents [N, VAE_LATENT]."""
        return JSONResponse((await self.batchers["vae-decoder"](inputs.latent_rows(z))).tolist())

    @bentoml.api(route="/infer/vae-encoder")
    @answers_client_errors("infer_vae_encoder", model="vae")
    async def infer_vae_encoder(self, images: ImageRows) -> Moments:
        """[mu | logvar] as one [N, 2 * VAE_LATENT] array for images [N, 1, 28, 28]."""
        return JSONResponse((await self.batchers["vae-encoder"](inputs.image_rows(images))).tolist())

    @bentoml.api(route="/noop")
    async def noop(self, images: list = Field(description="Anything; nothing is run"), model: str = "cnn", top_k: int = 3) -> dict:
        """Takes a /classify body and runs nothing: the HTTP ceiling the benchmark measures against."""
        return JSONResponse({"ok": True})

    # Public endpoints.

    async def _classify_rows(self, model: str, rows: np.ndarray, top_k: int) -> dict:
        probabilities = softmax(await self.batchers[model](rows))
        loaded = self.models[model]
        labels = loaded.spec.labels
        predictions = []
        for row in probabilities:
            order = np.argsort(-row)[:top_k]
            metrics.PREDICTIONS.labels(model=model, version=loaded.version, label=labels[order[0]]).inc()
            predictions.append([{"label": labels[i], "probability": float(row[i])} for i in order])
        return {"model": model, "version": loaded.version, "predictions": predictions}

    @bentoml.api(route="/classify")
    @answers_client_errors("classify")
    async def classify(
        self,
        images: list = Field(description="Model-ready images: [N, 28, 28] or [N, 1, 28, 28], values in [0, 1], ink bright"),
        model: Classifier = "cnn",
        top_k: Annotated[int, Field(ge=1, le=10)] = 3,
    ) -> dict:
        """Digit classes of a JSON batch of 28x28 arrays, top_k labels with probabilities each."""
        size = self.models[model].spec.preprocessing["size"]
        return JSONResponse(await self._classify_rows(model, inputs.array_batch(images, size), top_k))

    @bentoml.api(route="/classify/image")
    @answers_client_errors("classify_image")
    async def classify_image(
        self, image: Path, model: Classifier = "cnn", top_k: Annotated[int, Field(ge=1, le=10)] = 3
    ) -> dict:
        """Digit classes of one uploaded image (PNG, JPEG, ...; any size, colour or grey, either polarity)."""
        rows = inputs.image_input(image.read_bytes(), self.models[model].spec.preprocessing)
        answer = await self._classify_rows(model, rows, top_k)
        return JSONResponse({**answer, **answer["predictions"][0][0]})

    @bentoml.api(route="/sentiment")
    @answers_client_errors("sentiment", model="sentiment")
    async def sentiment(self, texts: list[str] = Field(description="Texts to classify (Chinese product reviews)")) -> dict:
        """Sentiment label and probability per text."""
        loaded = self.models["sentiment"]
        probabilities = (await self.batchers["sentiment"](inputs.texts(texts))).tolist()
        results = []
        for row in probabilities:
            best = int(np.argmax(row))
            label = loaded.spec.labels[best]
            metrics.PREDICTIONS.labels(model="sentiment", version=loaded.version, label=label).inc()
            results.append({"label": label, "probability": row[best], "probabilities": dict(zip(loaded.spec.labels, row))})
        return JSONResponse({"model": "sentiment", "version": loaded.version, "results": results})

    async def _generated(self, name: str, decoder: str, latent_size: int, n: int, seed: int | None, output: str):
        if seed is None:
            seed = secrets.randbits(63)
        rng = inputs.generation(n, seed)
        z = rng.standard_normal((n, latent_size), dtype=np.float32)
        pictures = await self.batchers[decoder](z)
        return images.answer(pictures, output, {"model": name, "version": self.models[name].version, "seed": seed})

    @bentoml.api(route="/gan/generate")
    @answers_client_errors("gan_generate", model="gan")
    async def gan_generate(
        self, n: int = 16, seed: int | None = None, format: OutputFormat = "png"
    ) -> dict:
        """`n` generated digits from `seed` (same seed, same images): a PNG grid, or JSON with
        base64 PNGs or arrays. Without a seed, a random one is drawn and reported."""
        return await self._generated("gan", "gan", GAN_LATENT, n, seed, format)

    @bentoml.api(route="/vae/sample")
    @answers_client_errors("vae_sample", model="vae")
    async def vae_sample(self, n: int = 16, seed: int | None = None, format: OutputFormat = "png") -> dict:
        """`n` digits decoded from the VAE's prior, like /gan/generate."""
        return await self._generated("vae", "vae-decoder", VAE_LATENT, n, seed, format)

    @bentoml.api(route="/vae/reconstruct")
    @answers_client_errors("vae_reconstruct", model="vae")
    async def vae_reconstruct(self, image: Path) -> dict:
        """Encode and decode an uploaded digit. The reconstruction error (mean squared, per
        pixel) is an anomaly score: `relative_error` compares it with the held-out digits'."""
        loaded = self.models["vae"]
        x = inputs.image_input(image.read_bytes(), loaded.spec.preprocessing)
        mu = (await self.batchers["vae-encoder"](x))[:, :VAE_LATENT]
        reconstruction = await self.batchers["vae-decoder"](mu)
        error = float(np.mean((reconstruction - x) ** 2))
        typical = loaded.metadata["metrics"].get("reconstruction_mse")
        return JSONResponse({
            "model": "vae",
            "version": loaded.version,
            "reconstruction_error": error,
            "relative_error": error / typical if typical else None,
            "latent": mu[0].tolist(),
            "png": images.base64_png(images.strip(np.concatenate([x, reconstruction]))),
        })

    @bentoml.api(route="/vae/interpolate")
    @answers_client_errors("vae_interpolate", model="vae")
    async def vae_interpolate(
        self, seed_a: int = 0, seed_b: int = 1, steps: Annotated[int, Field(ge=2, le=32)] = 8
    ) -> Image.Image:
        """A PNG strip decoded along the straight line between the latents of two seeds."""
        za = inputs.generation(1, seed_a, "seed_a").standard_normal((1, VAE_LATENT), dtype=np.float32)
        zb = inputs.generation(1, seed_b, "seed_b").standard_normal((1, VAE_LATENT), dtype=np.float32)
        return await self._interpolate(za, zb, steps)

    @bentoml.api(route="/vae/interpolate/images")
    @answers_client_errors("vae_interpolate_images", model="vae")
    async def vae_interpolate_images(
        self, image_a: Path, image_b: Path, steps: Annotated[int, Field(ge=2, le=32)] = 8
    ) -> Image.Image:
        """A PNG strip from one uploaded digit to another, through the VAE's latent space."""
        pre = self.models["vae"].spec.preprocessing
        both = np.concatenate([inputs.image_input(image_a.read_bytes(), pre, "image_a"), inputs.image_input(image_b.read_bytes(), pre, "image_b")])
        mu = (await self.batchers["vae-encoder"](both))[:, :VAE_LATENT]
        return await self._interpolate(mu[:1], mu[1:], steps)

    async def _interpolate(self, za: np.ndarray, zb: np.ndarray, steps: int) -> Response:
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        pictures = await self.batchers["vae-decoder"]((1 - t) * za + t * zb)
        return Response(images.png(images.strip(pictures)), media_type="image/png")


ModelServe.add_asgi_middleware(guard.Guard)
