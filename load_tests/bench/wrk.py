"""The load generator: one wrk run with load_tests/wrk/post.lua, and its output parsed."""

from __future__ import annotations

import json
import os
import resource
import subprocess

from load_tests.bench.common import ROOT

WRK_SCRIPT = os.path.join(ROOT, "load_tests", "wrk", "post.lua")
WRK_TIMEOUT = "30s"


WRK_JSON_PREFIX = "WRK_JSON "


def parse_wrk(stdout: str) -> dict:
    """wrk's output with load_tests/wrk/post.lua -> figures in seconds and milliseconds.

    `ok` counts 2xx answers (from the script's per-status counts), `non2xx` the other
    answers, `socket_errors` connect/read/write/timeout errors; `rps_ok` is 2xx per second.
    The latency percentiles cover every answered request, whatever its status.
    """
    line = next((ln for ln in stdout.splitlines() if ln.startswith(WRK_JSON_PREFIX)), None)
    if line is None:
        raise ValueError(f"no {WRK_JSON_PREFIX.strip()} line in wrk's output:\n{stdout[-2000:]}")
    raw = json.loads(line[len(WRK_JSON_PREFIX) :])
    seconds = raw["duration_us"] / 1e6
    statuses = {int(k): int(v) for k, v in raw.get("statuses", {}).items()}
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    errors = raw["errors"]
    lat = raw["latency_us"]
    return {
        "seconds": seconds,
        "requests": raw["requests"],
        "ok": ok,
        "non2xx": sum(statuses.values()) - ok,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "timeouts": errors["timeout"],
        "statuses": dict(sorted(statuses.items())),
        "rps": raw["requests"] / seconds if seconds else 0.0,
        "rps_ok": ok / seconds if seconds else 0.0,
        "mean_ms": lat["mean"] / 1000,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p95_ms": lat["p95"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "max_ms": lat["max"] / 1000,
    }


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str, body_file: str, content_type: str, connections: int, seconds: int, headers: dict[str, str] | None = None
) -> tuple[dict, float]:
    """One wrk run; returns (parsed figures, wrk's CPU seconds). `headers` are sent with every
    request besides the Content-Type (post.lua reads them from WRK_HEADERS, one per line)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", WRK_TIMEOUT, "-s", WRK_SCRIPT, url]
    env = {**os.environ, "WRK_BODY_FILE": body_file, "WRK_CONTENT_TYPE": content_type}
    env["WRK_HEADERS"] = "\n".join(f"{name}: {value}" for name, value in (headers or {}).items())
    before = children_cpu_seconds()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    cpu = children_cpu_seconds() - before
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()[-1000:]}")
    return parse_wrk(result.stdout), cpu
