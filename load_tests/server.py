"""Start a real `bentoml serve` on a free 127.0.0.1 port, wait for /readyz, always stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_SECONDS = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(env_overrides: dict | None = None, log_dir: str | None = None) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` on a free loopback port; its output goes to a file (a pipe nobody reads
    would fill up and block the server)."""
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env_overrides or {})}
    log = tempfile.NamedTemporaryFile(prefix="bentoml-serve-", suffix=".log", dir=log_dir, delete=False)
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


def output(process: subprocess.Popen) -> str:
    with open(process.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def wait_ready(process: subprocess.Popen, url: str, seconds: float = START_SECONDS) -> float:
    """Seconds until /readyz answered 200; raises with the server's output if it died or timed out."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{output(process)[-5000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"bentoml serve was not ready within {seconds} s:\n{output(process)[-5000:]}")


def stop(process: subprocess.Popen) -> str:
    """Stop the whole process group (the server and its workers); returns what it printed."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return output(process)


@contextlib.contextmanager
def running(env_overrides: dict | None = None, log_dir: str | None = None):
    """with running({...}) as url: a ready server, stopped on the way out whatever happens."""
    process, url = start(env_overrides, log_dir)
    try:
        wait_ready(process, url)
        yield url
    finally:
        stop(process)
