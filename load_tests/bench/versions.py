"""Two versions side by side: what a shadow version costs the answering one's latency, and what a
second loaded version of each model costs in memory.

The server runs on a private copy of the store, in which every model gets a second version: a
copy of its latest under a new version name (so the figures are those of serving two versions
of the same size, not of another model). The real store is not touched. Shadow off and on are
measured in interleaved rounds on the same server, switched through the admin API.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from load_tests.bench.common import Profile
from load_tests.bench.http import NOOP_ROUTE, Server
from load_tests.bench.inputs import CLASSIFIER, Payloads, Store
from load_tests.bench.wrk import run_wrk

ADMIN_KEY = "bench-admin-key"
SHADOW_ROUNDS = 2
RSS_SETTLE_S = 1.0


def private_home(store: Store, workdir: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """A BENTOML_HOME whose models are a copy of the store's, each with a second version;
    returns it and {model: (latest, copy)}."""
    import bentoml

    home = os.path.join(workdir, "home")
    pairs = {}
    for name in store.models:
        latest = bentoml.models.get(f"{name}:latest")
        folder = os.path.join(home, "models", name)
        shutil.copytree(latest.path, os.path.join(folder, latest.tag.version))
        twin = "twin" + latest.tag.version[4:]
        shutil.copytree(latest.path, os.path.join(folder, twin))
        with open(os.path.join(folder, twin, "model.yaml"), encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(folder, twin, "model.yaml"), "w", encoding="utf-8") as f:
            f.write(text.replace(latest.tag.version, twin))
        with open(os.path.join(folder, "latest"), "w") as f:
            f.write(latest.tag.version)
        pairs[name] = (latest.tag.version, twin)
    return home, pairs


def put(url: str, name: str, state: dict) -> None:
    import requests

    answer = requests.put(f"{url}/admin/models/{name}", json=state, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    if answer.status_code != 200:
        raise RuntimeError(f"PUT /admin/models/{name} {state}: HTTP {answer.status_code} {answer.text[:300]}")


def settled_rss_mib(server: Server) -> float:
    time.sleep(RSS_SETTLE_S)
    return server.rss_bytes() / 2**20


def second_version_rss(server: Server, pairs: dict, log) -> dict:
    """RSS of the server's process tree before and after each model gets its second version loaded."""
    rows, before = [], settled_rss_mib(server)
    start = before
    for name, (latest, twin) in pairs.items():
        put(server.url, name, {"default": latest, "loaded": [twin]})
        after = settled_rss_mib(server)
        rows.append({"model": name, "rss_before_mib": before, "rss_after_mib": after, "added_mib": after - before})
        log(f"  second version of {name:<12} +{after - before:6.1f} MiB (server {after:.0f} MiB)")
        before = after
    return {"rows": rows, "all_models_added_mib": before - start, "baseline_mib": start}


def shadow_latency(server: Server, pairs: dict, payloads: Payloads, body_file: str, profile: Profile, log) -> dict:
    """/classify with and without a shadow copy of every request, interleaved rounds per concurrency."""
    latest, twin = pairs[CLASSIFIER]
    points = []
    for c in profile.concurrency:
        for round_ in range(SHADOW_ROUNDS):
            for shadow in (False, True):
                put(server.url, CLASSIFIER, {"default": latest, "shadow": twin} if shadow else {"default": latest})
                url = server.url + "/classify"
                run_wrk(url, body_file, "application/json", c, profile.warmup_s)
                figures, client_cpu = run_wrk(url, body_file, "application/json", c, profile.duration_s)
                points.append({"concurrency": c, "round": round_, "shadow": shadow, **figures})
                log(f"  shadow {'on ' if shadow else 'off'} c={c:<3} round {round_ + 1}: {figures['rps_ok']:8.1f} req/s  "
                    f"p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:6.2f} ms  non-2xx {figures['non2xx']}")
    put(server.url, CLASSIFIER, {"default": latest})
    summary = []
    for c in profile.concurrency:
        for shadow in (False, True):
            mine = [p for p in points if p["concurrency"] == c and p["shadow"] == shadow]
            summary.append({
                "concurrency": c,
                "shadow": shadow,
                "rps_ok": sum(p["rps_ok"] for p in mine) / len(mine),
                "p50_ms": sum(p["p50_ms"] for p in mine) / len(mine),
                "p99_ms": sum(p["p99_ms"] for p in mine) / len(mine),
                "non2xx": sum(p["non2xx"] + p["socket_errors"] for p in mine),
            })
    return {"points": points, "summary": summary}


def run_versions(store: Store, payloads: Payloads, profile: Profile, args, log) -> dict:
    if getattr(args, "skip_http", False):
        return {}
    workdir = tempfile.mkdtemp(prefix="modelserve-bench-versions-")
    server = None
    try:
        home, pairs = private_home(store, workdir)
        body_file = os.path.join(workdir, "classify.json")
        with open(body_file, "wb") as f:
            f.write(payloads.classify_json)
        log("versions: one worker on a private copy of the store with a second version of every model")
        server = Server("bentoml", {"BENTOML_HOME": home, "MODELSERVE_ADMIN_KEYS": ADMIN_KEY, NOOP_ROUTE: "false"}, workdir)
        shadow = shadow_latency(server, pairs, payloads, body_file, profile, log)
        memory = second_version_rss(server, pairs, log)
        return {"shadow": shadow, "second_version_rss": memory}
    except (RuntimeError, OSError) as e:  # recorded, and the run goes on
        log(f"versions: failed: {e}")
        return {"error": str(e)[:1000]}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


