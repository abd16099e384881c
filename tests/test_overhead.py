"""BentoML's timeout middleware, and its tracing middleware while tracing is off, are left out
of the service's ASGI stack (service/overhead.py). Checked in a fresh interpreter: importing the
service marks the process as having checked the store, which later servers would inherit."""

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


def test_the_timeout_and_idle_tracing_middlewares_are_left_out(smoke_store):
    stack = middlewares()
    assert "TimeoutMiddleware" not in stack and "OpenTelemetryMiddleware" not in stack
    assert {"Guard", "RunnerTrafficMetricsMiddleware", "AccessLogMiddleware"} <= set(stack)


def test_configured_tracing_keeps_its_middleware(smoke_store):
    stack = middlewares(TRACING)
    assert "OpenTelemetryMiddleware" in stack and "TimeoutMiddleware" not in stack
    assert "Guard" in stack
