"""Start a real `bentoml serve` on a free 127.0.0.1 port, wait for /readyz, always stop it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_SECONDS = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def home_of_its_own(parent: str | None = None) -> str:
    """A new BENTOML_HOME whose `models` is a link to the current store's. `bentoml serve`
    empties $BENTOML_HOME/prometheus_multiproc_dir when it starts, and every server on a home
    writes its metrics there: two servers on one home would mix and zero each other's."""
    home = tempfile.mkdtemp(prefix="bentoml-home-", dir=parent)
    store = os.path.join(os.environ.get("BENTOML_HOME", os.path.expanduser("~/bentoml")), "models")
    os.symlink(os.path.abspath(store), os.path.join(home, "models"))
    return home


def start(env_overrides: dict | None = None, log_dir: str | None = None) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` on a free loopback port, on a home of its own over the store's models
    unless BENTOML_HOME is given; its output goes to a file (a pipe nobody reads would fill up
    and block the server)."""
    port = free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env_overrides or {})}
    own_home = None if "BENTOML_HOME" in (env_overrides or {}) else home_of_its_own(log_dir)
    if own_home:
        env["BENTOML_HOME"] = own_home
    log = tempfile.NamedTemporaryFile(prefix="bentoml-serve-", suffix=".log", dir=log_dir, delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:ModelServe", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log_path, process.own_home = log.name, own_home
    return process, f"http://127.0.0.1:{port}"


def output(process: subprocess.Popen) -> str:
    with open(process.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def wait_ready(
    process: subprocess.Popen, url: str, seconds: float = START_SECONDS, started: float | None = None, poll_s: float = 0.2
) -> float:
    """Seconds from `started` (a time.perf_counter() taken before the process was created; by
    default now) until /readyz answered 200; raises with the server's output if it died or timed out."""
    started = time.perf_counter() if started is None else started
    while time.perf_counter() - started < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{output(process)[-5000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"the server was not ready within {seconds} s:\n{output(process)[-5000:]}")


def is_alive(process: psutil.Process) -> bool:
    """Alive and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def workers(process: subprocess.Popen) -> list[psutil.Process]:
    """The live BentoML worker processes under a server."""
    found = []
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" in " ".join(child.cmdline()) and is_alive(child):
                found.append(child)
        except psutil.Error:
            pass
    return found


def stop(process: subprocess.Popen) -> str:
    """SIGTERM to the server's process group, SIGKILL after 20 s; then the same to whatever it
    had started that is still alive (BentoML's workers run in sessions of their own, out of the
    group). Removes the home start() made for it (its link to the store's models, not the
    models); returns what it printed."""
    if process.poll() is None:
        try:
            started = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            started = []
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [child for child in started if is_alive(child)]
            for child in alive:
                with contextlib.suppress(psutil.Error):
                    child.send_signal(sig)
            _, started = psutil.wait_procs(alive, timeout=10)
    if getattr(process, "own_home", None):
        shutil.rmtree(process.own_home, ignore_errors=True)
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
