"""The guard: a pure ASGI middleware in front of every route of the service.

In this order, before the request reaches BentoML's parsing or a model:

1. API keys (optional): with MODELSERVE_API_KEYS and/or MODELSERVE_API_KEYS_FILE set, every
   route but health, the API docs and (unless MODELSERVE_PROTECT_METRICS) /metrics needs
   `Authorization: Bearer <key>`; otherwise 401 with `WWW-Authenticate: Bearer`. The presented
   key is hashed and compared with every configured key's hash by hmac.compare_digest, with no
   early exit; keys are never logged.
2. Media type: BentoML's pickle serialization (`application/vnd.bentoml+pickle`, or anything
   naming pickle) is refused with 415: nothing on the serving path unpickles.
3. Body size: a Content-Length over MODELSERVE_MAX_BODY_BYTES answers 413 before any of the
   body is read; a chunked body is counted as it streams and answered 413 at the limit.
4. Concurrency: more than MODELSERVE_MAX_CONCURRENCY requests in progress in this worker
   answers 429 with `Retry-After` at once (nothing queues). Health and /metrics are exempt.
5. Time: a request with no response after MODELSERVE_REQUEST_TIMEOUT_S is cancelled and
   answered 504.

Every error answer of the service, the guard's own and BentoML's (schema validation, unknown
routes, internal errors), leaves with one JSON body: {"error": code, "detail": text, "field":
part of the request or null}; BentoML's schema errors keep their pydantic items under "errors".

BentoML's own `traffic` timeout and max_concurrency were not reused: their 504 and 429 bodies
are {"error": "..."} only, the 429 has no Retry-After. BentoML's timeout middleware is taken out
(service/patches.py): the guard owns the timeout. The error shapes are in service/errors.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field

from prometheus_client import Counter

from service import ui
from service.errors import ClientError, headers_of, parser_refusals, protocol_error, rewritten

logger = logging.getLogger("modelserve.guard")

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"
# The admin API and Triton's repository extension: admin keys only, never the client keys.
ADMIN_PREFIXES = ("/admin/", "/v2/repository/")
# The API documentation: the OpenAPI page, its assets and documents; and the demo page's own
# files (service/ui.py: its API calls need the key). They hold no secret, and a browser cannot
# send a bearer key with a page load.
DOCS_PATHS = frozenset({"/", "/docs.json", "/schema.json", ui.PATH})
DOCS_PREFIXES = ("/static_content/", "/assets/", ui.PREFIX)
# Open Inference Protocol routes (/v2...) answer errors as {"error": message}, as that protocol
# says: the guard leaves their error bodies alone (its own refusals there have "error" too).

RETRY_AFTER_S = 1
# Error answers larger than this pass through unchanged instead of being rewritten.
MAX_REWRITTEN_ERROR_BYTES = 256 * 1024

REFUSED = Counter(
    "modelserve_refused_requests", "Requests the guard answered itself, by reason", ["reason"]
)


class GuardConfigError(RuntimeError):
    """A MODELSERVE_* setting of the guard is malformed: the service must not start with it."""


def _number(environ, name: str, default, kind=int, minimum=0):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise GuardConfigError(f"{name}={raw!r}: expected a {kind.__name__}") from None
    if value < minimum:
        raise GuardConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _flag(environ, name: str, default: bool = False) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise GuardConfigError(f"{name}={raw!r}: expected true or false")


def _keys(environ, setting: str = "MODELSERVE_API_KEYS") -> tuple[str, ...]:
    """`setting` (comma-separated) plus `setting`_FILE (one key a line; blank lines and lines
    starting with # are skipped). A setting that names no key, or a file that cannot be read,
    stops the start: the service never runs open by mistake."""
    keys: list[str] = []
    listed = environ.get(setting, "")
    if listed.strip():
        found = [k.strip() for k in listed.split(",") if k.strip()]
        if not found:
            raise GuardConfigError(f"{setting} is set but holds no key")
        keys += found
    path = environ.get(f"{setting}_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as e:
            raise GuardConfigError(f"{setting}_FILE={path}: cannot read it ({type(e).__name__})") from None
        found = [line for line in lines if line and not line.startswith("#")]
        if not found:
            raise GuardConfigError(f"{setting}_FILE={path}: holds no key")
        keys += found
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 10 * 1024 * 1024
    max_concurrency: int = 128  # per worker; 0: no limit
    # Request bodies held by one worker at once (0: no limit). A parsed JSON body takes several
    # times its size in Python objects: 64 MiB keeps one worker of the pod's 1 GiB limit inside it.
    max_inflight_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 30.0  # 0: no limit
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    protect_metrics: bool = False
    admin_keys: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, environ=None) -> Settings:
        environ = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            max_body_bytes=_number(environ, "MODELSERVE_MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1),
            max_concurrency=_number(environ, "MODELSERVE_MAX_CONCURRENCY", defaults.max_concurrency),
            max_inflight_bytes=_number(environ, "MODELSERVE_MAX_INFLIGHT_BYTES", defaults.max_inflight_bytes),
            request_timeout_s=_number(environ, "MODELSERVE_REQUEST_TIMEOUT_S", defaults.request_timeout_s, kind=float),
            api_keys=_keys(environ),
            protect_metrics=_flag(environ, "MODELSERVE_PROTECT_METRICS"),
            admin_keys=_keys(environ, "MODELSERVE_ADMIN_KEYS"),
        )


SETTINGS = Settings.from_env()


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BodyTooLarge(Exception):
    """Raised into the application when a streamed body passes the limit."""




@dataclass
class _Exchange:
    """What one request has done so far."""

    received: int = 0
    too_large: bool = False
    too_busy: bool = False  # the worker's bodies in flight passed their budget
    timed_out: bool = False
    app_started: bool = False  # the application began its answer
    sent: bool = False  # an answer began downstream
    held: dict | None = None  # an error answer's start, kept until its body is complete
    held_body: list = field(default_factory=list)
    keep_errors: bool = False  # leave error answers as they are (HEAD)
    protocol_errors: bool = False  # the Open Inference Protocol's {"error": message} shape


class Guard:
    """`ModelServe.add_asgi_middleware(Guard)`; `Guard(app, settings=Settings(...))` in tests."""

    def __init__(self, app, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or SETTINGS
        self.active = 0
        self.inflight_bytes = 0  # request bytes received by the requests in progress
        self._key_digests = tuple(_digest(k.encode("utf-8")) for k in self.settings.api_keys)
        self._admin_digests = tuple(_digest(k.encode("utf-8")) for k in self.settings.admin_keys)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and self._key_digests and self._needs_key(scope.get("path", "")):
            if not self._authorized(headers_of(scope).get(b"authorization", b"")):  # the service has none; deny by default
                REFUSED.labels(reason="unauthorized").inc()
                return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = headers_of(scope)
        exempt = path in HEALTH_PATHS or path == METRICS_PATH

        refusal = self._refusal(path, headers)
        if refusal is not None:
            REFUSED.labels(reason=refusal.reason).inc()
            return await refusal.response()(scope, receive, send)

        limit = self.settings.max_concurrency
        if not exempt and limit and self.active >= limit:
            REFUSED.labels(reason="overloaded").inc()
            error = ClientError(
                None,
                f"more than {limit} requests in progress in this worker; retry after {RETRY_AFTER_S} s",
                "overloaded",
                429,
                {"Retry-After": str(RETRY_AFTER_S)},
            )
            return await error.response()(scope, receive, send)

        declared = int(headers.get(b"content-length", b"0") or 0)  # a number: _refusal checked it
        budget = self.settings.max_inflight_bytes
        if not exempt and budget and self.active and self.inflight_bytes + declared > budget:
            return await self._busy().response()(scope, receive, send)

        if not exempt:
            self.active += 1
        try:
            await self._run(scope, receive, send)
        finally:
            if not exempt:
                self.active -= 1

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> ClientError | None:
        """The answer to a request refused on its headers alone, or None."""
        if path.startswith(ADMIN_PREFIXES):
            if not self._admin_digests:
                return ClientError(None, "the admin API is off: set MODELSERVE_ADMIN_KEYS (or MODELSERVE_ADMIN_KEYS_FILE) to turn it on", "admin_disabled", 403)
            if not self._authorized(headers.get(b"authorization", b""), self._admin_digests):
                return ClientError(
                    "Authorization",
                    "a valid admin key is required: send `Authorization: Bearer <admin key>`",
                    "unauthorized",
                    401,
                    {"WWW-Authenticate": 'Bearer realm="modelserve-admin"'},
                )
        elif self._key_digests and self._needs_key(path) and not self._authorized(headers.get(b"authorization", b"")):
            return ClientError(
                "Authorization",
                "a valid API key is required: send `Authorization: Bearer <key>`",
                "unauthorized",
                401,
                {"WWW-Authenticate": 'Bearer realm="modelserve"'},
            )
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if "pickle" in media_type:
            return ClientError(
                "Content-Type", f"{media_type} is refused: send application/json or multipart/form-data", "unsupported_media_type", 415
            )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return ClientError("Content-Length", "is not a number", "bad_content_length", 400)
            if size > self.settings.max_body_bytes:
                return self._too_large()
        return None

    def _busy(self) -> ClientError:
        REFUSED.labels(reason="overloaded").inc()
        return ClientError(
            "body",
            f"more than {self.settings.max_inflight_bytes} bytes of request bodies in progress in this worker; retry after {RETRY_AFTER_S} s",
            "overloaded",
            429,
            {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
        )

    def _too_large(self) -> ClientError:
        return ClientError(
            "body",
            f"more than the limit of {self.settings.max_body_bytes} bytes",
            "body_too_large",
            413,
            {"Connection": "close"},
        )

    def _needs_key(self, path: str) -> bool:
        if path in HEALTH_PATHS or path in DOCS_PATHS or path.startswith(DOCS_PREFIXES):
            return False
        if path == METRICS_PATH:
            return self.settings.protect_metrics
        return True

    def _authorized(self, header: bytes, digests: tuple[bytes, ...] | None = None) -> bool:
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        presented = _digest(token.strip())
        match = False
        for key in self._key_digests if digests is None else digests:  # every key, always: the time does not tell which matched
            match |= hmac.compare_digest(presented, key)
        return match

    async def _run(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        state = _Exchange(keep_errors=scope.get("method") == "HEAD", protocol_errors=path == "/v2" or path.startswith("/v2/"))
        try:
            await self._exchange(state, scope, receive, send)
        finally:
            self.inflight_bytes -= state.received

    async def _exchange(self, state: _Exchange, scope, receive, send) -> None:
        max_body = self.settings.max_body_bytes
        refusals: list[ClientError] = []

        budget = self.settings.max_inflight_bytes

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                state.received += size
                self.inflight_bytes += size
                if state.received > max_body:
                    state.too_large = True
                    raise BodyTooLarge(f"request body over {max_body} bytes")
                if budget and self.inflight_bytes > budget and state.received < self.inflight_bytes:
                    state.too_busy = True  # others hold bodies too: this one waits for another time
                    raise BodyTooLarge(f"request bodies in progress over {budget} bytes")
            return message

        async def guarded_send(message) -> None:
            if state.too_large or state.too_busy or state.timed_out:
                return  # the guard answers instead
            kind = message["type"]
            if kind == "http.response.start":
                state.app_started = True
                if message["status"] >= 400 and not state.keep_errors:
                    state.held, state.held_body = message, []
                    return
                state.sent = True
                return await send(message)
            if kind == "http.response.body" and state.held is not None:
                state.held_body.append(message.get("body", b""))
                size = sum(len(part) for part in state.held_body)
                if message.get("more_body", False) and size <= MAX_REWRITTEN_ERROR_BYTES:
                    return
                start, body = state.held, b"".join(state.held_body)
                state.held, state.held_body = None, []
                if not message.get("more_body", False):
                    if state.protocol_errors:
                        start, body = protocol_error(start, body, refusals[0] if refusals else None)
                    else:
                        start, body = rewritten(start, body, refusals[0] if refusals else None, scope.get("path", ""))
                state.sent = True
                await send(start)
                return await send({"type": "http.response.body", "body": body, "more_body": message.get("more_body", False)})
            return await send(message)

        token = parser_refusals.set(refusals)
        try:
            task = asyncio.ensure_future(self.app(scope, counted_receive, guarded_send))
        finally:
            parser_refusals.reset(token)
        timeout = self.settings.request_timeout_s or None
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done and state.app_started:
                done, _ = await asyncio.wait({task})  # answering already: let it finish
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            state.timed_out = True
            task.cancel()
            await asyncio.wait({task})
            if not state.sent:
                REFUSED.labels(reason="timeout").inc()
                logger.warning("%s %s: no answer within %g s; answered 504", scope.get("method"), scope.get("path"), timeout)
                error = ClientError(None, f"no answer within {timeout:g} s", "timeout", 504, {"Connection": "close"})
                await error.response()(scope, receive, send)
            return
        failure = None if task.cancelled() else task.exception()
        if state.too_busy:
            if not state.sent:
                await self._busy().response()(scope, receive, send)
            return
        if state.too_large:
            if not state.sent:
                REFUSED.labels(reason="body_too_large").inc()
                await self._too_large().response()(scope, receive, send)
            return
        if failure is not None:
            if state.sent:
                raise failure
            logger.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=failure)
            error = ClientError(None, "an unexpected error occurred; see the server log", "internal_error", 500)
            await error.response()(scope, receive, send)
