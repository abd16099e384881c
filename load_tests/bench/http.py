"""Over HTTP: the servers (bentoml serve, the naive app), one measured load point with the
client's and the server's CPU, and the sweep of every endpoint at every concurrency."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from load_tests.bench.common import ROOT, Profile
from load_tests.bench.inputs import CLASSIFIER, ENDPOINTS, Endpoint, Payloads, Store
from load_tests.bench.procstat import ServerProcess
from load_tests.bench.profiling import PROFILE_SECONDS, profile_under_load
from load_tests.bench.wrk import run_wrk

NOOP_ROUTE = "MODELSERVE_NOOP_ROUTE"  # the environment variable that makes the service serve /noop


def parse_batch_rows(metrics_text: str, series: str = "modelserve_batch_rows") -> dict[str, dict[str, float]]:
    """Prometheus text -> {model: {"batches": count, "rows": sum}} of a histogram, summed over versions."""
    found: dict[str, dict[str, float]] = {}
    pattern = re.compile(rf'^{series}_(sum|count)\{{([^}}]*)\}} ([0-9.eE+-]+)$')
    for line in metrics_text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        model = labels.get("model", "?")
        entry = found.setdefault(model, {"batches": 0.0, "rows": 0.0})
        entry["batches" if m.group(1) == "count" else "rows"] += float(m.group(3))
    return found


def get(url: str, timeout: float = 2.0):
    import requests

    return requests.get(url, timeout=timeout)


class Server(ServerProcess):
    """A started server process (bentoml serve, or the naive uvicorn app), in its own session."""

    def __init__(self, kind: str, env: dict | None = None, log_dir: str | None = None):
        from load_tests import server as launcher

        self.kind = kind
        started = time.perf_counter()
        if kind == "bentoml":
            # /noop, the benchmark's ceiling, is served only when asked for
            self.process, self.url = launcher.start({NOOP_ROUTE: "true", **(env or {})}, log_dir)
            self.log = self.process.log_path
        else:
            port = launcher.free_port()
            self.url = f"http://127.0.0.1:{port}"
            fd, self.log = tempfile.mkstemp(prefix="naive-app-", suffix=".log", dir=log_dir)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "load_tests.naive_app:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            os.close(fd)
            self.process.log_path = self.log
        try:
            self.ready_s = launcher.wait_ready(self.process, self.url, seconds=120, started=started, poll_s=0.05)
        except BaseException:
            self.stop()
            raise


def check_endpoint(url: str, path: str, body: bytes, content_type: str) -> str | None:
    """None if one request answers 2xx, else why not."""
    import requests

    try:
        response = requests.post(url + path, data=body, headers={"Content-Type": content_type}, timeout=30)
    except requests.RequestException as e:
        return f"request failed: {e}"
    if response.status_code // 100 != 2:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return None


def measure(servers: dict[str, Server], label: str, ep: Endpoint, content_type: str, body_file: str, c: int, profile: Profile) -> dict:
    """One load point against servers[label]: an unmeasured warm-up, then the measured run.
    The other (idle) servers' CPU over the same time is recorded too."""
    server = servers[label]
    url = server.url + ep.path
    run_wrk(url, body_file, content_type, c, profile.warmup_s)
    others = [s for name, s in servers.items() if name != label]
    cpu0, idle0, t0 = server.cpu_seconds(), sum(s.cpu_seconds() for s in others), time.perf_counter()
    figures, client_cpu = run_wrk(url, body_file, content_type, c, profile.duration_s)
    wall = time.perf_counter() - t0
    server_cpu = server.cpu_seconds() - cpu0
    idle_cpu = sum(s.cpu_seconds() for s in others) - idle0
    return {
        "server": label,
        "endpoint": ep.key,
        "concurrency": c,
        **figures,
        "client_cpu_s": client_cpu,
        "client_cores": client_cpu / wall,
        "server_cpu_s": server_cpu,
        "server_cores": server_cpu / wall,
        "idle_servers_cores": idle_cpu / wall,
        "server_rss_mib": server.rss_bytes() / 2**20,
    }


NAIVE_ENDPOINTS = {"classify"}


def sweep(servers: dict[str, Server], payloads: Payloads, files: dict, profile: Profile, log) -> dict:
    """Every endpoint at every concurrency against every server. The servers run side by side
    and take turns point by point (endpoint, concurrency, then server), so a change in the
    machine's load during the run hits them alike; the ones not measured sit idle."""
    out = {label: {"points": [], "unavailable": {}} for label in servers}
    for ep in ENDPOINTS:
        content_type = payloads.image_form_type if ep.content_type == "form" else ep.content_type
        body = getattr(payloads, ep.body)
        targets = []
        for label, server in servers.items():
            if server.kind == "naive" and ep.key not in NAIVE_ENDPOINTS:
                continue
            problem = check_endpoint(server.url, ep.path, body, content_type)
            if problem:
                out[label]["unavailable"][ep.key] = problem
                log(f"  {label} {ep.path}: skipped, {problem}")
            else:
                targets.append(label)
        for c in profile.concurrency:
            for label in targets:
                p = measure(servers, label, ep, content_type, files[ep.body], c, profile)
                out[label]["points"].append(p)
                log(
                    f"  {label:<12} {ep.path:<16} c={c:<3} {p['rps_ok']:8.1f} req/s  p50 {p['p50_ms']:7.2f} ms  "
                    f"p99 {p['p99_ms']:7.2f} ms  non-2xx {p['non2xx']}  errors {p['socket_errors']}  "
                    f"cpu server {p['server_cores']:.2f} / wrk {p['client_cores']:.2f} / idle servers {p['idle_servers_cores']:.2f} cores"
                )
    for label, server in servers.items():
        if server.kind == "bentoml":
            try:
                out[label]["batch_rows"] = parse_batch_rows(get(server.url + "/metrics", timeout=10).text)
            except Exception as e:
                out[label]["batch_rows_error"] = str(e)
    return out


def http_benchmarks(store: Store, payloads: Payloads, profile: Profile, log) -> dict:
    workdir = tempfile.mkdtemp(prefix="modelserve-bench-")
    files = {}
    for attr in ("classify_json", "image_form", "sentiment_json", "gan_json"):
        files[attr] = os.path.join(workdir, attr)
        with open(files[attr], "wb") as f:
            f.write(getattr(payloads, attr))
    results: dict = {"cold_start_s": [], "sweeps": {}, "ready_s": {}}
    servers: dict[str, Server] = {}
    started: list[Server] = []  # every server this run started, stopped whatever happens
    try:
        # Cold starts of the default settings, one at a time; the last one stays up for the sweep.
        for i in range(profile.cold_starts):
            server = Server("bentoml", {}, workdir)
            started.append(server)
            results["cold_start_s"].append(server.ready_s)
            log(f"cold start {i + 1}/{profile.cold_starts}: ready in {server.ready_s:.2f} s")
            if i < profile.cold_starts - 1:
                server.stop()
        servers["batching on"] = server
        try:
            servers["batching off"] = Server("bentoml", {"MODELSERVE_MAX_BATCH": "1"}, workdir)
            started.append(servers["batching off"])
            results["ready_s"]["batching off"] = servers["batching off"].ready_s
        except RuntimeError as e:
            results["sweeps"]["batching off"] = {"points": [], "unavailable": {"server": str(e)[:500]}}
            log(f"batching off (MODELSERVE_MAX_BATCH=1): the server did not start: {str(e)[:300]}")
        try:
            servers["naive"] = Server("naive", {"NAIVE_CNN_ONNX": store.path(CLASSIFIER)}, workdir)
            started.append(servers["naive"])
            results["ready_s"]["naive"] = servers["naive"].ready_s
        except RuntimeError as e:  # recorded, and the run goes on without it
            results["sweeps"]["naive"] = {"points": [], "unavailable": {"server": str(e)[-500:]}}
            log(f"naive FastAPI app: the server did not start: {str(e)[-300:]}")
        log(f"servers up: {', '.join(f'{k} ({s.ready_s:.1f} s to ready)' for k, s in servers.items())}; "
            f"{len(profile.concurrency)} concurrency levels x {profile.duration_s} s per point")
        results["sweeps"].update(sweep(servers, payloads, files, profile, log))
        classify = next(ep for ep in ENDPOINTS if ep.key == "classify")
        log(f"profiling the worker with py-spy: {classify.path} at c=32 for {PROFILE_SECONDS} s")
        results["profile"] = profile_under_load(servers["batching on"], classify, classify.content_type, files[classify.body], 32)
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results
