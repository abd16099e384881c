"""Every patch of BentoML internals, in one place (tests/test_patches.py names what each relies on).

Middlewares (`trim_middlewares`, before BentoML builds its app, in every process that imports
the service):
- BentoML's timeout middleware is left out: it starts a timer for every request and never
  cancels it, so each request's future and context (tracing span included, some 20 objects)
  lived on for the whole timeout; the garbage collector's full passes over them paused the
  worker for 100 to 500 ms under load. The guard (guard.py) answers 504 itself and cancels what
  it starts.
- The OpenTelemetry middleware is left out while tracing is not configured (no exporter, or
  sample rate 0, BentoML's default): it records nothing then, but building each request's span
  and attributes took about half of a no-op request's time. Configured tracing keeps it.
- The request metrics middleware labels `endpoint` with the raw request path, so random paths
  (`/models/<x>`, unknown routes, 401s) would each add series to every worker's multiprocess
  files and to Prometheus, without bound: it sees the route template instead (`/models/{name}`,
  or `other` for no route of the service).

Request parsing (`harden_bentoml`, before the service declares its APIs): BentoML's
multipart/form parser answers 400 for a form without a boundary or a field nested too deeply
and refuses a file field sent as text (BentoML would download it as a URL); its tensor
validator reports a TypeError (a JSON object where a number belongs) as a validation error;
the OpenAPI document gets the guard's 401, 413, 415, 429 and 504. `forbid_unknown_fields`: a
field an API does not take is a 400 `unknown_field`, not silently ignored.

Listening (`listen_per_worker`, in the `bentoml serve` process and in each worker): with more
than one worker, BentoML has every worker accept from one shared socket, and a few keep-alive
connections (a load balancer's, a benchmark's) can all end up on one worker while the other
idles. Each worker listens on a socket of its own instead (SO_REUSEPORT), and the kernel spreads
new connections over them by a hash of each connection.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from http import HTTPStatus

from service.errors import ClientError, parser_refusals


def tracing_configured() -> bool:
    from bentoml._internal.configuration.containers import BentoMLContainer

    tracing = BentoMLContainer.tracing
    return bool(tracing.exporter_type.get()) and (tracing.sample_rate.get() or 0) > 0


def dropped_middlewares() -> tuple[type, ...]:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return (TimeoutMiddleware,) if tracing_configured() else (TimeoutMiddleware, OpenTelemetryMiddleware)


INFRA_PATHS = ("/", "/docs.json", "/schema.json", "/livez", "/readyz", "/healthz", "/metrics")
REAL_PATH = "modelserve.real_path"


def route_template(service) -> Callable[[str], str]:
    """path -> the service route it matches (`/models/{name}`), else `other`."""
    from starlette.routing import compile_path

    exact = {*INFRA_PATHS, *(api.route for api in service.apis.values())}
    patterns = []
    for app, _, _ in service.mount_apps:
        for route in getattr(app, "routes", []):
            if hasattr(route, "path"):
                patterns.append((compile_path(route.path)[0], route.path))

    def template(path: str) -> str:
        if path in exact:
            return path
        return next((t for regex, t in patterns if regex.match(path)), "other")

    return template


def route_labelled(metrics_cls: type, template: Callable[[str], str]) -> type:
    """BentoML's metrics middleware, seeing the route template as the path; the application
    behind it gets the real path back."""

    class RouteLabelled(metrics_cls):
        def __init__(self, app, **kwargs):
            async def real_path(scope, receive, send):
                if REAL_PATH in scope:
                    scope["path"] = scope.pop(REAL_PATH)
                await app(scope, receive, send)

            super().__init__(real_path, **kwargs)

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await super().__call__(scope, receive, send)
            await super().__call__({**scope, "path": template(scope["path"]), REAL_PATH: scope["path"]}, receive, send)

    RouteLabelled.__name__ = f"RouteLabelled{metrics_cls.__name__}"
    return RouteLabelled


_TRIMMED = False


def trim_middlewares() -> None:
    """Make BentoML's app factory leave those middlewares out and label metrics by route (idempotent)."""
    global _TRIMMED
    if _TRIMMED:
        return
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from starlette.middleware import Middleware

    bentoml_middlewares = ServiceAppFactory.middlewares

    def middlewares(self):
        dropped = dropped_middlewares()
        kept = []
        for m in bentoml_middlewares.fget(self):
            if m.cls in dropped:
                continue
            if m.cls is RunnerTrafficMetricsMiddleware:
                m = Middleware(route_labelled(m.cls, route_template(self.service)), *m.args, **m.kwargs)
            kept.append(m)
        return kept

    ServiceAppFactory.middlewares = property(middlewares)
    _TRIMMED = True


def own_listener(shared: socket.socket, backlog: int) -> socket.socket:
    """A listening socket of this worker's own, bound to the shared socket's address, or the
    shared socket itself when the arbiter listens on it (one worker)."""
    if shared.family not in (socket.AF_INET, socket.AF_INET6) or shared.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return shared
    sock = socket.socket(shared.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(shared.getsockname())
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


_PER_WORKER = False


def listen_per_worker() -> None:
    """The arbiter binds the API address without listening on it when it starts more than one
    worker: the port is held, and a server started on it later still fails with "address in
    use" (listening sockets are there once workers are up). Each worker's uvicorn is then given
    a socket of its own on that address (`own_listener`). One worker keeps BentoML's socket, so
    connections wait in its queue while the worker restarts. Idempotent."""
    global _PER_WORKER
    if _PER_WORKER:
        return
    import uvicorn
    from bentoml._internal.utils import circus as bentoml_circus
    from circus.sockets import CircusSocket

    class BoundNotListening(CircusSocket):
        def bind_and_listen(self):
            self.bind((self.host, self.port))
            self.setblocking(False)
            self.host, self.port = self.getsockname()[:2]

    create_arbiter = bentoml_circus.create_standalone_arbiter

    def bound_only(sock, watchers):
        workers = sum(w.numprocesses for w in watchers if any(f"circus.sockets.{sock.name}" in str(a) for a in w.args or ()))
        if sock.is_unix or sock.socktype != socket.SOCK_STREAM or workers < 2:
            return sock
        bound = BoundNotListening(name=sock.name, host=sock.host, port=sock.port, family=sock.family, backlog=sock.backlog)
        sock.close()
        return bound

    def create_standalone_arbiter(watchers, *, sockets=None, **kwargs):
        return create_arbiter(watchers, sockets=sockets and [bound_only(s, watchers) for s in sockets], **kwargs)

    bentoml_circus.create_standalone_arbiter = create_standalone_arbiter

    serve = uvicorn.Server.serve

    async def serve_on_own_sockets(self, sockets=None):
        if sockets is not None:
            sockets = [own_listener(s, self.config.backlog) for s in sockets]
        return await serve(self, sockets=sockets)

    uvicorn.Server.serve = serve_on_own_sockets
    _PER_WORKER = True


def _refuse(error: ClientError):
    """Raise into BentoML (which can only answer a BentoMLException) and leave the real answer
    for the guard."""
    from bentoml.exceptions import BadInput

    holder = parser_refusals.get()
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


def forbid_unknown_fields(service) -> None:
    """A field an API does not take is a 400 `unknown_field`, not silently ignored: BentoML's
    input models (pydantic, built from each API's signature) are made to forbid extra fields."""
    for api in service.apis.values():
        api.input_spec.model_config["extra"] = "forbid"
        api.input_spec.model_rebuild(force=True)


def document_answers(service, media_types: dict[str, tuple[str, ...]], paths: dict) -> None:
    """The OpenAPI document as the service answers: the media types an API also answers
    ({route: ("image/png", ...)}) beside the one BentoML documents from its return annotation,
    a request body marked required where its schema has required fields (BentoML leaves it
    optional, so an empty POST looked valid), and `paths` (OpenAPI path items, as dicts) for
    the routes that are not BentoML APIs."""
    from _bentoml_sdk.service.factory import Service
    from bentoml._internal.service.openapi.specification import MediaType, PathItem, Schema
    from bentoml._internal.utils.cattr import bentoml_cattr

    generated = Service.openapi_spec

    def part(value, name):
        return value.get(name) if isinstance(value, dict) else getattr(value, name, None)

    def openapi_spec(self):
        spec = generated.fget(self)
        if self is not service:
            return spec
        for route, item in spec.paths.items():
            post = part(item, "post")
            if post is None:
                continue
            body = part(post, "requestBody")
            schemas = [part(m, "schema") for m in (part(body, "content") or {}).values()] if body is not None else []
            if any(part(s, "required") for s in schemas if s is not None):
                if isinstance(body, dict):
                    body["required"] = True
                else:
                    body.required = True
            for media_type in media_types.get(route, ()):
                answer = next(value for status, value in part(post, "responses").items() if str(status) == "200")
                part(answer, "content")[media_type] = MediaType(schema=Schema(type="string", format="binary"))
        spec.paths.update({route: bentoml_cattr.structure(item, PathItem) for route, item in paths.items()})
        return spec

    Service.openapi_spec = property(openapi_spec)


def described_service():
    """BentoML's Service class, whose OpenAPI description (the text at the top of the page at
    `/`) is the service's `description` also under `bentoml serve` from source: BentoML's own
    `doc` uses it only in a built bento (as the bento's README), a default README otherwise."""
    from _bentoml_sdk.service.factory import Service

    class DescribedService(Service):
        @property
        def doc(self) -> str:
            if self.bento is None and self.description:
                return self.description
            return super().doc

    return DescribedService
