"""Hardening: hostile input against the shared `server` (2 workers, default limits) and
schemathesis on its own OpenAPI document. Each request gets the documented 4xx JSON body or a
correct answer, never a 5xx, and the next good request works.

The rest of the hardening: the guard in-process (test_guard.py), a server with small limits and
API keys (test_limits.py), damaged stores and unsafe code (test_store_safety.py).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import select
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from PIL import Image

from modelspec.image import frame_like_training, grey_pixels, light_on_dark
from service import guard
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
