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
(service/overhead.py): the guard owns the timeout.

`harden_bentoml()` (run when this module is imported, before service.py declares its APIs)
fixes three ways a client could get a 500 or make the server fetch a URL: BentoML's
multipart/form parser is replaced by one that answers 400 for a form without a boundary or a
form field nested too deeply, and refuses a file field sent as text (BentoML would download it
as a URL); and BentoML's tensor validator reports a TypeError (a JSON object where a number
belongs) as the validation error it is. It also adds the guard's 401, 413, 415, 429 and 504 to
every API operation of the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from http import HTTPStatus

from prometheus_client import Counter

from service.errors import ClientError

logger = logging.getLogger("modelserve.guard")

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"
# The API documentation: the OpenAPI page, its assets and documents; and the demo page's own
# files (service/ui.py: its API calls need the key). They hold no secret, and a browser cannot
# send a bearer key with a page load.
DOCS_PATHS = frozenset({"/", "/docs.json", "/schema.json", "/ui"})
DOCS_PREFIXES = ("/static_content/", "/assets/", "/ui/")
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


def _keys(environ) -> tuple[str, ...]:
    """MODELSERVE_API_KEYS (comma-separated) plus MODELSERVE_API_KEYS_FILE (one key a line;
    blank lines and lines starting with # are skipped). A setting that names no key, or a file
    that cannot be read, stops the start: the service never runs open by mistake."""
    keys: list[str] = []
    listed = environ.get("MODELSERVE_API_KEYS", "")
    if listed.strip():
        found = [k.strip() for k in listed.split(",") if k.strip()]
        if not found:
            raise GuardConfigError("MODELSERVE_API_KEYS is set but holds no key")
        keys += found
    path = environ.get("MODELSERVE_API_KEYS_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as e:
            raise GuardConfigError(f"MODELSERVE_API_KEYS_FILE={path}: cannot read it ({type(e).__name__})") from None
        found = [line for line in lines if line and not line.startswith("#")]
        if not found:
            raise GuardConfigError(f"MODELSERVE_API_KEYS_FILE={path}: holds no key")
        keys += found
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 10 * 1024 * 1024
    max_concurrency: int = 128  # per worker; 0: no limit
    request_timeout_s: float = 30.0  # 0: no limit
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    protect_metrics: bool = False

    @classmethod
    def from_env(cls, environ=None) -> Settings:
        environ = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            max_body_bytes=_number(environ, "MODELSERVE_MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1),
            max_concurrency=_number(environ, "MODELSERVE_MAX_CONCURRENCY", defaults.max_concurrency),
            request_timeout_s=_number(environ, "MODELSERVE_REQUEST_TIMEOUT_S", defaults.request_timeout_s, kind=float),
            api_keys=_keys(environ),
            protect_metrics=_flag(environ, "MODELSERVE_PROTECT_METRICS"),
        )


SETTINGS = Settings.from_env()


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BodyTooLarge(Exception):
    """Raised into the application when a streamed body passes the limit."""


# Set per request by the guard: a ClientError that BentoML's parser could only report as a
# BentoMLException (hardened parser below) is put here, and the guard answers with it.
_parser_refusal: contextvars.ContextVar[list | None] = contextvars.ContextVar("modelserve_parser_refusal", default=None)


@dataclass
class _Exchange:
    """What one request has done so far."""

    received: int = 0
    too_large: bool = False
    timed_out: bool = False
    app_started: bool = False  # the application began its answer
    sent: bool = False  # an answer began downstream
    held: dict | None = None  # an error answer's start, kept until its body is complete
    held_body: list = field(default_factory=list)
    keep_errors: bool = False  # leave error answers as they are (HEAD, Open Inference Protocol)


class Guard:
    """`ModelServe.add_asgi_middleware(Guard)`; `Guard(app, settings=Settings(...))` in tests."""

    def __init__(self, app, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or SETTINGS
        self.active = 0
        self._key_digests = tuple(_digest(k.encode("utf-8")) for k in self.settings.api_keys)
        harden_bentoml()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and self._key_digests and self._needs_key(scope.get("path", "")):
            if not self._authorized(_headers(scope).get(b"authorization", b"")):  # the service has none; deny by default
                REFUSED.labels(reason="unauthorized").inc()
                return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = _headers(scope)
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

        if not exempt:
            self.active += 1
        try:
            await self._run(scope, receive, send)
        finally:
            if not exempt:
                self.active -= 1

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> ClientError | None:
        """The answer to a request refused on its headers alone, or None."""
        if self._key_digests and self._needs_key(path) and not self._authorized(headers.get(b"authorization", b"")):
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

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        presented = _digest(token.strip())
        match = False
        for key in self._key_digests:  # every key, always: the time does not tell which matched
            match |= hmac.compare_digest(presented, key)
        return match

    async def _run(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        state = _Exchange(keep_errors=scope.get("method") == "HEAD" or path == "/v2" or path.startswith("/v2/"))
        max_body = self.settings.max_body_bytes
        refusals: list[ClientError] = []

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                if state.received > max_body:
                    state.too_large = True
                    raise BodyTooLarge(f"request body over {max_body} bytes")
            return message

        async def guarded_send(message) -> None:
            if state.too_large or state.timed_out:
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
                    start, body = _rewritten(start, body, refusals[0] if refusals else None)
                state.sent = True
                await send(start)
                return await send({"type": "http.response.body", "body": body, "more_body": message.get("more_body", False)})
            return await send(message)

        token = _parser_refusal.set(refusals)
        try:
            task = asyncio.ensure_future(self.app(scope, counted_receive, guarded_send))
        finally:
            _parser_refusal.reset(token)
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


def _headers(scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "overloaded",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


def _rewritten(start: dict, body: bytes, refusal: ClientError | None) -> tuple[dict, bytes]:
    """An error answer in the service's one shape (unchanged if it has it already)."""
    status = start["status"]
    if refusal is not None and 400 <= status < 500:
        new = refusal.body()
        status = refusal.status
    else:
        new = normalized_error(status, body, _headers(start).get(b"content-type", b"").decode("latin-1"))
        if new is None:
            return start, body
    payload = json.dumps(new, ensure_ascii=False).encode("utf-8")
    headers = [
        (name, value) for name, value in start.get("headers", []) if name.lower() not in (b"content-length", b"content-type")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    return {**start, "status": status, "headers": headers}, payload


def normalized_error(status: int, body: bytes, content_type: str) -> dict | None:
    """{"error", "detail", "field"} for an error body of another shape; None if it has the shape."""
    code = ERROR_CODES.get(status) or ("bad_request" if status < 500 else "internal_error")
    try:
        data = json.loads(body) if "json" in content_type else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str) and isinstance(data.get("detail"), str) and "field" in data:
        return None
    if isinstance(data, dict) and isinstance(data.get("detail"), list):  # pydantic, through BentoML
        items = [item for item in data["detail"] if isinstance(item, dict)]
        if items and any(item.get("type") == "json_invalid" for item in items):
            code = "invalid_json"
        elif status == 400:
            code = "invalid_input"
        parts = [f"{_location(item.get('loc')) or 'body'}: {item.get('msg', '')}" for item in items[:5]]
        if len(items) > 5:
            parts.append(f"and {len(items) - 5} more")
        return {
            "error": code,
            "detail": "; ".join(parts) or str(data.get("error", HTTPStatus(status).phrase)),
            "field": (_location(items[0].get("loc")) or "body") if items else None,
            "errors": items,
        }
    if isinstance(data, list) and data and isinstance(data[0], dict):  # BentoML's 4xx: [{"error": ...}]
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
    else:
        text = body.decode("utf-8", "replace").strip() if body and "json" not in content_type else ""
        message = text[:500] or _phrase(status)
    if status >= 500 and "unexpected error" in message:
        message = "an unexpected error occurred; see the server log"
    return {"error": code, "detail": message, "field": None}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _location(loc) -> str:
    """pydantic's ("texts", 0) -> "texts[0]", the style of the service's own `field`."""
    out = ""
    for part in loc or ():
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# BentoML's request parsing, hardened.


def _refuse(error: ClientError):
    """Raise into BentoML (which can only answer a BentoMLException) and leave the real answer
    for the guard."""
    from bentoml.exceptions import BadInput

    holder = _parser_refusal.get()
    if holder is not None:
        holder.append(error)
    raise BadInput(str(error))


_HARDENED = False


def harden_bentoml() -> None:
    """Install the hardened form parser and tensor validator (idempotent). The validator must be
    patched before the service's APIs are declared: pydantic keeps the bound method it saw."""
    global _HARDENED
    if _HARDENED:
        return
    import functools

    from _bentoml_impl import serde
    from _bentoml_sdk.validators import TensorSchema
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    class UploadsOnlyMultipartSerde(serde.MultipartSerde):
        """BentoML's form parser, except: a malformed form is a 400, a form field nested too
        deeply for the JSON decoder is a 400, and a file field must be an uploaded file (BentoML
        would download a text value as a URL)."""

        async def parse_request(self, request, cls):
            try:
                form = await request.form()
            except HTTPException as e:
                if e.status_code >= 500:
                    raise
                _refuse(ClientError("body", f"not a readable form ({e.detail})", "bad_form"))
            files = getattr(cls, "multipart_fields", set())
            for name in form:
                for value in form.getlist(name):
                    if name in files:
                        if not isinstance(value, UploadFile):
                            _refuse(ClientError(name, "must be an uploaded file (a file part of the form); URLs are not fetched", "not_a_file"))
                    elif isinstance(value, str):
                        try:
                            json.loads(value)
                        except RecursionError:
                            _refuse(ClientError(name, "is nested too deeply", "too_deep"))
                        except ValueError:
                            pass
            return await super().parse_request(request, cls)

    serde.ALL_SERDE["multipart/form-data"] = UploadsOnlyMultipartSerde
    serde.ALL_SERDE["application/x-www-form-urlencoded"] = UploadsOnlyMultipartSerde

    validate = TensorSchema.validate

    @functools.wraps(validate)
    def validate_or_value_error(self, obj):
        try:
            return validate(self, obj)
        except TypeError as e:  # numpy on a JSON object: pydantic turns ValueError into a 400
            raise ValueError(f"not an array of numbers ({e})") from None

    TensorSchema.validate = validate_or_value_error

    # The OpenAPI document: the guard's answers beside BentoML's 400, 404 and 500, same body schema.
    import attrs
    from _bentoml_sdk.service import openapi

    bad_request = openapi.error_responses.get(400)
    if bad_request is not None:
        for status in (401, 413, 415, 429, 504):
            openapi.error_responses.setdefault(status, attrs.evolve(bad_request, description=HTTPStatus(status).phrase))
    _HARDENED = True


harden_bentoml()
