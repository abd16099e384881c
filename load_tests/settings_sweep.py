"""Which worker, thread and batching settings serve best on this machine?

Starts the service once per setting on a free loopback port (on the models in $BENTOML_HOME),
sends the same bounded load to each, and prints throughput and latency side by side:

    python -m load_tests.settings_sweep [--requests 800] [--concurrency 32]

The client is one asyncio process on the same machine: the figures compare settings with
each other, not with a server that has the machine to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import httpx
import numpy as np

from load_tests.server import running

SETTINGS = [
    {"MODELSERVE_WORKERS": "1", "MODELSERVE_ORT_THREADS": "1", "MODELSERVE_MAX_LATENCY_MS": "500"},
    {"MODELSERVE_WORKERS": "1", "MODELSERVE_ORT_THREADS": "1", "MODELSERVE_MAX_LATENCY_MS": "5000"},
    {"MODELSERVE_WORKERS": "1", "MODELSERVE_ORT_THREADS": "2", "MODELSERVE_MAX_LATENCY_MS": "5000"},
    {"MODELSERVE_WORKERS": "2", "MODELSERVE_ORT_THREADS": "1", "MODELSERVE_MAX_LATENCY_MS": "5000"},
    {"MODELSERVE_WORKERS": "2", "MODELSERVE_ORT_THREADS": "1", "MODELSERVE_MAX_LATENCY_MS": "5000", "MODELSERVE_MAX_BATCH": "16"},
]


def payloads() -> list[tuple[str, dict]]:
    """A mix of the hot paths: single-image classification on each classifier and sentiment."""
    rng = np.random.default_rng(0)
    image = {"images": np.round(rng.random((1, 28, 28)), 3).tolist()}
    return [
        ("/classify", {**image, "model": "cnn"}),
        ("/classify", {**image, "model": "resnet"}),
        ("/classify", {**image, "model": "resnet-int8"}),
        ("/sentiment", {"texts": ["质量很好，物流也快，非常满意"]}),
    ]


async def drive(url: str, total: int, concurrency: int) -> dict:
    mix = payloads()
    latencies: list[float] = []
    errors = 0
    queue = iter(range(total))

    async def user(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in queue:
            path, body = mix[i % len(mix)]
            started = time.perf_counter()
            try:
                response = await client.post(url + path, json=body)
                errors += response.status_code != 200
            except httpx.HTTPError:  # a dropped connection counts as an error, not a crash
                errors += 1
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for path, body in mix * 5:  # warm-up, not counted
            await client.post(url + path, json=body)
        started = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests_per_second": total / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    rows = []
    for setting in SETTINGS:
        with running(setting) as url:
            result = asyncio.run(drive(url, args.requests, args.concurrency))
        rows.append({**setting, **result})
        label = ", ".join(f"{k.removeprefix('MODELSERVE_').lower()}={v}" for k, v in setting.items())
        print(f"{label:<40} {result['requests_per_second']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
              f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors']}", flush=True)
    folder = os.environ.get("REPORTS_DIR", "reports")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "settings_sweep.json"), "w") as f:
        json.dump({"requests": args.requests, "concurrency": args.concurrency, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
