"""One benchmark run, side by side, on the models in the store: `make bench` (or
`python -m load_tests.bench [--quick]`) writes reports/bench.md, reports/bench.json and PNG plots.

1. In process, one thread each: PyTorch eager against ONNX Runtime, per model, batch 1 and 32.
2. The quantized model against its source: latency, file size, accuracy re-measured on eval.npz.
3. Over HTTP, per endpoint: p50/p95/p99 at concurrency 1 against in-process ONNX Runtime for
   the same input; throughput and p99 at each concurrency with batching on and off
   (MODELSERVE_MAX_BATCH=1), with the no-op endpoint `/noop` of the same server as the ceiling.
4. A naive FastAPI + uvicorn app running the PyTorch cnn per request (load_tests/naive_app.py).
5. Cold start: process start to /readyz 200.

The load generator is wrk (C, one event-loop thread): its CPU seconds are measured per point
and reported beside the server's, to show the client was not the bottleneck. The peers
(other model servers on the same model) are `python -m load_tests.bench.peers`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import time

from load_tests.bench import http as http_part
from load_tests.bench.common import PROFILES, Profile, ROOT, format_value, machine, ms, targets_text, versions
from load_tests.bench.inprocess import in_process
from load_tests.bench.inputs import ENDPOINTS, Store, make_payloads
from load_tests.bench.plots import plot
from load_tests.bench.report import write_report
from load_tests.bench.targets import compute_targets
from load_tests.bench.uploads import run_uploads
from load_tests.bench.versions import run_versions


def estimate_seconds(profile: Profile) -> float:
    """Roughly how long the HTTP part takes: points x (warm-up + measure + overhead) + starts."""
    points = (2 * len(ENDPOINTS) + 1) * len(profile.concurrency)
    return points * (profile.duration_s + profile.warmup_s + 0.5) + (profile.cold_starts + 2) * 10


def run_in_process(store, payloads, profile, args, log) -> dict:
    log("in process: PyTorch eager vs ONNX Runtime, 1 thread each")
    inproc = in_process(store, payloads, profile.rounds)
    for r in inproc["rows"]:
        log(f"  {r['model']:<12} batch {r['batch']:<3} PyTorch {ms(r['torch_ms'], 3):>8} ms  ORT {ms(r['ort_ms'], 3):>8} ms  ratio {format_value(r['torch_over_ort'], 'x')}")
    return inproc


def run_http(store, payloads, profile, args, log) -> dict:
    if args.skip_http:
        return {"cold_start_s": [], "sweeps": {}, "ready_s": {}}
    return http_part.http_benchmarks(store, payloads, profile, log)


# The measurement sections, in order: (key in bench.json, run(store, payloads, profile, args,
# log) -> that key's figures). A new measurement (shadow on/off latency, a second version's
# RSS, ...) is one more entry here, its report lines in report.py and its targets in targets.py.
SECTIONS = [("in_process", run_in_process), ("http", run_http), ("model_versions", run_versions), ("uploads", run_uploads)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run: 2 s per point, concurrency 1 and 32, one cold start")
    parser.add_argument("--out", default=os.environ.get("REPORTS_DIR", os.path.join(ROOT, "reports")), help="folder for the report, JSON and plots")
    parser.add_argument("--duration", type=int, help="measured seconds per load point (whole seconds)")
    parser.add_argument("--skip-http", action="store_true", help="in-process figures only")
    args = parser.parse_args(argv)

    profile = PROFILES["quick" if args.quick else "full"]
    if args.duration:
        profile = dataclasses.replace(profile, duration_s=args.duration)
    prefix = "bench-quick" if args.quick else "bench"
    if not args.skip_http and shutil.which("wrk") is None:
        print("wrk is not installed: `make bench` installs it (apt-get install -y wrk)", file=sys.stderr)
        return 2

    # A SIGTERM (make interrupted, a CI time-out) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)

    started = time.perf_counter()
    loadavg_start = os.getloadavg()[0]

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    log(f"profile {'quick' if args.quick else 'full'}: {profile}; HTTP part about {estimate_seconds(profile) / 60:.1f} min")
    store = Store()
    payloads = make_payloads(store)
    measured = {key: run(store, payloads, profile, args, log) for key, run in SECTIONS}
    inproc, http = measured["in_process"], measured["http"]

    data = {
        "command": " ".join(["python -m load_tests.bench", *(argv if argv is not None else sys.argv[1:])]).strip(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick,
        "profile": dataclasses.asdict(profile),
        "machine": machine(),
        "versions": versions(),
        "models": {name: store.version(name) for name in store.models},
        "loadavg_start": loadavg_start,
        "loadavg_end": os.getloadavg()[0],
        **measured,
    }
    data["seconds"] = time.perf_counter() - started
    targets = compute_targets(inproc, http, 32)
    data["targets"] = [{**dataclasses.asdict(t), "passed": t.passed, "verdict": t.verdict()} for t in targets]

    os.makedirs(args.out, exist_ok=True)
    plots = plot(data, args.out, prefix)
    report = os.path.join(args.out, f"{prefix}.md")
    write_report(report, data, targets, plots)
    with open(os.path.join(args.out, f"{prefix}.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    print()
    print(targets_text(targets))
    print(f"\n{report} ({data['seconds']:.0f} s)")
    return 1 if any(t.passed is False for t in targets) else 0  # a missed target cannot pass unseen


if __name__ == "__main__":
    sys.exit(main())
