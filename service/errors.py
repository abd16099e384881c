"""Client mistakes: answered with 4xx and a JSON body {"error": ..., "detail": ..., "field": ...}.

`error` is a short stable reason code, `detail` a sentence for people, `field` the part of the
request at fault (a JSON field such as "texts[0]", a form field, "body", a header name), or
null when no single part is (an overloaded worker, a timeout).
"""

from __future__ import annotations

import functools
import inspect

from starlette.responses import JSONResponse

from service import metrics


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
