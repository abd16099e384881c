"""The patches of BentoML internals (service/patches.py): first, by name, everything they rely
on, so that a BentoML upgrade that moves one fails here and not in production; then their
effect on the ASGI stack, checked in a fresh interpreter (importing the service marks the
process as having checked the store, which later servers would inherit)."""

import json
import os
import subprocess
import sys

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
