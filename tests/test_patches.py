"""The patches of BentoML internals (service/patches.py): first, by name, everything they rely
on, so that a BentoML upgrade that moves one fails here and not in production; then their
effect on the ASGI stack, checked in a fresh interpreter (importing the service marks the
process as having checked the store, which later servers would inherit)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

MIDDLEWARES = """
import json
from _bentoml_impl.server.app import ServiceAppFactory
from service.service import ModelServe
ModelServe.inject_config()
print(json.dumps([m.cls.__name__ for m in ServiceAppFactory(ModelServe, is_main=True).middlewares]))
"""
TRACING = "services.modelserve.tracing.exporter_type=in_memory services.modelserve.tracing.sample_rate=1.0"


def middlewares(config_options: str = "") -> list[str]:
    env = {**os.environ, "BENTOML_CONFIG_OPTIONS": config_options}
    result = subprocess.run([sys.executable, "-c", MIDDLEWARES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_bentoml_is_the_version_the_patches_were_written_for():
    import tomllib
    from importlib.metadata import version

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pinned = [d for d in tomllib.load(f)["project"]["dependencies"] if d.startswith("bentoml")]
    assert pinned == [f"bentoml=={version('bentoml')}"], pinned
    with open(os.path.join(ROOT, "bentofile.yaml"), encoding="utf-8") as f:
        assert f'"bentoml=={version("bentoml")}"' in f.read()


def test_every_patched_attribute_is_there():
    import inspect

    from _bentoml_impl import serde
    from _bentoml_impl.server.app import ServiceAppFactory
    from _bentoml_sdk.service import openapi
    from _bentoml_sdk.validators import TensorSchema
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.server.http import instruments, traffic
    from opentelemetry.instrumentation import asgi

    assert isinstance(ServiceAppFactory.__dict__["middlewares"], property), "ServiceAppFactory.middlewares"
    assert hasattr(traffic, "TimeoutMiddleware"), "bentoml._internal.server.http.traffic.TimeoutMiddleware"
    assert hasattr(asgi, "OpenTelemetryMiddleware"), "opentelemetry.instrumentation.asgi.OpenTelemetryMiddleware"
    metrics_init = inspect.signature(instruments.RunnerTrafficMetricsMiddleware.__init__).parameters
    assert "app" in metrics_init, "RunnerTrafficMetricsMiddleware(app, ...)"
    assert 'endpoint = scope["path"]' in inspect.getsource(instruments.RunnerTrafficMetricsMiddleware.__call__), \
        "RunnerTrafficMetricsMiddleware labels endpoint with scope['path']"
    assert hasattr(BentoMLContainer.tracing, "exporter_type") and hasattr(BentoMLContainer.tracing, "sample_rate"), "tracing config"
    assert issubclass(serde.ALL_SERDE["multipart/form-data"], serde.MultipartSerde), "serde.ALL_SERDE, serde.MultipartSerde"
    assert callable(getattr(serde.MultipartSerde, "parse_request", None)), "MultipartSerde.parse_request"
    assert callable(TensorSchema.validate), "_bentoml_sdk.validators.TensorSchema.validate"
    assert isinstance(openapi.error_responses, dict) and 400 in openapi.error_responses, "openapi.error_responses[400]"
    from _bentoml_sdk.service.factory import Service
    from bentoml._internal.service.openapi.specification import MediaType, PathItem, Schema  # noqa: F401
    from bentoml._internal.utils.cattr import bentoml_cattr  # noqa: F401

    assert isinstance(Service.__dict__["openapi_spec"], property), "Service.openapi_spec (document_answers)"
    import attrs

    fields = {a.name for a in attrs.fields(Service)}
    assert isinstance(Service.__dict__["doc"], property) and {"bento", "description", "apis", "mount_apps"} <= fields, \
        "Service.doc, .bento, .description, .apis, .mount_apps (described_service, route_template)"


def test_what_listening_per_worker_relies_on():
    import inspect

    import uvicorn
    from _bentoml_impl.server import serving
    from _bentoml_impl.worker import service as worker
    from bentoml._internal.utils import circus as bentoml_circus
    from circus.sockets import CircusSocket
    from circus.watcher import Watcher

    serve_http = inspect.getsource(serving.serve_http)
    assert "from bentoml._internal.utils.circus import create_standalone_arbiter" in serve_http, \
        "serve_http imports create_standalone_arbiter when called (so the patched one is used)"
    assert "arbiter_kwargs" in serve_http and '"sockets": sockets' in serve_http and "$(circus.sockets.{API_SERVER_NAME})" in serve_http, \
        "serve_http hands the arbiter its sockets and names the API socket in the worker's args"
    assert "sockets" in inspect.signature(bentoml_circus.create_standalone_arbiter).parameters or \
        inspect.getfullargspec(bentoml_circus.create_standalone_arbiter).varkw, "create_standalone_arbiter(watchers, sockets=...)"
    assert "bind_and_listen" in CircusSocket.__dict__ and {"name", "host", "port", "family", "backlog"} <= set(inspect.signature(CircusSocket).parameters)
    watcher = Watcher("w", "true", args=["--fd", "$(circus.sockets.api)"], numprocesses=2)
    assert (watcher.numprocesses, watcher.args) == (2, ["--fd", "$(circus.sockets.api)"]), "Watcher.numprocesses, .args"
    assert "sockets" in inspect.signature(uvicorn.Server.serve).parameters, "uvicorn.Server.serve(sockets=...)"
    assert "Server(config).run(sockets=[socket])" in inspect.getsource(worker.main.callback), "the worker runs uvicorn on the socket it was handed"


def test_a_worker_listens_on_its_own_socket_unless_the_arbiter_listens():
    import socket

    from service.patches import own_listener

    with socket.socket() as shared:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.bind(("127.0.0.1", 0))
        own = [own_listener(shared, 16) for _ in range(2)]
        try:
            assert all(o is not shared and o.getsockname() == shared.getsockname() for o in own)
            assert all(o.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for o in own)
        finally:
            for o in own:
                o.close()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert own_listener(listening, 16) is listening


def test_connections_are_spread_over_both_workers(server):
    """The session server runs 2 workers: each listens on a socket of its own, 16 connections
    reach both (all on one would have odds of 2 in 65,536), and the port stays taken."""
    import socket
    from urllib.parse import urlparse

    import psutil

    port = urlparse(server).port
    on_port = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port]
    listeners = {c.pid for c in on_port if c.status == psutil.CONN_LISTEN}
    assert len(listeners) == 2, on_port
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
    try:
        for c in clients:
            c.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        for c in clients:
            assert c.recv(64).startswith(b"HTTP/1.1 200")
        mine = {c.getsockname()[1] for c in clients}
        serving = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.raddr and c.raddr.port in mine}
        assert serving == listeners
    finally:
        for c in clients:
            c.close()
    with socket.socket() as late, pytest.raises(OSError, match="in use"):
        late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        late.bind(("127.0.0.1", port))


FORBIDDING = """
import json
from service.service import ModelServe
print(json.dumps({name: api.input_spec.model_config.get("extra") for name, api in ModelServe.apis.items()}))
"""


def test_unknown_fields_are_forbidden_on_every_api(smoke_store):
    result = subprocess.run([sys.executable, "-c", FORBIDDING], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    extra = json.loads(result.stdout.splitlines()[-1])
    assert "classify" in extra and set(extra.values()) == {"forbid"}, extra


def test_the_timeout_and_idle_tracing_middlewares_are_left_out(smoke_store):
    stack = middlewares()
    assert "TimeoutMiddleware" not in stack and "OpenTelemetryMiddleware" not in stack
    assert {"Guard", "RouteLabelledRunnerTrafficMetricsMiddleware", "AccessLogMiddleware"} <= set(stack)


def test_configured_tracing_keeps_its_middleware(smoke_store):
    stack = middlewares(TRACING)
    assert "OpenTelemetryMiddleware" in stack and "TimeoutMiddleware" not in stack
    assert "Guard" in stack
