"""Client mistakes: answered with 4xx and a JSON body {"error": ..., "detail": ..., "field": ...}.

`error` is a short stable reason code, `detail` a sentence for people, `field` the part of the
request at fault (a JSON field such as "texts[0]", a form field, "body", a header name), or
null when no single part is (an overloaded worker, a timeout).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
from http import HTTPStatus

from starlette.responses import JSONResponse

from service import metrics

# Set per request by the guard: a ClientError that BentoML's parser could only report as a
# BentoMLException (service/patches.py) is put here, and the guard answers with it.
parser_refusals: contextvars.ContextVar[list | None] = contextvars.ContextVar("modelserve_parser_refusal", default=None)


class ClientError(Exception):
    """A request the service will not run. `field` names the part of the request at fault,
    `reason` is a short stable code (also the label of the rejected-inputs counter)."""

    def __init__(
        self, field: str | None, problem: str, reason: str = "invalid", status: int = 400, headers: dict[str, str] | None = None
    ):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field, self.problem, self.reason, self.status = field, problem, reason, status
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": self.reason, "detail": str(self), "field": self.field}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def answers_client_errors(default_model: str | None = None):
    """Turn a ClientError raised by an API method into its JSON response, and count it under
    the method's name, the model its `model` argument names (or the endpoint's default) and
    that model's version."""

    def decorate(func):
        endpoint = func.__name__

        @functools.wraps(func)
        async def wrapper(self, *args, **kwargs):
            try:
                return await func(self, *args, **kwargs)
            except ClientError as e:
                name = str(kwargs.get("model") or default_model or "")
                name = name if name in self.registry.entries else "other"  # no label per unknown name
                metrics.REJECTED.labels(endpoint=endpoint, model=name, version=self.registry.version_of(name), reason=e.reason).inc()
                if "ctx" in kwargs:  # BentoML answers with the context's status when an API takes one
                    kwargs["ctx"].response.status_code = e.status
                return e.response()

        wrapper.__signature__ = inspect.signature(func)
        return wrapper

    return decorate


# One error shape for every answer, whoever gives it (the guard rewrites the others' errors).


def headers_of(scope) -> dict[bytes, bytes]:
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


def rewritten(start: dict, body: bytes, refusal: ClientError | None, path: str = "") -> tuple[dict, bytes]:
    """An error answer in the service's one shape (unchanged if it has it already). A request
    the schema refused (pydantic's items: only an API's route gets them) is counted as a client
    mistake of that API, like the ones its own checks refuse."""
    status = start["status"]
    if refusal is not None and 400 <= status < 500:
        new = refusal.body()
        status = refusal.status
    else:
        new = normalized_error(status, body, headers_of(start).get(b"content-type", b"").decode("latin-1"))
        if new is None:
            return start, body
        if status == 400 and "errors" in new:
            metrics.REJECTED.labels(endpoint=path.strip("/").replace("/", "_"), model="", version="", reason=new["error"]).inc()
    return _with_body(start, status, new)


def protocol_error(start: dict, body: bytes, refusal: ClientError | None) -> tuple[dict, bytes]:
    """An Open Inference Protocol error answer as {"error": message} (unchanged if it is one)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return start, body
    new = normalized_error(start["status"], body, headers_of(start).get(b"content-type", b"").decode("latin-1")) or data
    return _with_body(start, start["status"], {"error": new["detail"] if isinstance(new, dict) else _phrase(start["status"])})


def _with_body(start: dict, status: int, new: dict) -> tuple[dict, bytes]:
    payload = json.dumps(new, ensure_ascii=False).encode("utf-8")
    headers = [
        (name, value) for name, value in start.get("headers", []) if name.lower() not in (b"content-length", b"content-type")
    ]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    return {**start, "status": status, "headers": headers}, payload


# The schema's own refusals (pydantic's error types) under the codes the service's checks use.
SCHEMA_CODES = {
    "extra_forbidden": "unknown_field",
    "string_too_long": "text_too_long",
    "string_too_short": "empty_text",
    "string_pattern_mismatch": "empty_text",
    "too_short": "empty",
    "too_long": "too_many_items",
}
RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}


def schema_code(item: dict) -> str:
    kind, loc = item.get("type"), item.get("loc") or ()
    if kind in RANGE_ERRORS and loc:
        field = str(loc[0])
        return "n_out_of_range" if field == "n" else "seed_out_of_range" if field.startswith("seed") else "out_of_range"
    return SCHEMA_CODES.get(kind, "invalid_input")


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
            code = schema_code(items[0]) if items else "invalid_input"
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
