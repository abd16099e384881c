"""Where the time goes: py-spy samples a server's worker under load, by thread, layer and function."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from load_tests.bench.common import ROOT, markdown_table
from load_tests.bench.wrk import WRK_SCRIPT


PROFILE_SECONDS = 10
# The top folder (or module) of a sampled frame's file -> the layer it belongs to.
LAYERS = {
    "onnxruntime": "ONNX Runtime",
    "service": "modelserve's own code (service/)",
    "modelspec": "modelserve's own code (service/)",
    "numpy": "numpy",
    "pydantic": "pydantic (request parsing and validation)",
    "pydantic_core": "pydantic (request parsing and validation)",
    "starlette": "Starlette (routing, request and response objects)",
    "bentoml": "BentoML (its middleware and API wrappers)",
    "_bentoml_impl": "BentoML (its middleware and API wrappers)",
    "_bentoml_sdk": "BentoML (its middleware and API wrappers)",
    "opentelemetry": "OpenTelemetry (BentoML's tracing middleware)",
    "prometheus_client": "prometheus_client (BentoML's and the service's metrics)",
    "logging": "logging (the access log)",
    "json": "json (answers)",
    "asyncio": "event loop and HTTP (asyncio, uvicorn, h11)",
    "uvicorn": "event loop and HTTP (asyncio, uvicorn, h11)",
    "h11": "event loop and HTTP (asyncio, uvicorn, h11)",
    "selectors": "event loop and HTTP (asyncio, uvicorn, h11)",
    "threading": "threads (hand-off to the batch thread)",
    "concurrent": "threads (hand-off to the batch thread)",
}


def frame_path(frame: str) -> str:
    """The file of a py-spy frame ('func (/full/path.py:12)'), relative to site-packages, this
    project or the standard library."""
    m = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame)
    path = m.group(1) if m else frame
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    if path.startswith(ROOT + "/"):
        return path[len(ROOT) + 1 :]
    return re.sub(r"^.*/lib/python3\.\d+/", "", path)


def short_frame(frame: str) -> str:
    """'Session.run (/x/site-packages/onnxruntime/capi/y.py:406)' -> 'Session.run (onnxruntime/capi/y.py:406)'."""
    line = re.search(r":(\d+)\)$", frame)
    return f"{frame.split(' (', 1)[0]} ({frame_path(frame)}{':' + line.group(1) if line else ''})"


def frame_layer(frame: str) -> str:
    """A py-spy frame with its full file name -> its layer ('ONNX Runtime', ...)."""
    top = frame_path(frame).split("/")[0].removesuffix(".py")
    if top.startswith("opentelemetry"):
        top = "opentelemetry"
    return LAYERS.get(top, "other (Python's standard library and the rest)")


# Innermost frames of a thread that waits: the event loop in uvloop's C loop (or select), a
# pool thread for its next batch.
WAITING = ("Runner.run (", "BaseEventLoop.run_forever (", "select (", "_worker (")


def thread_kind(frames: list[str]) -> str:
    """"batch" for the batchers' pool threads, "event loop" for the thread running asyncio,
    "other" for the rest (the serving-state watcher). By the thread's name where py-spy gives it
    (`--threads`: "thread (ID): NAME" first): a task's stack often lacks the frames below it
    (asyncio's runner), and the loop's own stack holds the pool's code when it submits a batch.
    The batchers name their threads "batch-..." (service/batching.py)."""
    if frames[0].startswith("thread (") and ": " in frames[0]:
        name = frames[0].partition(": ")[2]
        return "batch" if name.startswith("batch-") else "event loop" if name == "MainThread" else "other"
    if any("concurrent/futures/thread.py" in f for f in frames):
        return "batch"
    return "event loop" if any("asyncio/runners.py" in f for f in frames) else "other"


def summarize_profile(raw: str, top: int = 12) -> dict:
    """py-spy's raw output ("frame;frame;... count" per line) -> per kind of thread (see
    thread_kind): its samples, the share spent waiting, and the shares of the rest by layer and
    by function, each sample counted at its innermost frame."""
    threads: dict[str, dict] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        name = thread_kind(frames)
        thread = threads.setdefault(name, {"samples": 0, "waiting": 0, "layers": {}, "functions": {}})
        thread["samples"] += n
        leaf = frames[-1]
        if leaf.startswith(WAITING):
            thread["waiting"] += n
            continue
        if leaf.startswith("thread ("):  # no Python frame: the thread in C code (on the event loop, uvloop's)
            layer = LAYERS["asyncio"] if name == "event loop" else frame_layer(leaf)
            function = "(C code, no Python frame)"
        else:
            layer, function = frame_layer(leaf), short_frame(leaf)
        thread["layers"][layer] = thread["layers"].get(layer, 0) + n
        thread["functions"][function] = thread["functions"].get(function, 0) + n

    def shares(counts: dict, total: int) -> list[tuple[str, float]]:
        return [(key, n / total) for key, n in sorted(counts.items(), key=lambda item: -item[1])]

    out = {}
    for name, t in sorted(threads.items(), key=lambda item: item[0] != "event loop"):
        busy = t["samples"] - t["waiting"]
        out[name] = {
            "samples": t["samples"],
            "waiting": t["waiting"] / t["samples"],
            "layers": shares(t["layers"], busy) if busy else [],
            "functions": shares(t["functions"], busy)[:top] if busy else [],
        }
    return {"samples": sum(t["samples"] for t in threads.values()), "threads": out}


def profile_under_load(server, ep, content_type: str, body_file: str, c: int, seconds: int = PROFILE_SECONDS) -> dict:
    """py-spy samples the worker (100 Hz, non-blocking) while wrk drives `ep` at concurrency c."""
    py_spy = shutil.which("py-spy") or shutil.which(os.path.join(os.path.dirname(sys.executable), "py-spy"))
    if not py_spy:
        return {"missing": "py-spy not installed (pip install -e '.[bench]')"}
    from load_tests.server import workers

    pids = [worker.pid for worker in workers(server.process)]
    if len(pids) != 1:
        return {"missing": f"expected one worker, found {len(pids)}"}
    env = {**os.environ, "WRK_BODY_FILE": body_file, "WRK_CONTENT_TYPE": content_type}
    load = subprocess.Popen(
        ["wrk", "-t1", f"-c{c}", f"-d{seconds + 3}s", "-s", WRK_SCRIPT, server.url + ep.path],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        try:
            time.sleep(1)
            result = subprocess.run(
                [py_spy, "record", "--pid", str(pids[0]), "--duration", str(seconds), "--rate", "100",
                 "--nonblocking", "--threads", "--full-filenames", "--format", "raw", "--output", out.name],
                capture_output=True, text=True, timeout=seconds + 60,
            )
        finally:
            load.wait(timeout=seconds + 60)
        if result.returncode != 0:
            return {"missing": f"py-spy failed: {(result.stderr or result.stdout).strip()[-300:]}"}
        with open(out.name, encoding="utf-8", errors="replace") as f:
            summary = summarize_profile(f.read())
    return {"endpoint": ep.key, "concurrency": c, "seconds": seconds, **summary}


def profile_section(profile: dict | None) -> list[str]:
    if not profile:
        return []
    lines = ["## Where the time goes", ""]
    if "missing" in profile:
        return lines + [f"Not profiled: {profile['missing']}.", ""]
    lines += [
        f"py-spy sampled the worker of the `batching on` server 100 times a second for {profile['seconds']} s "
        f"while wrk drove `/classify` cnn at c={profile['concurrency']} ({profile['samples']} samples; py-spy leaves out those it judges idle, without `--idle`). "
        "The event-loop thread does all of the HTTP, parsing and answering; the batchers run ONNX Runtime "
        "on a thread of their own, which releases the GIL. Each sample is counted at its innermost frame; "
        "shares are of the samples in which the thread was not in a waiting frame; the waiting shares are lower bounds.",
        "",
    ]
    for name, thread in profile["threads"].items():
        lines += [
            f"**{name} thread**: {thread['samples']} samples, {100 * thread['waiting']:.0f}% of them in a waiting frame "
            "(for the network, or for the next batch).",
            "",
            markdown_table(["layer", "share"], [[layer, f"{100 * share:.1f}%"] for layer, share in thread["layers"]]),
            "",
        ]
        if name == "event loop":
            lines += [
                markdown_table(["function (innermost frame)", "share"], [[f"`{frame}`", f"{100 * share:.1f}%"] for frame, share in thread["functions"]]),
                "",
            ]
    return lines
