"""`make bench-peers`: this service against the peers (peers.py), point by point, side by side;
then reports/bench-peers.md, .json and .png (peers_report.py). Exit status 1 if a goal is missed.

`python -m load_tests.bench.peers_run [--peers bentoml,litserve] [--duration 10] [--levels 1,32]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from load_tests.bench import peers_report
from load_tests.bench.common import ROOT, targets_text
from load_tests.bench.http import Server
from load_tests.bench.inprocess import interleaved_medians, ort_session
from load_tests.bench.inputs import CLASSIFIER, ENDPOINTS, Store
from load_tests.bench.profiling import PROFILE_SECONDS, profile_under_load
from load_tests.bench.peers import PEERS, TRITON, PeerServer, install, labels_in, version_of
from load_tests.bench.procstat import paused
from load_tests.bench.wrk import run_wrk
from modelspec import SPECS

V2_ROWS, V2_CONCURRENCY = 64, 4
# The setting the README recommends on a machine of one's own: one worker per core.
RECOMMENDED = {"MODELSERVE_WORKERS": str(len(os.sched_getaffinity(0)))}
SERVICE = f"modelserve ({RECOMMENDED['MODELSERVE_WORKERS']} workers)"
DEFAULT = "modelserve (1 worker, default)"
ENDPOINTS_BY_KEY = {ep.key: ep for ep in ENDPOINTS}


def bodies(store: Store) -> dict[str, tuple[bytes, str, dict]]:
    """{name: (body, content type, extra headers)} and the expected top-3 labels of the digit."""
    import numpy as np

    x = store.eval_arrays(CLASSIFIER)["x"]
    digit = np.round(x[0, 0].astype(np.float64), 4)
    flat = digit.astype(np.float32)
    rows = np.ascontiguousarray(x[:V2_ROWS], dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "image", "shape": list(rows.shape), "datatype": "FP32", "parameters": {"binary_data_size": rows.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    v2_json = {"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": flat.ravel().tolist()}]}
    return {
        "classify_json": (json.dumps({"images": [digit.tolist()], "model": CLASSIFIER, "top_k": 3}).encode(), "application/json", {}),
        "v2_json": (json.dumps(v2_json).encode(), "application/json", {}),
        "v2_binary": (header + rows.tobytes(), "application/octet-stream", {"Inference-Header-Content-Length": str(len(header))}),
    }, digit.astype(np.float32)[None, None], rows


def expected_labels(session, digit) -> list[str]:
    logits = session.run(None, {"image": digit})[0][0]
    return [SPECS[CLASSIFIER].labels[i] for i in (-logits).argsort()[:3]]


def check_answer(url: str, body: bytes, content_type: str, expected: list[str]) -> str:
    import requests

    answer = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
    if answer.status_code // 100 != 2:
        return f"HTTP {answer.status_code}: {answer.text[:200]}"
    got = labels_in(answer.json())[:3]
    return "ok" if got == expected else f"top-3 {got}, in process {expected}"


def others_than(servers: dict, label: str) -> list:
    """Every server but `label`'s (a server listed under two labels counts once, as `label`)."""
    return [s for name, s in servers.items() if name != label and s is not servers[label]]


def measure(servers: dict, label: str, url: str, body_file: str, content_type: str, headers: dict, c: int, args) -> dict:
    """One load point, the other servers paused: an unmeasured warm-up, then the measured run,
    with CPU and RSS (and what the paused servers used meanwhile: nothing, if the pause held)."""
    server = servers[label]
    others = others_than(servers, label)
    with paused(others):
        run_wrk(url, body_file, content_type, c, args.warmup, headers)
        cpu0, idle0, t0 = server.cpu_seconds(), sum(s.cpu_seconds() for s in others), time.perf_counter()
        figures, client_cpu = run_wrk(url, body_file, content_type, c, args.duration, headers)
        wall = time.perf_counter() - t0
    return {**figures, "client_cores": client_cpu / wall, "server_cores": (server.cpu_seconds() - cpu0) / wall,
            "idle_servers_cores": (sum(s.cpu_seconds() for s in others) - idle0) / wall, "server_rss_mib": server.rss_bytes() / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default=",".join(p.key for p in PEERS), help="comma-separated: " + ", ".join(p.key for p in PEERS))
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per point")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each point")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all the points; figures are medians over them")
    parser.add_argument("--levels", default="1,32", help="concurrency levels (the goals read 1 and 32)")
    parser.add_argument("--no-default", action="store_true", help="leave out the service at its default setting (1 worker)")
    parser.add_argument("--no-profile", action="store_true", help="leave out the py-spy profiles of /classify and /noop")
    parser.add_argument("--out", default=os.path.join(ROOT, "reports"))
    parser.add_argument("--prefix", default="bench-peers")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.levels.split(",")]
    chosen = [p for p in PEERS if p.key in args.peers.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    store = Store([CLASSIFIER])
    model_path = store.path(CLASSIFIER)
    payloads, digit, rows = bodies(store)
    session = ort_session(model_path)
    expected = expected_labels(session, digit)
    workdir = tempfile.mkdtemp(prefix="modelserve-peers-")
    files = {}
    for name, (body, _, _) in payloads.items():
        files[name] = os.path.join(workdir, name)
        with open(files[name], "wb") as f:
            f.write(body)
    data = {"command": "python -m load_tests.bench.peers_run " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "duration_s": args.duration, "warmup_s": args.warmup, "levels": levels, "rounds": args.rounds,
            "loadavg_start": os.getloadavg(), "model": {"name": CLASSIFIER, "version": store.version(CLASSIFIER), "path": model_path},
            "servers": {}, "series": [], "points": [], "inprocess_batch": [], "triton": TRITON}
    peer_env = {"PEER_MODEL": model_path, "PEER_LABELS": json.dumps(list(SPECS[CLASSIFIER].labels)), "OMP_NUM_THREADS": "1",
                "BENTOML_DO_NOT_TRACK": "true"}
    servers: dict = {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or "?"

    def save() -> None:  # partial results, as the run goes
        data["seconds"] = time.perf_counter() - started
        peers_report.write(data, args.out, args.prefix)

    try:
        ours = [(SERVICE, RECOMMENDED)] + ([] if args.no_default else [(DEFAULT, {})])
        for label, env in ours:
            info = {"kind": "modelserve", "settings": ", ".join(f"{k}={v}" for k, v in env.items()) or "defaults", "python": True, "version": commit}
            try:
                servers[label] = Server("bentoml", env, workdir)
                info.update(ready_s=servers[label].ready_s, answer=check_answer(servers[label].url + "/classify", *payloads["classify_json"][:2], expected))
            except Exception as e:
                info["failed"] = f"did not start: {str(e)[-600:]}"
            data["servers"][label] = info
            log(f"{label}: {info.get('failed') or 'ready in %.1f s, answer %s' % (info['ready_s'], info['answer'])}")
        for peer in chosen:
            label = peer.name
            info = {"kind": peer.key, "settings": peer.settings, "python": peer.python, "path": peer.path, "body": peer.body}
            data["servers"][label] = info
            problem = install(peer, log)
            if problem:
                info["failed"] = f"not set up: {problem}"
            else:
                info["version"] = version_of(peer)
                try:
                    servers[label] = PeerServer(peer, peer_env, payloads[peer.body][0], workdir)
                    info.update(ready_s=servers[label].ready_s, answer=check_answer(servers[label].url + peer.path, *payloads[peer.body][:2], expected))
                except Exception as e:
                    info["failed"] = f"did not start: {str(e)[-600:]}"
            log(f"{label} {info.get('version', '')}: {info.get('failed') or 'ready in %.1f s, answer %s' % (info['ready_s'], info['answer'])}")
            save()
        series = []  # (label, what, path, body, levels)
        for label, info in data["servers"].items():
            if label in servers:
                series.append((label, "classify", info.get("path", "/classify"), info.get("body", "classify_json"), levels))
        if SERVICE in servers:
            series.append((SERVICE, "noop", "/noop", "classify_json", [32]))
            series.append((SERVICE, "v2_binary", f"/v2/models/{CLASSIFIER}/infer", "v2_binary", [V2_CONCURRENCY]))
        data["series"] = [list(s[:4]) for s in series]
        turns = [(r, c) for r in range(args.rounds) for c in sorted({c for s in series for c in s[4]})]
        for round_, c in turns:
            for label, what, path, body, series_levels in series:
                if c not in series_levels:
                    continue
                if what == "v2_binary":  # the in-process reference, measured just before
                    with paused(list(servers.values())):
                        timing = interleaved_medians({"ort": lambda: session.run(None, {"image": rows})}, rounds=100)["ort"]
                    data["inprocess_batch"].append({"rows": V2_ROWS, **timing, "rows_per_s": V2_ROWS / (timing["median_ms"] / 1000)})
                point = {"server": label, "what": what, "concurrency": c, "round": round_, "rows_per_request": V2_ROWS if what == "v2_binary" else 1}
                try:
                    point.update(measure(servers, label, servers[label].url + path, files[body], payloads[body][1], payloads[body][2], c, args))
                    log(f"  {label:<32} {what:<9} c={c:<3} {point['rps_ok']:8.1f} req/s  p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms  "
                        f"non-2xx {point['non2xx']}  errors {point['socket_errors']}  cpu server {point['server_cores']:.2f} / wrk {point['client_cores']:.2f}")
                except Exception as e:
                    point["failed"] = str(e)[-600:]
                    log(f"  {label} {what} c={c}: FAILED {point['failed'][:200]}")
                data["points"].append(point)
                save()
        if DEFAULT in servers and not args.no_profile:  # py-spy needs one worker: the default setting's
            data["profile"] = {}
            for ep in (ENDPOINTS_BY_KEY["classify"], ENDPOINTS_BY_KEY["noop"]):
                log(f"profiling {DEFAULT} with py-spy: {ep.path} at c=32 for {PROFILE_SECONDS} s")
                with paused(others_than(servers, DEFAULT)):
                    data["profile"][ep.key] = profile_under_load(servers[DEFAULT], ep, "application/json", files["classify_json"], 32)
            save()
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    data["loadavg_end"] = os.getloadavg()
    save()
    targets = peers_report.targets(data)
    print("\n" + targets_text(targets) + f"\n\n{os.path.join(args.out, args.prefix + '.md')} ({time.perf_counter() - started:.0f} s)")
    return 1 if any(t.passed is False for t in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
