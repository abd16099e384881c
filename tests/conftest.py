"""Every test run gets its own empty model store and report folder, set before bentoml loads.

`smoke_store` trains all six models with the tiny smoke profile into that store (their floors
replaced explicitly: smoke models cannot earn the real ones, which `make models` applies);
`server` runs a real `bentoml serve` on it, on a free 127.0.0.1 port, and always stops it.
"""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import requests

_scratch = tempfile.mkdtemp(prefix="modelserve-tests-")
os.environ["BENTOML_HOME"] = os.path.join(_scratch, "bentoml")
os.environ["REPORTS_DIR"] = os.path.join(_scratch, "reports")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ.setdefault("TRAIN_THREADS", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_START_SECONDS = 90


def pytest_unconfigure(config):
    shutil.rmtree(_scratch, ignore_errors=True)


def any_quality(name: str):
    """The spec with a floor every smoke-trained model meets, to test what is around the floor."""
    from modelspec import SPECS, Floor

    spec = SPECS[name]
    if spec.floor.relative_to is None:
        return dataclasses.replace(spec, floor=Floor(spec.floor.metric, minimum=0.0))
    return dataclasses.replace(spec, floor=dataclasses.replace(spec.floor, max_drop=1.0))


@pytest.fixture(scope="session")
def smoke_store():
    """{name: Result} for all six models, trained with the smoke profile into the test store."""
    from export import pipeline
    from export.recipe import TrainOptions
    from modelspec import EXPORT_ORDER

    options = TrainOptions(profile="smoke", progress=False)
    return {name: pipeline.run(name, options, spec_override=any_quality(name)) for name in EXPORT_ORDER}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env_overrides: dict | None = None):
    """`bentoml serve` on a free loopback port; its output goes to a file (a pipe nobody reads
    would fill up and block the server)."""
    port = free_port()
    env = {**os.environ, "MODELSERVE_WORKERS": "2", **(env_overrides or {})}
    log = tempfile.NamedTemporaryFile(prefix="bentoml-serve-", suffix=".log", dir=_scratch, delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:ModelServe", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log_path = log.name
    return process, f"http://127.0.0.1:{port}"


def server_output(process) -> str:
    with open(process.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def wait_ready(process, url: str, seconds: float = SERVER_START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server_output(process)[-5000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"bentoml serve was not ready within {seconds} s")


def stop_server(process) -> str:
    """Stop the whole process group (the server and its workers); returns what it printed."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return server_output(process)


@pytest.fixture(scope="session")
def server(smoke_store):
    process, url = start_server()
    try:
        wait_ready(process, url)
        yield url
    finally:
        stop_server(process)
