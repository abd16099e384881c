"""Hardening: hostile input, the request limits, overload and faults, API keys.

- The guard (service/guard.py) in-process, on a toy ASGI app: every branch, no server.
- Hostile requests against the shared `server` (2 workers, default limits): each answers the
  documented 4xx JSON body or a correct answer, never a 5xx, and the next good request works.
- schemathesis, on the server's own OpenAPI document.
- `tight`: one dedicated server (1 worker) with small limits and API keys, for 401/413/429/504,
  a burst, and a worker killed with SIGKILL.
- `bentoml serve` on damaged copies of the test store: it must exit non-zero, naming the model.
- The serving code unpickles and evaluates nothing.

`load_tests/soak.py` (`make soak`) is the long run; `test_soak` runs it only with `-m slow`.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from conftest import ROOT, _scratch
from load_tests import server as launcher
from load_tests import soak
from modelspec import sha256_file
from modelspec.image import frame_like_training, grey_pixels, light_on_dark
from service import errors, guard
from test_service import ZERO_IMAGE, Local, png_of, post, softmax

TIMEOUT = 30
JSON = {"content-type": "application/json"}


def good_request_works(url: str, headers: dict | None = None) -> None:
    answer = requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text


def assert_error(answer: requests.Response, status: int, reason: str | None = None, field: str | None = None) -> dict:
    assert answer.status_code == status, answer.text[:500]
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert isinstance(body["error"], str) and isinstance(body["detail"], str) and "field" in body, body
    if reason is not None:
        assert body["error"] == reason, body
    if field is not None:
        assert body["field"] == field, body
    return body


# The guard in-process: a toy application behind it, raw ASGI messages.


class Toy:
    """An ASGI app that reads its whole body, then (for POST requests) waits for `release` if
    set, then answers 200 (or `status`) with the body length; it records what happened."""

    def __init__(self, status: int = 200, body: bytes | None = None, content_type: bytes = b"application/json"):
        self.status, self.body, self.content_type = status, body, content_type
        self.calls = 0
        self.chunks_read = 0
        self.cancelled = False
        self.release: asyncio.Event | None = None

    async def __call__(self, scope, receive, send):
        self.calls += 1
        size = 0
        try:
            while True:
                message = await receive()
                self.chunks_read += 1
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            if self.release is not None and scope["method"] == "POST":
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        body = self.body if self.body is not None else json.dumps({"size": size}).encode()
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"content-type", self.content_type)]})
        await send({"type": "http.response.body", "body": body})


async def exchange(app, path="/classify", headers=None, chunks=(b"{}",), method="POST"):
    """(status, headers, body) of one request; `chunks` arrive as a streamed body."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await app({"type": "http", "method": method, "path": path, "headers": raw}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


def run(coroutine):
    return asyncio.run(coroutine)


def test_guard_answers_413_on_content_length_without_reading_the_body():
    toy = Toy()
    app = guard.Guard(toy, guard.Settings(max_body_bytes=1000))
    status, headers, body = run(exchange(app, headers={"Content-Length": "1001"}, chunks=(b"x" * 1001,)))
    assert status == 413 and toy.calls == 0
    assert json.loads(body) == {"error": "body_too_large", "detail": "body: more than the limit of 1000 bytes", "field": "body"}
    assert headers["connection"] == "close"
    assert run(exchange(app, headers={"Content-Length": "1000"}, chunks=(b"x" * 1000,)))[0] == 200


def test_guard_counts_a_streamed_body_and_stops_at_the_limit():
    toy = Toy()
    app = guard.Guard(toy, guard.Settings(max_body_bytes=5000))
    status, _, body = run(exchange(app, chunks=[b"x" * 1000] * 50))
    assert status == 413 and json.loads(body)["error"] == "body_too_large"
    assert toy.chunks_read <= 5, "the body was read past the limit"
    assert run(exchange(app, chunks=[b"x" * 1000] * 5))[0] == 200


def test_guard_answers_429_at_once_beyond_the_concurrency_limit_and_exempts_health():
    async def scenario():
        toy = Toy()
        toy.release = asyncio.Event()
        app = guard.Guard(toy, guard.Settings(max_concurrency=2))
        held = [asyncio.create_task(exchange(app)) for _ in range(2)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        refused = await exchange(app)
        took = time.monotonic() - started
        health = [await asyncio.wait_for(exchange(app, path=p, method="GET"), 1) for p in ("/readyz", "/livez", "/healthz", "/metrics")]
        other = await exchange(app, path="/models", method="GET")
        toy.release.set()
        first = await asyncio.gather(*held)
        after = await exchange(app)
        return refused, took, health, other, first, after, app.active

    refused, took, health, other, first, after, active = run(scenario())
    status, headers, body = refused
    assert status == 429 and headers["retry-after"] == "1" and took < 1
    assert json.loads(body)["error"] == "overloaded" and json.loads(body)["field"] is None
    assert [h[0] for h in health] == [200] * 4, "health and /metrics are exempt from the limit"
    assert other[0] == 429
    assert [f[0] for f in first] == [200, 200] and after[0] == 200 and active == 0


def test_guard_bounds_the_request_bytes_a_worker_holds():
    budget = 1000

    async def scenario():
        toy = Toy()
        toy.release = asyncio.Event()
        app = guard.Guard(toy, guard.Settings(max_inflight_bytes=budget))
        held = [asyncio.create_task(exchange(app, headers={"Content-Length": "400"}, chunks=(b"x" * 400,))) for _ in range(2)]
        await asyncio.sleep(0.05)
        declared = await exchange(app, headers={"Content-Length": "400"}, chunks=(b"x" * 400,))
        streamed = await exchange(app, chunks=(b"x" * 150,) * 2)  # no length: counted as it arrives
        small = asyncio.create_task(exchange(app, headers={"Content-Length": "100"}, chunks=(b"x" * 100,)))
        await asyncio.sleep(0.05)
        toy.release.set()
        done = await asyncio.gather(*held, small)
        after = await exchange(app, headers={"Content-Length": "900"}, chunks=(b"x" * 900,))
        return declared, streamed, done, after, app.inflight_bytes, app.active

    declared, streamed, done, after, inflight, active = run(scenario())
    assert declared[0] == 429 and declared[1]["retry-after"] == "1" and json.loads(declared[2])["error"] == "overloaded"
    assert streamed[0] == 429, "a chunked body past the budget"
    assert [d[0] for d in done] == [200, 200, 200] and after[0] == 200
    assert inflight == 0 and active == 0
    alone = run(exchange(guard.Guard(Toy(), guard.Settings(max_inflight_bytes=budget)), headers={"Content-Length": "5000"}, chunks=(b"x" * 5000,)))
    assert alone[0] == 200, "a request alone in its worker is bounded by the body limit only"


def test_guard_answers_504_when_the_app_is_too_slow_and_cancels_it():
    async def scenario():
        toy = Toy()
        toy.release = asyncio.Event()  # never set
        app = guard.Guard(toy, guard.Settings(request_timeout_s=0.2))
        answer = await exchange(app)
        return toy, answer, app.active

    toy, (status, headers, body), active = run(scenario())
    assert status == 504 and toy.cancelled and active == 0
    assert json.loads(body) == {"error": "timeout", "detail": "no answer within 0.2 s", "field": None}


KEYS = ("alpha-key-0001", "beta-key-0002", "gamma-key-0003")


@pytest.mark.parametrize("protect_metrics", [False, True])
def test_guard_api_keys(protect_metrics):
    app = guard.Guard(Toy(), guard.Settings(api_keys=KEYS, protect_metrics=protect_metrics))

    def status(path, authorization=None, method="POST"):
        headers = {"Authorization": authorization} if authorization is not None else {}
        return run(exchange(app, path=path, headers=headers, method=method))

    for bad in (None, "", "Bearer", "Bearer nope", "Basic YWxwaGEta2V5LTAwMDE=", f"Bearer {KEYS[0]}x", f"Token {KEYS[0]}"):
        code, headers, body = status("/classify", bad)
        assert code == 401 and headers["www-authenticate"].startswith("Bearer"), bad
        assert json.loads(body)["error"] == "unauthorized" and json.loads(body)["field"] == "Authorization"
    for key in KEYS:
        assert status("/classify", f"Bearer {key}")[0] == 200
        assert status("/classify", f"bearer  {key} ")[0] == 200
    for path in ("/models", "/models/cnn", "/infer/cnn", "/v2/models/cnn/infer", "/anything"):
        assert status(path, method="GET")[0] == 401, path
    for path in ("/livez", "/readyz", "/healthz", "/v2/health/live", "/", "/docs.json", "/static_content/x.css"):
        assert status(path, method="GET")[0] == 200, path
    assert status("/metrics", method="GET")[0] == (401 if protect_metrics else 200)
    assert status("/metrics", f"Bearer {KEYS[2]}", method="GET")[0] == 200


def test_guard_admin_routes_take_admin_keys_only():
    client, admin = ("client-key-1",), ("admin-key-1",)

    def status(app, path, key=None, method="PUT"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        code, _, body = run(exchange(app, path=path, headers=headers, method=method))
        return code, json.loads(body).get("error")

    closed = guard.Guard(Toy(), guard.Settings(api_keys=client))
    for path in ("/admin/models/cnn", "/admin/models", "/v2/repository/index", "/v2/repository/models/cnn/load"):
        assert status(closed, path, client[0]) == (403, "admin_disabled"), path
    both = guard.Guard(Toy(), guard.Settings(api_keys=client, admin_keys=admin))
    assert status(both, "/admin/models/cnn") == (401, "unauthorized")
    assert status(both, "/admin/models/cnn", client[0]) == (401, "unauthorized")
    assert status(both, "/admin/models/cnn", admin[0])[0] == 200
    assert status(both, "/v2/repository/index", admin[0], "POST")[0] == 200
    assert status(both, "/classify", admin[0], "POST") == (401, "unauthorized")
    assert status(both, "/classify", client[0], "POST")[0] == 200
    settings = guard.Settings.from_env({"MODELSERVE_ADMIN_KEYS": "a1, a2", "MODELSERVE_API_KEYS": "c1"})
    assert settings.admin_keys == ("a1", "a2") and settings.api_keys == ("c1",)
    with pytest.raises(guard.GuardConfigError, match="MODELSERVE_ADMIN_KEYS"):
        guard.Settings.from_env({"MODELSERVE_ADMIN_KEYS": " , "})


def test_guard_compares_the_presented_key_with_every_key(monkeypatch):
    calls = []
    real = guard.hmac.compare_digest
    monkeypatch.setattr(guard.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    app = guard.Guard(Toy(), guard.Settings(api_keys=KEYS))
    for presented in (KEYS[0], KEYS[2], "wrong"):
        calls.clear()
        run(exchange(app, headers={"Authorization": f"Bearer {presented}"}))
        assert len(calls) == len(KEYS), "an early exit would tell which key matched by the time taken"


def test_guard_settings_from_the_environment(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# one key a line\nfile-key-1\n\n  file-key-2  \n")
    settings = guard.Settings.from_env(
        {
            "MODELSERVE_API_KEYS": " env-key-1, ,env-key-2",
            "MODELSERVE_API_KEYS_FILE": str(keys_file),
            "MODELSERVE_MAX_BODY_BYTES": "2048",
            "MODELSERVE_MAX_CONCURRENCY": "0",
            "MODELSERVE_REQUEST_TIMEOUT_S": "2.5",
            "MODELSERVE_PROTECT_METRICS": "true",
        }
    )
    assert settings.api_keys == ("env-key-1", "env-key-2", "file-key-1", "file-key-2")
    assert (settings.max_body_bytes, settings.max_concurrency, settings.request_timeout_s, settings.protect_metrics) == (2048, 0, 2.5, True)
    assert "key" not in repr(settings).replace("api_keys", "")
    defaults = guard.Settings.from_env({})
    assert (defaults.max_body_bytes, defaults.max_concurrency, defaults.request_timeout_s, defaults.api_keys) == (10 * 2**20, 128, 30.0, ())
    for bad in (
        {"MODELSERVE_API_KEYS": " , "},
        {"MODELSERVE_API_KEYS_FILE": str(tmp_path / "missing")},
        {"MODELSERVE_MAX_BODY_BYTES": "ten"},
        {"MODELSERVE_MAX_BODY_BYTES": "0"},
        {"MODELSERVE_REQUEST_TIMEOUT_S": "-1"},
        {"MODELSERVE_PROTECT_METRICS": "maybe"},
    ):
        with pytest.raises(guard.GuardConfigError):
            guard.Settings.from_env(bad)


def test_guard_gives_every_error_answer_one_shape():
    pydantic = {"error": "2 validation errors for Input", "detail": [
        {"type": "missing", "loc": ["texts", 0], "msg": "Field required"}, {"type": "int_type", "loc": ["n"], "msg": "bad"}]}
    body = errors.normalized_error(400, json.dumps(pydantic).encode(), "application/json")
    assert body["error"] == "invalid_input" and body["field"] == "texts[0]" and body["errors"] == pydantic["detail"]
    assert body["detail"] == "texts[0]: Field required; n: bad"
    broken = {"error": "1 validation error", "detail": [{"type": "json_invalid", "loc": [], "msg": "Invalid JSON"}]}
    assert errors.normalized_error(400, json.dumps(broken).encode(), "application/json")["error"] == "invalid_json"
    assert errors.normalized_error(415, b'[{"error": "nope"}]', "application/json") == {"error": "unsupported_media_type", "detail": "nope", "field": None}
    assert errors.normalized_error(404, b"Not Found", "text/plain") == {"error": "not_found", "detail": "Not Found", "field": None}
    assert errors.normalized_error(500, b'{"error": "An unexpected error has occurred"}', "application/json")["error"] == "internal_error"
    ours = {"error": "bad_shape", "detail": "images: no", "field": "images"}
    assert errors.normalized_error(400, json.dumps(ours).encode(), "application/json") is None

    async def through_guard():
        app = guard.Guard(Toy(status=405, body=b"Method Not Allowed", content_type=b"text/plain"))
        plain = await exchange(app)
        v2 = await exchange(guard.Guard(Toy(status=404, body=b'{"error": "no model"}')), path="/v2/models/x/infer")
        return plain, v2

    (status, headers, body), v2 = run(through_guard())
    assert status == 405 and headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"error": "method_not_allowed", "detail": "Method Not Allowed", "field": None}
    assert json.loads(v2[2]) == {"error": "no model"}, "Open Inference Protocol errors keep that protocol's shape"


# Hostile requests on the shared server.


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, row=lambda y: b"", rows: int | None = None) -> bytes:
    """An 8-bit grey PNG written row by row (no width x height array in memory); `row(y)` gives
    the bytes of row y (zeros if short); `rows` < height leaves the image data short."""
    squeeze = zlib.compressobj(9)
    blank = bytes(width)
    data = []
    for y in range(height if rows is None else rows):
        pixels = row(y) or blank
        data.append(squeeze.compress(b"\x00" + pixels))
    data.append(squeeze.flush())
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", b"".join(data)) + png_chunk(b"IEND", b"")


def encoded(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit(smoke_store):
    """(grey dark-on-light picture, its true label, the margin of the top probability): the
    held-out digit the smoke `cnn` gets right by the widest margin through the upload path."""
    local = Local(smoke_store["cnn"].tag)
    with np.load(local.model.path_of("eval.npz")) as data:
        rows, labels = data["x"][:60], data["y"][:60]
    best = None
    for pixels, label in zip(rows, labels):
        with Image.open(io.BytesIO(png_of(pixels[0]))) as picture:
            x = frame_like_training(light_on_dark(grey_pixels(picture)), local.spec.preprocessing)
        p = softmax(local.run("model.onnx", {"image": x})[0])[0]
        top = np.sort(p)
        if int(np.argmax(p)) == int(label) and (best is None or top[-1] - top[-2] > best[0]):
            best = (top[-1] - top[-2], pixels[0], int(label))
    assert best is not None, "the smoke cnn gets none of 60 held-out uploads right"
    with Image.open(io.BytesIO(png_of(best[1]))) as picture:
        return picture.convert("L"), best[2], float(best[0])


def in_modes(grey: Image.Image) -> dict[str, tuple[bytes, bool]]:
    """The same digit in other image modes: name -> (file, lossless)."""
    ink = Image.eval(grey, lambda v: 255 - v)
    transparent = Image.merge("RGBA", [Image.new("L", grey.size, 0)] * 3 + [ink])  # black ink, alpha = ink
    palette = grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    other = Image.eval(grey, lambda v: 255 - v).rotate(90)
    return {
        "RGBA, transparent background": (encoded(transparent, "PNG"), True),
        "LA": (encoded(grey.convert("LA"), "PNG"), True),
        "palette": (encoded(palette, "PNG"), True),
        "16-bit grey": (encoded(Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257), "PNG"), True),
        "CMYK TIFF": (encoded(grey.convert("CMYK"), "TIFF"), True),
        "CMYK JPEG": (encoded(grey.convert("CMYK"), "JPEG", quality=95), False),
        "animated GIF (first frame)": (encoded(grey, "GIF", save_all=True, append_images=[other, grey], duration=100, loop=0), True),
    }


def test_uploads_in_other_modes_are_converted_and_give_the_right_digit(server, digit):
    """Lossless files of the digit in other modes are read as exactly the same pixels as its grey
    PNG: same label, same probability. The lossy CMYK JPEG must give the same label where the
    model's margin allows it (a smoke-trained cnn's margins can be thinner than JPEG noise)."""
    grey, label, margin = digit
    reference = post(server, "/classify/image", files={"image": ("d.png", encoded(grey, "PNG"), "image/png")})
    assert reference.status_code == 200 and reference.json()["label"] == str(label), reference.text
    for mode, (upload, lossless) in in_modes(grey).items():
        answer = post(server, "/classify/image", files={"image": ("digit", upload, "application/octet-stream")})
        assert answer.status_code == 200, f"{mode}: {answer.text}"
        if lossless:
            assert answer.json()["label"] == str(label), mode
            assert answer.json()["probability"] == pytest.approx(reference.json()["probability"], abs=1e-6), mode
        elif margin > 0.05:
            assert answer.json()["label"] == str(label), mode


DEEP = "[" * 10_000 + "]" * 10_000
BOMB = grey_png(50_000, 50_000, rows=64)  # 2.5e9 pixels in a few hundred bytes
NAN_ROWS = '{"image": [[%s]]}' % json.dumps([[float("nan")] * 28] * 28)


def pickled_file_creator(path: str) -> bytes:
    class Creates:
        def __reduce__(self):
            return (open, (path, "w"))

    return pickle.dumps(Creates())


def hostile_requests():
    """(name, path, requests kwargs, status, error code, field) for a 4xx."""
    truncated = encoded(Image.new("L", (64, 64), 255), "PNG")  # also a blank picture, whole
    jpeg = encoded(Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)), "JPEG")
    upload = lambda name, data: {"files": {"image": (name, data, "image/png")}}  # noqa: E731
    return [
        ("PNG cut after its header", "/classify/image", upload("x.png", truncated[:40]), 400, "not_an_image", "image"),
        ("PNG cut in its image data", "/classify/image", upload("x.png", truncated[: len(truncated) // 2]), 400, "bad_image", "image"),
        ("JPEG cut in half", "/classify/image", upload("x.jpg", jpeg[: len(jpeg) // 2]), 400, "bad_image", "image"),
        ("0-byte upload to /vae/reconstruct", "/vae/reconstruct", upload("x.png", b""), 400, "empty_upload", "image"),
        ("text named .png as image_b", "/vae/interpolate/images",
         {"files": {"image_a": ("a.png", encoded(Image.fromarray((np.eye(32) * 255).astype(np.uint8)), "PNG"), "image/png"),
                    "image_b": ("b.png", b"hello, not a picture", "image/png")}},
         400, "not_an_image", "image_b"),
        ("decompression bomb: 50000 x 50000 in %d bytes" % len(BOMB), "/classify/image", upload("bomb.png", BOMB), 400, "image_too_large", "image"),
        ("10,000 x 10,000 image", "/classify/image", upload("big.png", grey_png(10_000, 10_000)), 400, "image_too_large", "image"),
        ("text of 1e6 characters", "/sentiment", {"json": {"texts": ["好" * 10**6]}}, 400, "text_too_long", "texts[0]"),
        ("text of 1e6 characters, tensor endpoint", "/infer/sentiment", {"json": {"text": ["a", "好" * 10**6]}}, 400, "text_too_long", "text[1]"),
        ("lone surrogate \\ud800", "/sentiment", {"data": b'{"texts": ["ok \\ud800"]}', "headers": JSON}, 400, "invalid_json", "body"),
        ("JSON nested 10,000 deep", "/classify", {"data": '{"images": %s}' % DEEP, "headers": JSON}, 400, "invalid_json", "body"),
        ("JSON nested 10,000 deep, tensor endpoint", "/infer/cnn", {"data": '{"image": %s}' % DEEP, "headers": JSON}, 400, "invalid_json", "body"),
        ("form field nested 10,000 deep", "/classify/image", {"files": {"image": ("x.png", truncated, "image/png")}, "data": {"top_k": DEEP}}, 400, "too_deep", "top_k"),
        ("n negative", "/vae/sample", {"json": {"n": -3}}, 400, "n_out_of_range", "n"),
        ("n huge", "/gan/generate", {"json": {"n": 10**30}}, 400, "n_out_of_range", "n"),
        ("n 1e400", "/gan/generate", {"data": b'{"n": 1e400}', "headers": JSON}, 400, "invalid_input", "n"),
        ("seed of 200 bits", "/vae/sample", {"json": {"seed": 2**200}}, 400, "seed_out_of_range", "seed"),
        ("seed of 5,000 digits", "/gan/generate", {"data": '{"seed": %s}' % ("9" * 5000), "headers": JSON}, 400, "invalid_json", "body"),
        ("seed_a beyond 64 bits", "/vae/interpolate", {"json": {"seed_a": 2**70}}, 400, "seed_out_of_range", "seed_a"),
        ("Infinity in /classify", "/classify", {"data": '{"images": [%s]}' % json.dumps([[float("inf")] * 28] * 28), "headers": JSON}, 400, "not_finite", "images"),
        ("-Infinity in /classify", "/classify", {"data": '{"images": [%s]}' % json.dumps([[-float("inf")] * 28] * 28), "headers": JSON}, 400, "not_finite", "images"),
        ("NaN in /infer/cnn", "/infer/cnn", {"data": NAN_ROWS, "headers": JSON}, 400, "not_finite", "image"),
        ("NaN in /infer/resnet", "/infer/resnet", {"data": NAN_ROWS, "headers": JSON}, 400, "not_finite", "image"),
        ("NaN in /infer/resnet-int8", "/infer/resnet-int8", {"data": NAN_ROWS, "headers": JSON}, 400, "not_finite", "image"),
        ("NaN in /infer/vae-encoder", "/infer/vae-encoder", {"data": NAN_ROWS, "headers": JSON}, 400, "not_finite", "image"),
        ("JSON objects in a tensor", "/infer/gan", {"json": {"z": [{"a": 1}, {"b": []}], "label": [0, 1]}}, 400, "bad_array", "z"),
        ("Infinity in /infer/gan", "/infer/gan", {"data": '{"z": [%s], "label": [0]}' % json.dumps([float("inf")] * 100), "headers": JSON}, 400, "not_finite", "z"),
        ("NaN in /infer/vae-decoder", "/infer/vae-decoder", {"data": '{"z": [%s]}' % json.dumps([float("nan")] * 16), "headers": JSON}, 400, "not_finite", "z"),
        ("values past 1 in /infer/resnet", "/infer/resnet", {"json": {"image": [[[[1e38] * 28] * 28]]}}, 400, "out_of_range", "image"),
        ("no rows for /infer/cnn", "/infer/cnn", {"json": {"image": []}}, 400, "bad_shape", "image"),
        ("no texts for /infer/sentiment (crashed the worker)", "/infer/sentiment", {"json": {"text": []}}, 400, "empty", "text"),
        ("pickle body", "/classify", {"data": pickle.dumps({"images": []}), "headers": {"content-type": "application/vnd.bentoml+pickle"}}, 415, "unsupported_media_type", "Content-Type"),
        ("XML body", "/classify", {"data": "<images/>", "headers": {"content-type": "application/xml"}}, 400, "invalid_json", "body"),
        ("JSON to an upload endpoint", "/classify/image", {"json": {"image": "x.png"}}, 400, "invalid_input", "image"),
        ("a URL instead of a file", "/classify/image", {"data": {"image": "http://127.0.0.1:9/x.png"}}, 400, "not_a_file", "image"),
        ("multipart without a boundary", "/classify/image", {"data": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_form", "body"),
        ("unknown route", "/nope", {"json": {}}, 404, "not_found", None),
        ("a field /gan/generate does not take", "/gan/generate", {"json": {"n": 4, "seeds": 3}}, 400, "unknown_field", "seeds"),
        ("a field /classify does not take", "/classify", {"json": {"images": [ZERO_IMAGE], "topk": 3}}, 400, "unknown_field", "topk"),
        ("a form field /classify/image does not take", "/classify/image", {"files": {"image": ("x.png", truncated, "image/png")}, "data": {"modle": "cnn"}}, 400, "unknown_field", "modle"),
        ("a blank white upload", "/classify/image", upload("x.png", truncated), 400, "no_content", "image"),
        ("a single-colour upload to the VAE", "/vae/reconstruct", upload("x.png", encoded(Image.new("RGB", (40, 30), (200, 30, 30)), "PNG")), 400, "no_content", "image"),
        ("a PPM upload (not a listed format)", "/classify/image", upload("x.ppm", encoded(Image.fromarray((np.eye(32) * 255).astype(np.uint8)), "PPM")), 400, "not_an_image", "image"),
        ("an integer of 400 digits in /classify", "/classify", {"data": '{"images": [[[%s]]]}' % ("9" * 400), "headers": JSON}, 400, "bad_array", "images"),
        ("an integer of 400 digits in /infer/gan", "/infer/gan", {"data": '{"z": [[%s]], "label": [0]}' % ", ".join(["9" * 400] * 100), "headers": JSON}, 400, "bad_array", "z"),
        ("huge but finite latents in /infer/gan", "/infer/gan", {"json": {"z": [[3e38] * 100], "label": [0]}}, 400, "out_of_range", "z"),
        ("huge but finite latents in /infer/vae-decoder", "/infer/vae-decoder", {"json": {"z": [[-1e30] * 16]}}, 400, "out_of_range", "z"),
    ]


@pytest.mark.parametrize("name,path,request_kwargs,status,reason,field", hostile_requests(), ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_hostile_requests_get_the_right_4xx_and_the_service_keeps_serving(server, name, path, request_kwargs, status, reason, field):
    assert_error(post(server, path, **request_kwargs), status, reason, field)
    good_request_works(server)


def test_a_thousand_distinct_paths_add_no_metric_series(server):
    """BentoML labels its request series by path: they are labelled by route template here."""

    def series() -> int:
        text = requests.get(f"{server}/metrics", timeout=TIMEOUT).text
        return sum(1 for line in text.splitlines() if line.startswith("bentoml_service_request"))

    def paths(start: int, count: int):
        kinds = ("/models/m{}", "/v2/models/m{}/infer", "/nowhere/{}", "/v2/nope/{}", "/infer/m{}")
        return [kinds[i % len(kinds)].format(i) for i in range(start, start + count)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda p: requests.post(f"{server}{p}", timeout=TIMEOUT), paths(0, 10)))  # each kind's series exists
        before = series()
        statuses = list(pool.map(lambda p: requests.post(f"{server}{p}", timeout=TIMEOUT).status_code, paths(10, 1000)))
    assert set(statuses) <= {404, 405}, set(statuses)
    assert series() == before
    good_request_works(server)


def test_unpickling_payloads_are_refused_unread(server, tmp_path):
    marker = tmp_path / "unpickled"
    for path in ("/classify", "/infer/cnn", "/sentiment"):
        answer = post(server, path, data=pickled_file_creator(str(marker)), headers={"content-type": "application/vnd.bentoml+pickle"})
        assert_error(answer, 415, "unsupported_media_type")
    assert not marker.exists()
    assert_error(requests.get(f"{server}/classify", timeout=TIMEOUT), 405, "method_not_allowed")


def test_hostile_but_valid_requests_get_correct_answers(server):
    as_ints = post(server, "/gan/generate", json={"n": 2, "seed": 7, "format": "array"})
    assert as_ints.status_code == 200
    for strict in ({"n": "2"}, {"seed": "7"}, {"n": True}, {"n": 2.0}):  # integers are strict, as documented
        assert_error(post(server, "/gan/generate", json={"n": 2, "seed": 7, **strict}), 400, "invalid_input", next(iter(strict)))
    rows = [[[0.0] * 28] * 28, [[0.5] * 28] * 28]
    numbers = post(server, "/classify", json={"images": rows, "top_k": 2})
    strings = post(server, "/classify", json={"images": [[[str(v) for v in r] for r in image] for image in rows], "top_k": 2})
    assert strings.status_code == 200 and strings.json() == numbers.json(), "tensor values given as numeric strings are read"
    for text in ("\x00\x01\x1b[2J\u200b好\r\n", "\x00", "😀 好 \U0010ffff", "好" * 2000):
        answer = post(server, "/sentiment", json={"texts": [text]})
        assert answer.status_code == 200, (text[:20], answer.text)
        assert sum(answer.json()["results"][0]["probabilities"].values()) == pytest.approx(1.0)
    plain = post(server, "/classify", data=json.dumps({"images": rows, "top_k": 2}), headers={"content-type": "text/plain"})
    assert plain.status_code == 200 and plain.json() == numbers.json(), "a non-form body is read as JSON, whatever its type"
    # 2 x 8,000,000 pixels is within the pixel limit; its ink spans 8e6 columns, so framing it
    # at full resolution would pad it to an 8e6 x 8e6 square
    strip = grey_png(8_000_000, 2, row=lambda y: b"\xff" * 8_000_000 if y else b"")
    answer = post(server, "/classify/image", files={"image": ("strip.png", strip, "image/png")})
    assert answer.status_code == 200, answer.text
    good_request_works(server)


def raw_exchange(url: str, head: bytes, body_chunks=(), chunked: bool = False, limit_s: float = 30) -> tuple[bytes, int]:
    """Send a request over a plain socket, keep streaming `body_chunks` until the server
    answers; returns (the answer, body bytes sent)."""
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=limit_s) as s:
        s.sendall(head)
        sent, answer = 0, b""
        deadline = time.monotonic() + limit_s
        for chunk in body_chunks:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        while time.monotonic() < deadline:
            part = s.recv(65536)
            if not part:
                break
            answer += part
            if b"\r\n\r\n" in answer:
                headers, _, rest = answer.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
        return answer, sent


def parse_answer(answer: bytes) -> tuple[int, dict, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, json.loads(body) if body else {}


def post_head(path: str, extra: str = "", key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return f"POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\n{extra}\r\n".encode()


def test_the_default_body_limit_answers_413_before_the_body_is_read(server):
    limit = guard.Settings().max_body_bytes
    started = time.monotonic()
    answer, _ = raw_exchange(server, post_head("/classify", f"Content-Length: {limit + 1}\r\n"))  # no body sent at all
    status, headers, body = parse_answer(answer)
    assert status == 413 and body["error"] == "body_too_large" and body["field"] == "body"
    assert time.monotonic() - started < 10
    answer, sent = raw_exchange(server, post_head("/classify", "Transfer-Encoding: chunked\r\n"), [b" " * 65536] * 400, chunked=True)
    assert parse_answer(answer)[0] == 413 and sent < 400 * 65536, "a chunked body past the limit must be cut off"
    padded = json.dumps({"images": [ZERO_IMAGE]}) + " " * (limit - 100_000)  # just under the limit
    assert post(server, "/classify", data=padded, headers=JSON).status_code == 200
    good_request_works(server)


# schemathesis against the server's own OpenAPI document.

VALID_BODIES = {
    "POST /classify": {"images": [ZERO_IMAGE], "top_k": 2},
    "POST /sentiment": {"texts": ["很好"]},
    "POST /gan/generate": {"n": 2, "seed": 1, "format": "base64"},
    "POST /vae/sample": {"n": 2, "seed": 1, "format": "array"},
    "POST /vae/interpolate": {"seed_a": 1, "seed_b": 2, "steps": 3},
}
FUZZ_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", 30))
# What a request schema cannot say: the shape of an image batch depends on the model it names,
# an upload must be a picture with something in it, a conditional generator's labels must match
# `n`. A schema-valid request refused with one of these codes is refused for one of those rules.
CONTENT_RULES = {"bad_shape", "bad_array", "out_of_range", "no_content", "not_an_image", "bad_image", "empty_upload",
                 "bad_label", "not_conditional", "image_too_large", "unknown_field", "missing_input", "empty", "too_many_items"}


def test_schemathesis_finds_no_server_error_and_no_contract_failure(server):
    schemathesis_run(server, FUZZ_EXAMPLES)


@pytest.mark.slow
def test_schemathesis_larger_run(server):
    schemathesis_run(server, 300)


def schemathesis_run(server: str, examples: int) -> None:
    """For every operation of /docs.json: the valid bodies above, then `examples` generated
    requests that follow the schema and as many that break it (hypothesis, derandomized),
    with every check of schemathesis: no 5xx; status codes, content types, headers and bodies
    as documented; a request that breaks the schema is refused. A request that follows it must
    be accepted, or refused for one of the CONTENT_RULES (checked here, by its error code)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import checks
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server}/docs.json")
    operations = {result.ok().label: result.ok() for result in schema.get_all_operations()}
    assert set(VALID_BODIES) <= set(operations), set(VALID_BODIES) - set(operations)
    session = requests.Session()
    failures = []
    every = [c for c in checks.CHECKS.get_all() if c.__name__ != "positive_data_acceptance"]

    def call(operation, case, mode):
        response = case.call(base_url=server, session=session, timeout=TIMEOUT)
        chosen = every if mode is GenerationMode.NEGATIVE else [c for c in every if c.__name__ != "negative_data_rejection"]
        case.validate_response(response, checks=chosen)
        if mode is GenerationMode.POSITIVE and response.status_code >= 400 and response.status_code not in (401, 404, 413, 429):
            try:
                body = response.json()
            except ValueError:
                body = None
            code = body.get("error") if isinstance(body, dict) else None
            if operation.path.startswith("/v2/"):  # the protocol's errors carry a message, no code: the tensors must fit the model
                assert response.status_code == 400 and isinstance(code, str), f"schema-valid request refused: {response.text[:300]}"
            else:
                assert response.status_code == 400 and code in CONTENT_RULES, f"schema-valid request refused: {response.status_code} {response.text[:300]}"
        return response

    for label, operation in sorted(operations.items()):
        if label in VALID_BODIES:
            try:
                response = call(operation, operation.Case(body=VALID_BODIES[label], media_type="application/json"), GenerationMode.POSITIVE)
                assert response.status_code == 200, response.text[:300]
            except (AssertionError, Exception) as e:
                failures.append(f"{label} (valid body): {e}")
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.method.upper() == "POST" else [])
        for mode in modes:

            @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                call(operation, case, mode)

            try:
                fuzz()
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append(f"{label} ({mode.value}): {e}")
    assert not failures, "\n\n".join(failures)
    good_request_works(server)


# A dedicated server with small limits and API keys.

TIGHT_KEYS = ("alpha-key-0001", "beta-key-0002")
FILE_KEY = "gamma-key-0003"
TIGHT_TIMEOUT_S = 2
TIGHT_BODY_BYTES = 200_000


@pytest.fixture(scope="module")
def tight(smoke_store):
    """(url, process): 1 worker, 2 requests at a time, 2 s, 200 kB, three API keys, /metrics
    protected. On a home of its own, like every server the launcher starts."""
    keys_file = Path(_scratch) / "api-keys"
    keys_file.write_text(f"# test keys\n{FILE_KEY}\n")
    env = {
        "MODELSERVE_WORKERS": "1",
        "MODELSERVE_MAX_CONCURRENCY": "2",
        "MODELSERVE_REQUEST_TIMEOUT_S": str(TIGHT_TIMEOUT_S),
        "MODELSERVE_MAX_BODY_BYTES": str(TIGHT_BODY_BYTES),
        "MODELSERVE_API_KEYS": ",".join(TIGHT_KEYS),
        "MODELSERVE_API_KEYS_FILE": str(keys_file),
        "MODELSERVE_PROTECT_METRICS": "true",
    }
    process, url = launcher.start(env, log_dir=_scratch)
    try:
        launcher.wait_ready(process, url)
        yield url, process
    finally:
        output = launcher.stop(process)
        for key in (*TIGHT_KEYS, FILE_KEY):
            assert key not in output, "an API key was logged"


def auth(key: str = TIGHT_KEYS[0]) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_api_keys_guard_everything_but_health_and_docs(tight):
    url, _ = tight
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TIGHT_KEYS[0]}):
        answer = requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=headers, timeout=TIMEOUT)
        assert_error(answer, 401, "unauthorized", "Authorization")
        assert answer.headers["www-authenticate"].startswith("Bearer")
    for path in ("/models", "/models/cnn", "/metrics", "/v2/models/cnn"):
        assert_error(requests.get(f"{url}{path}", timeout=TIMEOUT), 401, "unauthorized")
    for key in (*TIGHT_KEYS, FILE_KEY):
        good_request_works(url, auth(key))
        assert requests.get(f"{url}/models/cnn", headers=auth(key), timeout=TIMEOUT).status_code == 200
    assert "modelserve_refused_requests_total" in requests.get(f"{url}/metrics", headers=auth(), timeout=TIMEOUT).text
    for path in ("/livez", "/readyz", "/healthz", "/docs.json", "/"):
        assert requests.get(f"{url}{path}", timeout=TIMEOUT).status_code == 200, path


def test_the_body_limit_follows_its_setting(tight):
    url, _ = tight
    body = json.dumps({"images": [ZERO_IMAGE]})
    assert_error(post(url, "/classify", data=body + " " * TIGHT_BODY_BYTES, headers={**JSON, **auth()}), 413, "body_too_large", "body")
    answer, _ = raw_exchange(url, post_head("/classify", "Transfer-Encoding: chunked\r\n", TIGHT_KEYS[1]), [b" " * 8192] * 400, chunked=True)
    assert parse_answer(answer)[0] == 413
    assert post(url, "/classify", data=body + " " * (TIGHT_BODY_BYTES - len(body)), headers={**JSON, **auth()}).status_code == 200


def test_overload_answers_429_at_once_a_stuck_request_504_then_the_service_serves(tight):
    """Two requests whose bodies never finish hold both slots: a third is answered 429 at once,
    health and /metrics still answer, the two are cut off with 504 after the timeout."""
    url, _ = tight
    where = urlparse(url)
    stuck = []
    for _ in range(2):
        s = socket.create_connection((where.hostname, where.port), timeout=TIMEOUT)
        s.sendall(post_head("/classify", "Content-Length: 1000\r\n", TIGHT_KEYS[0]) + b'{"images": ')
        stuck.append(s)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        refused = requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=auth(), timeout=TIMEOUT)
        assert time.monotonic() - started < TIGHT_TIMEOUT_S, "a request over the limit must not queue"
        assert_error(refused, 429, "overloaded")
        assert refused.headers["retry-after"] == "1"
        for path in ("/readyz", "/livez", "/healthz"):
            assert requests.get(f"{url}{path}", timeout=TIMEOUT).status_code == 200
        assert requests.get(f"{url}/metrics", headers=auth(), timeout=TIMEOUT).status_code == 200
        for s in stuck:
            answer = b""
            while (part := s.recv(65536)):
                answer += part
            status, headers, body = parse_answer(answer)
            assert status == 504 and body == {"error": "timeout", "detail": f"no answer within {TIGHT_TIMEOUT_S} s", "field": None}
    finally:
        for s in stuck:
            s.close()
    good_request_works(url, auth())


def test_after_a_burst_the_service_serves_normally(tight):
    url, _ = tight

    def generate(i):
        try:
            return post(url, "/gan/generate", json={"n": 64, "seed": i, "format": "array"}, headers=auth()).status_code
        except requests.RequestException as e:
            return type(e).__name__

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(generate, range(48)))
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses
    print(f"\nburst of 48 (24 at a time) on a 2-request limit: {statuses.count(200)} x 200, {statuses.count(429)} x 429")
    for _ in range(3):
        good_request_works(url, auth())


def test_a_worker_killed_with_sigkill_is_replaced(tight):
    url, process = tight
    (worker,) = launcher.workers(process)
    started = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    with ThreadPoolExecutor(max_workers=2) as pool:  # sent while no worker runs: the backlog holds them
        meanwhile = [pool.submit(requests.post, f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=auth(), timeout=90) for _ in range(2)]
        answered = [f.result().status_code for f in meanwhile]
    assert answered == [200, 200], answered
    recovered = None
    while time.monotonic() - started < 90:
        try:
            answer = requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=auth(), timeout=10)
            new = [w.pid for w in launcher.workers(process)]
            if answer.status_code == 200 and new and worker.pid not in new:
                recovered = time.monotonic() - started
                break
            assert answer.status_code < 500 or answer.status_code == 503, answer.text
        except (requests.ConnectionError, requests.Timeout, psutil.NoSuchProcess):
            pass
        time.sleep(0.1)
    assert recovered is not None, launcher.output(process)[-3000:]
    print(f"\nworker {worker.pid} killed with SIGKILL; a new worker answered after {recovered:.1f} s")
    good_request_works(url, auth())


# A damaged store stops `bentoml serve`.


def damaged_store(tmp_path: Path, name: str, damage) -> Path:
    home = tmp_path / name
    shutil.copytree(os.environ["BENTOML_HOME"], home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    damage(home / "models")
    return home


def version_dir(models: Path, name: str) -> Path:
    return models / name / (models / name / "latest").read_text().strip()


def appended_bytes(models: Path) -> None:
    with open(version_dir(models, "cnn") / "model.onnx", "ab") as f:
        f.write(b"\0tampered")


def garbage_with_its_sha256(models: Path) -> None:
    folder = version_dir(models, "resnet")
    old = sha256_file(str(folder / "model.onnx"))
    (folder / "model.onnx").write_bytes(b"not an onnx graph " * 100)
    new = sha256_file(str(folder / "model.onnx"))
    metadata = (folder / "model.yaml").read_text()
    assert old in metadata
    (folder / "model.yaml").write_text(metadata.replace(old, new))


def missing_model(models: Path) -> None:
    """The serving state names sentiment's version, which is gone from the store."""
    (models.parent / "modelserve").mkdir(exist_ok=True)
    state = {"generation": 1, "models": {"sentiment": {"default": version_dir(models, "sentiment").name}}}
    (models.parent / "modelserve" / "serving.json").write_text(json.dumps(state))
    shutil.rmtree(models / "sentiment")


def edited_vocabulary(models: Path) -> None:
    vocab = version_dir(models, "sentiment") / "vocab.json"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("1", "2", 1), encoding="utf-8")


def empty_store(models: Path) -> None:
    for folder in models.iterdir():
        shutil.rmtree(folder)


DAMAGES = {
    "sha256": (appended_bytes, ["model cnn:", "does not match the sha256", "python -m export cnn"]),
    "unloadable": (garbage_with_its_sha256, ["model resnet:", "ONNX Runtime cannot load model.onnx", "python -m export resnet"]),
    "missing": (missing_model, ["is not in the model store", "sentiment", "make models"]),
    "vocabulary": (edited_vocabulary, ["model sentiment:", "vocab.json does not match the sha256", "python -m export sentiment"]),
    "empty": (empty_store, ["no model in the model store", "make models", "python -m export import"]),
}


def test_a_damaged_or_missing_model_stops_the_server_naming_it(smoke_store, tmp_path):
    started = {}
    for name, (damage, _) in DAMAGES.items():
        home = damaged_store(tmp_path, name, damage)
        started[name] = launcher.start({"BENTOML_HOME": str(home), "MODELSERVE_WORKERS": "1"}, log_dir=str(tmp_path))
    try:
        for name, (process, url) in started.items():
            try:
                code = process.wait(timeout=90)
            except Exception:
                pytest.fail(f"{name}: bentoml serve still running after 90 s:\n{launcher.output(process)[-3000:]}")
            output = launcher.output(process)
            assert code != 0, f"{name}: exit code 0\n{output[-3000:]}"
            for words in DAMAGES[name][1]:
                assert words in output, f"{name}: {words!r} not in the output:\n{output[-3000:]}"
    finally:
        for process, _ in started.values():
            launcher.stop(process)


# Nothing on the serving path unpickles or evaluates stored content.

SERVING_CODE = ["service", "modelspec"]
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}


def unsafe_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if name in {"eval", "exec", "compile", "__import__"} and not owner:
                found.append(f"{name}()")
            if owner in UNSAFE_MODULES:
                found.append(f"{owner}.{name}()")
            if name == "load" and owner == "yaml" and not any(k.arg == "Loader" and "Safe" in ast.unparse(k.value) for k in node.keywords):
                found.append("yaml.load without a safe loader")
            for keyword in node.keywords:
                if keyword.arg == "allow_pickle" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    found.append(f"{ast.unparse(func)}(allow_pickle=...)")
    return [f"{path.name}: {item}" for item in found]


def test_the_serving_code_unpickles_and_evaluates_nothing():
    files = [p for folder in SERVING_CODE for p in sorted((Path(ROOT) / folder).rglob("*.py"))]
    assert len(files) >= 5
    found = [item for path in files for item in unsafe_uses(path)]
    assert not found, found
    sample = Path(_scratch) / "unsafe_sample.py"
    sample.write_text("import pickle\nimport numpy as np\neval('1')\nnp.load('x', allow_pickle=True)\npickle.loads(b'')\n")
    assert len(unsafe_uses(sample)) == 4, "the check itself must catch these"


# The long run: `make soak`, or `pytest -m slow`.


@pytest.mark.slow
def test_soak(smoke_store):
    report = soak.run(minutes=float(os.environ.get("SOAK_MINUTES", 5)), log_dir=_scratch)
    print("\n" + soak.summary(report))
    assert report["errors"] == 0, report["error_samples"]
    assert report["rss_growth"] < 0.10
