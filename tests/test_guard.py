"""The guard (service/guard.py) in-process, on a toy ASGI app: every branch of keys, limits,
concurrency and timeouts, without a server."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from service import errors, guard



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
