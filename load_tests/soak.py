"""Soak: minutes of mixed load on a server of its own, for memory growth and errors.

    python -m load_tests.soak [--minutes 5] [--concurrency 8] [--workers 2] [--warmup 30]

Starts `bentoml serve` on the models in BENTOML_HOME (the Makefile's `make soak` sets it), sends
a mix of every public endpoint plus client mistakes that must answer 4xx, from `concurrency`
threads, for `warmup` seconds and then `minutes`. Reports the requests, the errors (a status
other than the one expected, or no answer) and the memory of the server's whole process tree
(sum of RSS) after the warm-up and at the end. Exits 1 with any error, or with RSS growth of
10% or more.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import requests
from PIL import Image

from load_tests.server import start, stop, wait_ready
from modelspec import DIGIT_LABELS, IMAGE_CLASSIFICATION, SPECS

MAX_RSS_GROWTH = 0.10


def tree_rss(pid: int) -> int:
    """Bytes of resident memory of a process and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def digit_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.full((64, 64), 255, dtype=np.uint8)
    pixels[16:48, 28 + rng.integers(-4, 4) : 36 + rng.integers(-4, 4)] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


DIGIT_CLASSIFIERS = [n for n, s in SPECS.items() if s.task == IMAGE_CLASSIFICATION and list(s.labels) == DIGIT_LABELS]


def requests_mix():
    """An endless cycle of (name, method, path, kwargs, expected status)."""
    zero = [[0.0] * 28] * 28
    rng = np.random.default_rng(0)
    rows = rng.random((4, 28, 28)).round(3).tolist()
    upload = digit_png(0)
    mix = [
        *[(f"classify {model}", "post", "/classify", {"json": {"images": rows[: 1 + i % 4], "model": model}}, 200)
          for i, model in enumerate(DIGIT_CLASSIFIERS)],
        ("classify image", "post", "/classify/image", {"files": {"image": ("d.png", upload, "image/png")}}, 200),
        ("sentiment", "post", "/sentiment", {"json": {"texts": ["质量很好，非常满意", "太差了"]}}, 200),
        ("gan", "post", "/gan/generate", {"json": {"n": 8, "seed": 1}}, 200),
        ("gan label", "post", "/gan/generate", {"json": {"n": 4, "seed": 3, "label": [1, 2, 3, 4]}}, 200),
        ("vae sample", "post", "/vae/sample", {"json": {"n": 4, "seed": 2, "format": "base64"}}, 200),
        ("vae reconstruct", "post", "/vae/reconstruct", {"files": {"image": ("d.png", upload, "image/png")}}, 200),
        ("vae interpolate", "post", "/vae/interpolate", {"json": {"seed_a": 1, "seed_b": 2, "steps": 6}}, 200),
        ("infer cnn", "post", "/infer/cnn", {"json": {"image": [[zero]]}}, 200),
        ("models", "get", "/models", {}, 200),
        ("bad shape", "post", "/classify", {"json": {"images": [[1, 2]]}}, 400),
        ("bad image", "post", "/classify/image", {"files": {"image": ("x.png", b"not an image", "image/png")}}, 400),
        ("bad label", "post", "/gan/generate", {"json": {"n": 2, "label": 10}}, 400),
        ("bad json", "post", "/sentiment", {"data": b'{"texts": [', "headers": {"content-type": "application/json"}}, 400),
        ("nan", "post", "/infer/cnn", {"data": '{"image": [[%s]]}' % json.dumps([[float("nan")] * 28] * 28), "headers": {"content-type": "application/json"}}, 400),
    ]
    return itertools.cycle(mix)


def run(minutes: float = 5, concurrency: int = 8, workers: int = 2, warmup_s: float = 30, log_dir: str | None = None, env: dict | None = None) -> dict:
    process, url = start({"MODELSERVE_WORKERS": str(workers), **(env or {})}, log_dir)
    report = {"minutes": minutes, "concurrency": concurrency, "workers": workers, "requests": 0, "errors": 0, "error_samples": [], "rss_samples": []}
    try:
        wait_ready(process, url)
        mix = requests_mix()
        lock = threading.Lock()
        phase = {"measuring": False, "stop_at": time.monotonic() + warmup_s + minutes * 60}

        def worker():
            session = requests.Session()
            while time.monotonic() < phase["stop_at"]:
                with lock:
                    name, method, path, kwargs, expected = next(mix)
                try:
                    status = getattr(session, method)(f"{url}{path}", timeout=30, **kwargs).status_code
                except requests.RequestException as e:
                    status = type(e).__name__
                with lock:
                    if phase["measuring"]:
                        report["requests"] += 1
                        if status != expected:
                            report["errors"] += 1
                            if len(report["error_samples"]) < 20:
                                report["error_samples"].append(f"{name}: {status} (expected {expected})")

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(worker) for _ in range(concurrency)]
            time.sleep(warmup_s)
            with lock:
                phase["measuring"] = True
            report["rss_start"] = tree_rss(process.pid)
            started = time.monotonic()
            while time.monotonic() < phase["stop_at"]:
                time.sleep(min(10, max(0.1, phase["stop_at"] - time.monotonic())))
                report["rss_samples"].append((round(time.monotonic() - started), tree_rss(process.pid)))
            for future in futures:
                future.result()
            report["rss_end"] = tree_rss(process.pid)
            report["seconds"] = time.monotonic() - started
        alive = requests.get(f"{url}/readyz", timeout=10).status_code == 200
        if not alive:
            report["errors"] += 1
            report["error_samples"].append("/readyz did not answer 200 after the run")
    finally:
        stop(process)
    report["rss_growth"] = report["rss_end"] / report["rss_start"] - 1
    return report


def summary(report: dict) -> str:
    mib = 2**20
    lines = [
        f"soak: {report['minutes']:g} min after warm-up, {report['concurrency']} threads, {report['workers']} workers",
        f"requests {report['requests']} ({report['requests'] / max(report.get('seconds', 1), 1):.1f}/s), errors {report['errors']}",
        f"server RSS (process tree) {report['rss_start'] / mib:.0f} MiB after warm-up -> {report['rss_end'] / mib:.0f} MiB at the end "
        f"({report['rss_growth']:+.1%}; limit {MAX_RSS_GROWTH:.0%})",
        "RSS over time (s: MiB): " + ", ".join(f"{s}: {rss / mib:.0f}" for s, rss in report["rss_samples"]),
    ]
    lines += [f"  {sample}" for sample in report["error_samples"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=30, help="seconds of load before the first measurement")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args.minutes, args.concurrency, args.workers, args.warmup)
    print(summary(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0 if report["errors"] == 0 and report["rss_growth"] < MAX_RSS_GROWTH else 1


if __name__ == "__main__":
    sys.exit(main())
