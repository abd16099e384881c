"""`tight`: one dedicated server (1 worker) with small limits and API keys, for 401/413/429/504,
a burst, and a worker killed with SIGKILL. `load_tests/soak.py` (`make soak`) is the long run;
`test_soak` runs it only with `-m slow`."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
import requests

from conftest import _scratch
from load_tests import server as launcher
from load_tests import soak
from test_hardening import JSON, TIMEOUT, assert_error, good_request_works, parse_answer, post_head, raw_exchange
from test_service import ZERO_IMAGE, post


TIGHT_KEYS = ("alpha-key-0001", "beta-key-0002")
FILE_KEY = "gamma-key-0003"
TIGHT_TIMEOUT_S = 2
TIGHT_BODY_BYTES = 200_000


@pytest.fixture(scope="module")
def tight(smoke_store):
    """(url, process): 1 worker, 2 requests at a time, 2 s, 200 kB, three API keys, /metrics
    protected. On a home of its own, like every server the launcher starts."""
    keys_file = Path(_scratch) / "api-keys"
    keys_file.write_text(f"# test keys\n{FILE_KEY}\n")
    env = {
        "MODELSERVE_WORKERS": "1",
        "MODELSERVE_MAX_CONCURRENCY": "2",
        "MODELSERVE_REQUEST_TIMEOUT_S": str(TIGHT_TIMEOUT_S),
        "MODELSERVE_MAX_BODY_BYTES": str(TIGHT_BODY_BYTES),
        "MODELSERVE_API_KEYS": ",".join(TIGHT_KEYS),
        "MODELSERVE_API_KEYS_FILE": str(keys_file),
        "MODELSERVE_PROTECT_METRICS": "true",
    }
    process, url = launcher.start(env, log_dir=_scratch)
    try:
        launcher.wait_ready(process, url)
        yield url, process
    finally:
        output = launcher.stop(process)
        for key in (*TIGHT_KEYS, FILE_KEY):
            assert key not in output, "an API key was logged"


def auth(key: str = TIGHT_KEYS[0]) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_api_keys_guard_everything_but_health_and_docs(tight):
    url, _ = tight
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TIGHT_KEYS[0]}):
        answer = requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=headers, timeout=TIMEOUT)
        assert_error(answer, 401, "unauthorized", "Authorization")
        assert answer.headers["www-authenticate"].startswith("Bearer")
    for path in ("/models", "/models/cnn", "/metrics", "/v2/models/cnn"):
        assert_error(requests.get(f"{url}{path}", timeout=TIMEOUT), 401, "unauthorized")
    for key in (*TIGHT_KEYS, FILE_KEY):
        good_request_works(url, auth(key))
        assert requests.get(f"{url}/models/cnn", headers=auth(key), timeout=TIMEOUT).status_code == 200
    assert "modelserve_refused_requests_total" in requests.get(f"{url}/metrics", headers=auth(), timeout=TIMEOUT).text
    for path in ("/livez", "/readyz", "/healthz", "/docs.json", "/"):
        assert requests.get(f"{url}{path}", timeout=TIMEOUT).status_code == 200, path


def test_the_body_limit_follows_its_setting(tight):
    url, _ = tight
    body = json.dumps({"images": [ZERO_IMAGE]})
    assert_error(post(url, "/classify", data=body + " " * TIGHT_BODY_BYTES, headers={**JSON, **auth()}), 413, "body_too_large", "body")
    answer, _ = raw_exchange(url, post_head("/classify", "Transfer-Encoding: chunked\r\n", TIGHT_KEYS[1]), [b" " * 8192] * 400, chunked=True)
    assert parse_answer(answer)[0] == 413
    assert post(url, "/classify", data=body + " " * (TIGHT_BODY_BYTES - len(body)), headers={**JSON, **auth()}).status_code == 200


def test_overload_answers_429_at_once_a_stuck_request_504_then_the_service_serves(tight):
    """Two requests whose bodies never finish hold both slots: a third is answered 429 at once,
    health and /metrics still answer, the two are cut off with 504 after the timeout."""
    url, _ = tight
    where = urlparse(url)
    stuck = []
    for _ in range(2):
        s = socket.create_connection((where.hostname, where.port), timeout=TIMEOUT)
        s.sendall(post_head("/classify", "Content-Length: 1000\r\n", TIGHT_KEYS[0]) + b'{"images": ')
        stuck.append(s)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        refused = requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=auth(), timeout=TIMEOUT)
        assert time.monotonic() - started < TIGHT_TIMEOUT_S, "a request over the limit must not queue"
        assert_error(refused, 429, "overloaded")
        assert refused.headers["retry-after"] == "1"
        for path in ("/readyz", "/livez", "/healthz"):
            assert requests.get(f"{url}{path}", timeout=TIMEOUT).status_code == 200
        assert requests.get(f"{url}/metrics", headers=auth(), timeout=TIMEOUT).status_code == 200
        for s in stuck:
            answer = b""
            while (part := s.recv(65536)):
                answer += part
            status, headers, body = parse_answer(answer)
            assert status == 504 and body == {"error": "timeout", "detail": f"no answer within {TIGHT_TIMEOUT_S} s", "field": None}
    finally:
        for s in stuck:
            s.close()
    good_request_works(url, auth())


def test_after_a_burst_the_service_serves_normally(tight):
    url, _ = tight

    def generate(i):
        try:
            return post(url, "/gan/generate", json={"n": 64, "seed": i, "format": "array"}, headers=auth()).status_code
        except requests.RequestException as e:
            return type(e).__name__

    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(generate, range(48)))
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses
    print(f"\nburst of 48 (24 at a time) on a 2-request limit: {statuses.count(200)} x 200, {statuses.count(429)} x 429")
    for _ in range(3):
        good_request_works(url, auth())


def test_a_worker_killed_with_sigkill_is_replaced(tight):
    url, process = tight
    (worker,) = launcher.workers(process)
    started = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    with ThreadPoolExecutor(max_workers=2) as pool:  # sent while no worker runs: the backlog holds them
        meanwhile = [pool.submit(requests.post, f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=auth(), timeout=90) for _ in range(2)]
        answered = [f.result().status_code for f in meanwhile]
    assert answered == [200, 200], answered
    recovered = None
    while time.monotonic() - started < 90:
        try:
            answer = requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=auth(), timeout=10)
            new = [w.pid for w in launcher.workers(process)]
            if answer.status_code == 200 and new and worker.pid not in new:
                recovered = time.monotonic() - started
                break
            assert answer.status_code < 500 or answer.status_code == 503, answer.text
        except (requests.ConnectionError, requests.Timeout, psutil.NoSuchProcess):
            pass
        time.sleep(0.1)
    assert recovered is not None, launcher.output(process)[-3000:]
    print(f"\nworker {worker.pid} killed with SIGKILL; a new worker answered after {recovered:.1f} s")
    good_request_works(url, auth())


# The long run: `make soak`, or `pytest -m slow`.


@pytest.mark.slow
def test_soak(smoke_store):
    report = soak.run(minutes=float(os.environ.get("SOAK_MINUTES", 5)), log_dir=_scratch)
    print("\n" + soak.summary(report))
    assert report["errors"] == 0, report["error_samples"]
    assert report["rss_growth"] < 0.10
