"""Which worker, thread and batching settings serve best on this machine?

Starts the service once per setting on a free loopback port (on the models in $BENTOML_HOME)
and drives the same endpoints with wrk, as `make bench` does, side by side:

    python -m load_tests.settings_sweep [--seconds 10] [--concurrency 32]

wrk is one C thread on the same machine (the benchmark shows it takes under a tenth of a core):
the figures compare settings with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from load_tests.bench.http import Server
from load_tests.bench.inputs import ENDPOINTS as BENCH_ENDPOINTS, Store, make_payloads
from load_tests.bench.wrk import run_wrk

SETTINGS = [
    {},  # the defaults: 1 worker, 1 ONNX Runtime thread, no batch wait
    {"MODELSERVE_ORT_THREADS": "2"},
    {"MODELSERVE_WORKERS": "2"},
    # short batches on the event loop (the default with a worker per core) against the batch thread
    {"MODELSERVE_WORKERS": "2", "MODELSERVE_INLINE_BATCH_MS": "0"},
    {"MODELSERVE_INLINE_BATCH_MS": "1"},
    {"MODELSERVE_BATCH_WAIT_MS": "2"},
    {"MODELSERVE_MAX_BATCH": "1"},
]
ENDPOINTS = ("classify", "sentiment")


def label(setting: dict) -> str:
    return ", ".join(f"{k.removeprefix('MODELSERVE_').lower()}={v}" for k, v in setting.items()) or "defaults"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per endpoint and setting")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    payloads = make_payloads(Store())
    endpoints = [ep for ep in BENCH_ENDPOINTS if ep.key in ENDPOINTS]
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelserve-sweep-") as workdir:
        for setting in SETTINGS:
            server = Server("bentoml", setting, workdir)
            try:
                for ep in endpoints:
                    body_file = os.path.join(workdir, ep.body)
                    with open(body_file, "wb") as f:
                        f.write(getattr(payloads, ep.body))
                    content_type = payloads.image_form_type if ep.content_type == "form" else ep.content_type
                    run_wrk(server.url + ep.path, body_file, content_type, args.concurrency, 2)  # warm-up
                    figures, _ = run_wrk(server.url + ep.path, body_file, content_type, args.concurrency, args.seconds)
                    rows.append({"setting": label(setting), "endpoint": ep.path, **figures})
                    print(f"{label(setting):<24} {ep.path:<12} {figures['rps_ok']:7.1f} req/s  p50 {figures['p50_ms']:6.1f} ms  "
                          f"p99 {figures['p99_ms']:6.1f} ms  non-2xx {figures['non2xx']}  errors {figures['socket_errors']}", flush=True)
            finally:
                server.stop()
    folder = os.environ.get("REPORTS_DIR", "reports")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "settings_sweep.json"), "w") as f:
        json.dump({"seconds": args.seconds, "concurrency": args.concurrency, "cpus": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
