"""One benchmark run, side by side, on the models in the store: `make bench` (or
`python -m load_tests.bench [--quick]`) writes reports/bench.md, reports/bench.json and PNG plots.

1. In process, one thread each: PyTorch eager against ONNX Runtime, per model, batch 1 and 32.
2. `resnet` FP32 against `resnet-int8`: latency, file size, accuracy re-measured on eval.npz.
3. Over HTTP, per endpoint: p50/p95/p99 at concurrency 1 against in-process ONNX Runtime for
   the same input; throughput and p99 at each concurrency with batching on and off
   (MODELSERVE_MAX_BATCH=1), with the no-op endpoint `/noop` of the same server as the ceiling.
4. A naive FastAPI + uvicorn app running the PyTorch cnn per request (load_tests/naive_app.py).
5. Cold start: process start to /readyz 200.

The load generator is wrk (C, one event-loop thread): its CPU seconds are measured per point
and reported beside the server's, to show the client was not the bottleneck.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata as package_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("BENTOML_HOME", os.path.join(ROOT, ".bentoml"))  # the Makefile's default
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

WRK_SCRIPT = os.path.join(ROOT, "load_tests", "wrk", "post.lua")
WRK_TIMEOUT = "30s"
INPROCESS_BATCHES = (1, 32)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Profile:
    duration_s: int  # measured seconds per load point (wrk takes whole seconds)
    warmup_s: int  # unmeasured wrk run at the same concurrency just before
    concurrency: tuple[int, ...]
    rounds: int  # interleaved in-process runs per (model, batch, runtime)
    cold_starts: int


PROFILES = {
    "full": Profile(duration_s=10, warmup_s=2, concurrency=(1, 8, 32, 64), rounds=100, cold_starts=3),
    "quick": Profile(duration_s=2, warmup_s=1, concurrency=(1, 32), rounds=15, cold_starts=1),
}


# ----------------------------------------------------------------------------------------------
# Pure functions (tests/test_bench.py)
# ----------------------------------------------------------------------------------------------

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


def multipart_body(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body: `fields` name -> value, `files` name -> (filename, type, bytes)."""
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content_type, data) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


@dataclasses.dataclass
class Target:
    """A target the run is judged by: `measured` `op` `limit` (op is "<=" or ">=")."""

    name: str
    measured: float | None
    limit: float
    op: str
    unit: str  # "ms", "s", "x" (a ratio) or "points"
    how: str = ""  # what was measured, for the report
    missing: str = ""  # why `measured` is None

    @property
    def margin(self) -> float | None:
        """Positive: room to spare; negative: by how much it is missed."""
        if self.measured is None:
            return None
        return self.limit - self.measured if self.op == "<=" else self.measured - self.limit

    @property
    def passed(self) -> bool | None:
        return None if self.margin is None else self.margin >= 0

    def verdict(self) -> str:
        if self.measured is None:
            return f"n/a ({self.missing or 'not measured'})"
        amount = format_value(abs(self.margin), self.unit)
        if self.passed:
            return f"PASS ({amount} to spare)"
        return f"MISS by {amount}"


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "x":
        return f"{value:.3f}x" if abs(value) < 0.1 else f"{value:.2f}x"
    if unit == "points":
        return f"{value:.2f} points"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.3g} {unit}".strip()


def targets_table(targets: list[Target]) -> str:
    """The targets as a Markdown table: measured, limit, PASS/MISS and by how much."""
    lines = ["| target | measured | limit | result |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.name} | {format_value(t.measured, t.unit)} | {t.op} {format_value(t.limit, t.unit)} | {t.verdict()} |")
    return "\n".join(lines)


def targets_text(targets: list[Target]) -> str:
    """The same for the terminal: one line each."""
    width = max(len(t.name) for t in targets)
    return "\n".join(
        f"{'PASS' if t.passed else ('MISS' if t.passed is False else 'N/A '):4}  {t.name:<{width}}  "
        f"{format_value(t.measured, t.unit):>12} {t.op} {format_value(t.limit, t.unit):<10}  {t.verdict()}"
        for t in targets
    )


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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


def read_proc_stats(proc: str = "/proc") -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, user + system CPU seconds)} of every live process."""
    out = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "stat")) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)  # ppid; utime + stime
    return out


def process_tree(root: int, stats: dict[int, tuple[int, float]]) -> list[int]:
    """`root` and all its live descendants (BentoML's workers run in sessions of their own, so
    the tree is followed by parent pid)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_tree_cpu_seconds(root: int, proc: str = "/proc") -> float:
    """User + system CPU seconds of a server and every process under it."""
    stats = read_proc_stats(proc)
    return sum(stats[pid][1] for pid in process_tree(root, stats))


# ----------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------

INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def machine() -> dict:
    info: dict = {"cpu": platform.processor() or "?", "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0))}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        names = re.findall(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
        info["cpu"] = names[0] if names else info["cpu"]
        info["flags"] = {flag: flag in flags for flag in INTERESTING_FLAGS}
    except (OSError, AttributeError):
        info["flags"] = {}
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            info["cgroup_cpu_max"] = f.read().strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    info["kernel"] = platform.release()
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "bentoml", "numpy", "fastapi", "uvicorn", "matplotlib"):
        try:
            out[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            out[name] = "not installed"
    wrk = shutil.which("wrk")
    if wrk:
        result = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        out["wrk"] = (result.stdout + result.stderr).splitlines()[0].split(" [")[0].removeprefix("wrk ").strip()
    return out


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


class Store:
    """The latest stored version of each model: path, metadata, eval arrays."""

    def __init__(self):
        import bentoml

        self.models = {}
        for name in ("cnn", "resnet", "resnet-int8", "sentiment", "vae", "gan"):
            m = bentoml.models.get(f"{name}:latest")
            self.models[name] = m

    def path(self, name: str, filename: str = "model.onnx") -> str:
        return self.models[name].path_of(filename)

    def metadata(self, name: str) -> dict:
        return self.models[name].info.metadata

    def version(self, name: str) -> str:
        return self.models[name].tag.version

    def eval_arrays(self, name: str):
        import numpy as np

        with np.load(self.path(name, "eval.npz")) as data:
            return {k: data[k] for k in data.files}


@dataclasses.dataclass
class Payloads:
    """The request bodies, and the model inputs the service derives from them."""

    digit: object  # [1, 1, 28, 28] float32: the /classify input as the service parses it
    digit_label: int
    classify_json: bytes
    png: bytes
    image_form: bytes
    image_form_type: str
    review: str
    sentiment_json: bytes
    gan_json: bytes
    gan_seed: int


def make_payloads(store: Store) -> Payloads:
    import numpy as np
    from PIL import Image

    arrays = store.eval_arrays("cnn")
    digit = np.round(arrays["x"][0, 0].astype(np.float64), 4)  # one real held-out digit, 28x28
    classify_json = json.dumps({"images": [digit.tolist()], "model": "cnn"}).encode()
    buffer = io.BytesIO()
    Image.fromarray(np.round(digit * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    png = buffer.getvalue()
    boundary = "modelserve-bench-boundary"
    form = multipart_body({"model": "cnn"}, {"image": ("digit.png", "image/png", png)}, boundary)
    with open(os.path.join(ROOT, "examples", "reviews.json"), encoding="utf-8") as f:
        review = json.load(f)["texts"][0]
    gan_seed = 7
    return Payloads(
        digit=digit.astype(np.float32)[None, None],
        digit_label=int(arrays["y"][0]),
        classify_json=classify_json,
        png=png,
        image_form=form,
        image_form_type=f"multipart/form-data; boundary={boundary}",
        review=review,
        sentiment_json=json.dumps({"texts": [review]}, ensure_ascii=False).encode(),
        gan_json=json.dumps({"n": 1, "seed": gan_seed, "format": "array"}).encode(),
        gan_seed=gan_seed,
    )


@dataclasses.dataclass(frozen=True)
class Endpoint:
    key: str
    path: str
    body: str  # Payloads attribute
    content_type: str  # or "form": the multipart type
    label: str


ENDPOINTS = [
    Endpoint("noop", "/noop", "classify_json", "application/json", "/noop (no model; /classify body)"),
    Endpoint("classify", "/classify", "classify_json", "application/json", "/classify cnn (JSON, 1 digit)"),
    Endpoint("classify_image", "/classify/image", "image_form", "form", "/classify/image cnn (PNG upload)"),
    Endpoint("sentiment", "/sentiment", "sentiment_json", "application/json", "/sentiment (1 review)"),
    Endpoint("gan", "/gan/generate", "gan_json", "application/json", "/gan/generate (n=1, array)"),
]


# ----------------------------------------------------------------------------------------------
# 1-2. In process
# ----------------------------------------------------------------------------------------------


def ort_session(path: str):
    """The service's session settings (service/runtime.py) with one intra-op thread."""
    import onnxruntime as ort

    from service.runtime import session_options

    return ort.InferenceSession(path, session_options(1), providers=["CPUExecutionProvider"])


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 3) -> dict[str, dict]:
    """Each round runs every call once, in the same order, so drift hits them all alike:
    {key: {"median_ms", "p10_ms", "p90_ms"}} over the rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            started = time.perf_counter()
            call()
            times[key].append((time.perf_counter() - started) * 1000)
    out = {}
    for key, t in times.items():
        t.sort()
        out[key] = {"median_ms": statistics.median(t), "p10_ms": t[len(t) // 10], "p90_ms": t[(len(t) * 9) // 10]}
    return out


INPROCESS_MODELS = [
    # (label, store name, graph file, torch module source)
    ("cnn", "cnn", "model.onnx"),
    ("resnet", "resnet", "model.onnx"),
    ("resnet-int8", "resnet-int8", "model.onnx"),
    ("sentiment", "sentiment", "model.onnx"),
    ("vae decoder", "vae", "decoder.onnx"),
    ("gan", "gan", "model.onnx"),
]


def model_inputs(store: Store, name: str, filename: str, batch: int) -> dict:
    import numpy as np

    spec = store.metadata(name)["spec"]
    graph = next(g for g in spec["graphs"] if g["filename"] == filename)
    first = graph["inputs"][0]
    if first["kind"] == "image01":
        source = "resnet" if name == "resnet-int8" else name
        return {first["name"]: store.eval_arrays(source)["x"][:batch]}
    if first["kind"] == "normal":
        rng = np.random.default_rng(batch)
        return {first["name"]: rng.standard_normal((batch, first["shape"][1]), dtype=np.float32)}
    arrays = store.eval_arrays(name)
    lengths = arrays["lengths"][:batch]
    return {"tokens": np.ascontiguousarray(arrays["tokens"][:batch, : int(lengths.max())]), "lengths": lengths}


def in_process(store: Store, payloads: Payloads, rounds: int) -> dict:
    """PyTorch eager and ONNX Runtime, one thread each, interleaved, plus the in-process
    references of the HTTP endpoints (same inputs as the requests)."""
    import numpy as np
    import torch

    from load_tests import torch_rebuild

    sessions = {label: ort_session(store.path(name, filename)) for label, name, filename in INPROCESS_MODELS}
    modules, parity = {}, {}
    for label, name, filename in INPROCESS_MODELS:
        if name == "resnet-int8":
            continue  # no PyTorch INT8 model: its row compares with PyTorch FP32 resnet
        try:
            modules[label] = torch_rebuild.rebuild(name, filename, store.models[name].path, store.metadata(name))
            parity[label] = torch_rebuild.parity(modules[label], sessions[label], model_inputs(store, name, filename, 32))
        except Exception as e:  # reported, and that row's PyTorch figures are left out
            parity[label] = f"rebuild failed: {e}"
            modules.pop(label, None)

    calls: dict[str, Callable[[], object]] = {}
    for batch in INPROCESS_BATCHES:
        for label, name, filename in INPROCESS_MODELS:
            feeds = model_inputs(store, name, filename, batch)
            session = sessions[label]
            calls[f"{label}|{batch}|ort"] = lambda s=session, f=feeds: s.run(None, f)
            module = modules.get(label)
            if module is not None and isinstance(parity[label], float) and parity[label] < 1e-3:
                tensors = tuple(torch.from_numpy(v) for v in feeds.values())

                def run_torch(m=module, t=tensors):
                    with torch.inference_mode():
                        return m(*t)

                calls[f"{label}|{batch}|torch"] = run_torch

    # In-process references of the endpoints: the model call on the request's own input, and
    # the preprocessing the service does before it.
    references = endpoint_references(store, payloads, sessions)
    for key, call in references.items():
        calls[f"endpoint|{key}"] = call

    started = time.perf_counter()
    timings = interleaved_medians(calls, rounds)
    seconds = time.perf_counter() - started

    rows = []
    for label, name, filename in INPROCESS_MODELS:
        for batch in INPROCESS_BATCHES:
            ort_ms = timings[f"{label}|{batch}|ort"]["median_ms"]
            torch_key = f"{label}|{batch}|torch"
            torch_ms = timings[torch_key]["median_ms"] if torch_key in timings else None
            rows.append({"model": label, "batch": batch, "ort_ms": ort_ms, "torch_ms": torch_ms, "torch_over_ort": ratio(torch_ms, ort_ms)})

    fp32, int8 = store.path("resnet"), store.path("resnet-int8")
    resnet_eval = store.eval_arrays("resnet")
    accuracy = {}
    for label in ("resnet", "resnet-int8"):
        logits = np.concatenate([sessions[label].run(None, {"image": resnet_eval["x"][i : i + 256]})[0] for i in range(0, len(resnet_eval["x"]), 256)])
        accuracy[label] = float((logits.argmax(1) == resnet_eval["y"]).mean())
    quant = {
        "latency_ms": {b: {m: timings[f"{m}|{b}|ort"]["median_ms"] for m in ("resnet", "resnet-int8")} for b in INPROCESS_BATCHES},
        "bytes": {"resnet": os.path.getsize(fp32), "resnet-int8": os.path.getsize(int8)},
        "accuracy": accuracy,
        "accuracy_metadata": {m: store.metadata(m)["metrics"].get("accuracy") for m in ("resnet", "resnet-int8")},
        "eval_images": int(len(resnet_eval["y"])),
        "chosen": store.metadata("resnet-int8").get("quantization", {}).get("chosen"),
    }
    return {
        "rounds": rounds,
        "seconds": seconds,
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(), "ort_intra_op": 1, "ort_inter_op": 1},
        "parity_max_abs_diff": parity,
        "rows": rows,
        "timings": timings,
        "quantization": quant,
    }


def endpoint_references(store: Store, payloads: Payloads, sessions: dict) -> dict[str, Callable[[], object]]:
    """{endpoint key + "|model" or "|prep": call}: what the service runs for each request,
    without HTTP. The preprocessing comes from the service's own modules where they import."""
    import numpy as np

    from modelspec.text import encode_batch

    cnn, gan, sentiment = sessions["cnn"], sessions["gan"], sessions["sentiment"]
    digit = payloads.digit
    calls = {"classify|model": lambda: cnn.run(None, {"image": digit})}
    try:
        from service.inputs import image_input

        preprocessing = store.metadata("cnn")["spec"]["preprocessing"]
        framed = image_input(payloads.png, preprocessing)
        calls["classify_image|prep"] = lambda: image_input(payloads.png, preprocessing)
        calls["classify_image|model"] = lambda: cnn.run(None, {"image": framed})
    except Exception:  # the service's helpers moved: the image row shows the model alone
        calls["classify_image|model"] = lambda: cnn.run(None, {"image": digit})
    with open(store.path("sentiment", "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    text_pre = store.metadata("sentiment")["spec"]["preprocessing"]
    tokens, lengths = encode_batch([payloads.review], vocab, text_pre)
    calls["sentiment|prep"] = lambda: encode_batch([payloads.review], vocab, text_pre)
    calls["sentiment|model"] = lambda: sentiment.run(None, {"tokens": tokens, "lengths": lengths})
    latent = int(store.metadata("gan")["spec"]["preprocessing"].get("latent_size", 100))
    z = np.random.default_rng(payloads.gan_seed).standard_normal((1, latent), dtype=np.float32)
    calls["gan|model"] = lambda: gan.run(None, {"z": z})
    return calls


# ----------------------------------------------------------------------------------------------
# 3-5. Over HTTP
# ----------------------------------------------------------------------------------------------


def get(url: str, timeout: float = 2.0):
    import requests

    return requests.get(url, timeout=timeout)


class Server:
    """A started server process (bentoml serve, or the naive uvicorn app), in its own session."""

    def __init__(self, kind: str, env: dict | None = None, log_dir: str | None = None):
        from load_tests import server as launcher

        self.kind = kind
        started = time.perf_counter()
        if kind == "bentoml":
            self.process, self.url = launcher.start(env, log_dir)
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

    def cpu_seconds(self) -> float:
        return process_tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        from load_tests import server as launcher

        launcher.stop(self.process)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, body_file: str, content_type: str, connections: int, seconds: int) -> tuple[dict, float]:
    """One wrk run; returns (parsed figures, wrk's CPU seconds)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", WRK_TIMEOUT, "-s", WRK_SCRIPT, url]
    env = {**os.environ, "WRK_BODY_FILE": body_file, "WRK_CONTENT_TYPE": content_type}
    before = children_cpu_seconds()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 120)
    cpu = children_cpu_seconds() - before
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()[-1000:]}")
    return parse_wrk(result.stdout), cpu


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
        servers["naive"] = Server("naive", {"NAIVE_CNN_ONNX": store.path("cnn")}, workdir)
        started.append(servers["naive"])
        results["ready_s"]["naive"] = servers["naive"].ready_s
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


# ----------------------------------------------------------------------------------------------
# Where the time goes: py-spy on the worker under load
# ----------------------------------------------------------------------------------------------

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


def summarize_profile(raw: str, top: int = 12) -> dict:
    """py-spy's raw output ("frame;frame;... count" per line) -> per thread ("event loop", and
    "batch" for the batchers' pool threads): its samples, the share spent waiting, and the
    shares of the rest by layer and by function, each sample counted at its innermost frame."""
    threads: dict[str, dict] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        name = "batch" if any("concurrent/futures/thread.py" in f for f in frames) else "event loop"
        thread = threads.setdefault(name, {"samples": 0, "waiting": 0, "layers": {}, "functions": {}})
        thread["samples"] += n
        leaf = frames[-1]
        if leaf.startswith(WAITING):
            thread["waiting"] += n
            continue
        thread["layers"][frame_layer(leaf)] = thread["layers"].get(frame_layer(leaf), 0) + n
        thread["functions"][short_frame(leaf)] = thread["functions"].get(short_frame(leaf), 0) + n

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


def profile_under_load(server: Server, ep: Endpoint, content_type: str, body_file: str, c: int, seconds: int = PROFILE_SECONDS) -> dict:
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
                 "--nonblocking", "--full-filenames", "--format", "raw", "--output", out.name],
                capture_output=True, text=True, timeout=seconds + 60,
            )
        finally:
            load.wait(timeout=seconds + 60)
        if result.returncode != 0:
            return {"missing": f"py-spy failed: {(result.stderr or result.stdout).strip()[-300:]}"}
        with open(out.name, encoding="utf-8", errors="replace") as f:
            summary = summarize_profile(f.read())
    return {"endpoint": ep.key, "concurrency": c, "seconds": seconds, **summary}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def point(http: dict, server: str, endpoint: str, c: int) -> dict | None:
    for p in http["sweeps"].get(server, {}).get("points", []):
        if p["endpoint"] == endpoint and p["concurrency"] == c:
            return p
    return None


def reference_ms(inproc: dict, endpoint: str) -> tuple[float | None, float | None]:
    """(model, preprocessing) in-process medians for an endpoint's input."""
    timings = inproc["timings"]
    model = timings.get(f"endpoint|{endpoint}|model", {}).get("median_ms")
    prep = timings.get(f"endpoint|{endpoint}|prep", {}).get("median_ms")
    return model, prep


def compute_targets(inproc: dict, http: dict, concurrency_for_throughput: int = 32) -> list[Target]:
    c = concurrency_for_throughput
    targets = []
    on1 = point(http, "batching on", "classify", 1)
    model_ms, _ = reference_ms(inproc, "classify")
    targets.append(
        Target(
            "cnn /classify p50 at c=1 minus in-process ORT (batch 1)",
            None if on1 is None or model_ms is None else on1["p50_ms"] - model_ms,
            2.0,
            "<=",
            "ms",
            missing="no /classify point at c=1",
        )
    )
    on = point(http, "batching on", "classify", c)
    naive = point(http, "naive", "classify", c)
    noop = point(http, "batching on", "noop", c)
    targets.append(
        Target(
            f"cnn /classify throughput at c={c} / naive FastAPI baseline",
            ratio(on and on["rps_ok"], naive and naive["rps_ok"]),
            3.0,
            ">=",
            "x",
            missing="baseline or service point missing",
        )
    )
    targets.append(
        Target(
            f"cnn /classify throughput at c={c} / no-op endpoint",
            ratio(on and on["rps_ok"], noop and noop["rps_ok"]),
            0.70,
            ">=",
            "x",
            missing="/noop not measured" if noop is None else "service point missing",
        )
    )
    q = inproc["quantization"]
    b32 = q["latency_ms"][32]
    targets.append(Target("resnet-int8 / resnet latency, batch 32 (in process)", ratio(b32["resnet-int8"], b32["resnet"]), 0.65, "<=", "x"))
    targets.append(
        Target("resnet accuracy drop FP32 -> INT8 (eval.npz)", 100 * (q["accuracy"]["resnet"] - q["accuracy"]["resnet-int8"]), 0.5, "<=", "points")
    )
    starts = http["cold_start_s"]
    targets.append(
        Target(
            f"cold start to /readyz 200 (median of {len(starts)})",
            statistics.median(starts) if starts else None,
            10.0,
            "<=",
            "s",
            missing="no start measured",
        )
    )
    return targets


def ms(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_report(path: str, data: dict, targets: list[Target], plots: dict[str, str]) -> None:
    inproc, m, v = data["in_process"], data["machine"], data["versions"]
    profile = data["profile"]
    lines = [
        "# modelserve benchmark",
        "",
        f"`{data['command']}` on {data['date']}, {data['seconds']:.0f} s in all"
        + (" — **quick run: short points, not for comparison**" if data["quick"] else "")
        + ". All figures come from this one run, side by side on one machine.",
        "",
        "## Targets",
        "",
        targets_table(targets),
        "",
        "## Machine and versions",
        "",
        f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"{m.get('memory_gib', '?')} GiB; kernel {m['kernel']}"
        + (f"; cgroup cpu.max `{m['cgroup_cpu_max']}`" if "cgroup_cpu_max" in m else ""),
        "- CPU flags: " + ", ".join(f"{k} {'yes' if on else 'no'}" for k, on in m.get("flags", {}).items()),
        f"- load average (1 min) at start {data['loadavg_start']:.2f}, at end {data['loadavg_end']:.2f} "
        "(anything well above 0 means other work shared the machine)",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "## 1. In process: PyTorch eager against ONNX Runtime",
        "",
        f"Median of {inproc['rounds']} interleaved runs (each round runs every model, batch and "
        f"runtime once, so drift hits all alike), after 3 warm-up runs. One thread each: "
        f"`torch.set_num_threads(1)` and `set_num_interop_threads(1)` under `torch.inference_mode()`; "
        "ONNX Runtime with the service's session options (intra-op 1, inter-op 1, sequential, all "
        "graph optimizations). Inputs: the stored held-out digits (eval.npz), reviews (their "
        "tokens, padded to the longest of the batch) and standard normal latents.",
        "",
        "The store keeps ONNX files, not PyTorch weights: the PyTorch modules are rebuilt from each "
        "graph's initializers by `load_tests/torch_rebuild.py` (batch norms the exporter folded into "
        "convolutions become exact pass-throughs with the folded bias; LSTM gates are reordered) and "
        "checked against ONNX Runtime on 32 stored inputs (max |difference| below).",
        "",
    ]
    rows = []
    for r in inproc["rows"]:
        torch_cell = ms(r["torch_ms"], 3)
        ratio_cell = format_value(r["torch_over_ort"], "x") if r["torch_over_ort"] else "n/a"
        parity = inproc["parity_max_abs_diff"].get(r["model"])
        if r["model"] == "resnet-int8":
            fp32_torch = next(x["torch_ms"] for x in inproc["rows"] if x["model"] == "resnet" and x["batch"] == r["batch"])
            torch_cell = f"(FP32 resnet: {ms(fp32_torch, 3)})"
            ratio_cell = f"{format_value(ratio(fp32_torch, r['ort_ms']), 'x')} vs FP32 PyTorch" if fp32_torch else "n/a"
            parity = "no PyTorch INT8 model"
        parity_cell = f"{parity:.1e}" if isinstance(parity, float) else str(parity)
        rows.append([r["model"], r["batch"], torch_cell, ms(r["ort_ms"], 3), ratio_cell, parity_cell])
    lines += [markdown_table(["model", "batch", "PyTorch ms", "ONNX Runtime ms", "PyTorch / ORT", "max abs diff"], rows), ""]
    if "inprocess" in plots:
        lines += [f"![in-process latency]({plots['inprocess']})", ""]

    q = inproc["quantization"]
    rows = []
    for b in INPROCESS_BATCHES:
        lat = q["latency_ms"][b]
        rows.append([f"latency, batch {b} (ms, ORT)", ms(lat["resnet"], 3), ms(lat["resnet-int8"], 3), format_value(ratio(lat["resnet-int8"], lat["resnet"]), "x")])
    rows.append(["ONNX file (KiB)", f"{q['bytes']['resnet'] / 1024:.0f}", f"{q['bytes']['resnet-int8'] / 1024:.0f}", format_value(ratio(q["bytes"]["resnet-int8"], q["bytes"]["resnet"]), "x")])
    acc = q["accuracy"]
    rows.append([f"accuracy, re-measured ({q['eval_images']} held-out digits)", f"{acc['resnet']:.4f}", f"{acc['resnet-int8']:.4f}", f"{100 * (acc['resnet-int8'] - acc['resnet']):+.2f} points"])
    accm = q["accuracy_metadata"]
    if accm["resnet"] is not None and accm["resnet-int8"] is not None:
        rows.append(["accuracy, stored metadata", f"{accm['resnet']:.4f}", f"{accm['resnet-int8']:.4f}", f"{100 * (accm['resnet-int8'] - accm['resnet']):+.2f} points"])
    lines += [
        "## 2. resnet FP32 against resnet-int8",
        "",
        f"Same interleaved timing as above; the INT8 model is ONNX Runtime static QDQ ({q['chosen'] or 'see its metadata'}). "
        f"One digit of {q['eval_images']} is {100 / max(q['eval_images'], 1):.2f} points.",
        "",
        markdown_table(["", "resnet (FP32)", "resnet-int8", "INT8 / FP32"], rows),
        "",
    ]

    lines += http_sections(data, plots)
    lines += profile_section(data["http"].get("profile"))
    lines += [
        "## Method",
        "",
        f"- Load: wrk {v.get('wrk', '')}, `-t1 -c<concurrency> -d{profile['duration_s']}s --latency --timeout {WRK_TIMEOUT}` "
        f"with `load_tests/wrk/post.lua` (one fixed body per endpoint), after an unmeasured {profile['warmup_s']} s "
        "run at the same concurrency. The three servers (batching on, batching off, naive) run side by "
        "side and take turns point by point (endpoint, then concurrency, then server), so a change in "
        "the machine's load hits them alike; the idle ones' CPU during each point is recorded "
        "(`idle_servers_cores` in bench.json). Closed loop: each connection sends its next request when the "
        "previous answer arrives. Throughput counts 2xx answers only; latency percentiles cover "
        "every answer (a fast 503 would pull them down, so non-2xx counts are shown beside them).",
        "- Server: `bentoml serve service.service:ModelServe` with the default settings (1 worker, 1 "
        "ONNX Runtime thread per session) on 127.0.0.1, models from $BENTOML_HOME; `batching off` "
        "is the same with MODELSERVE_MAX_BATCH=1. Its CPU is the user + system time of the server "
        "process and every process under it (/proc/<pid>/stat), before and after each point.",
        "- Naive baseline: `uvicorn load_tests.naive_app:app --workers 1` with uvicorn's and "
        "PyTorch's defaults (a sync FastAPI handler in the thread pool, PyTorch's default threads), "
        "the same cnn weights, the same request body and response shape as /classify.",
        "- Cold start: from just before the process is created to the first 200 of /readyz (polled every 50 ms).",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def http_sections(data: dict, plots: dict[str, str]) -> list[str]:
    inproc, http = data["in_process"], data["http"]
    levels = data["profile"]["concurrency"]
    lines = ["## 3. Over HTTP", ""]
    # 3a. c=1 against in-process
    rows = []
    for ep in ENDPOINTS:
        p = point(http, "batching on", ep.key, 1)
        model_ms, prep_ms = reference_ms(inproc, ep.key)
        if p is None:
            rows.append([ep.label, "n/a", "n/a", "n/a", ms(model_ms, 3), ms(prep_ms, 3), "n/a"])
            continue
        inside = (model_ms or 0.0) + (prep_ms or 0.0)
        rows.append([ep.label, ms(p["p50_ms"]), ms(p["p95_ms"]), ms(p["p99_ms"]), ms(model_ms, 3), ms(prep_ms, 3), ms(p["p50_ms"] - inside)])
    lines += [
        "### Concurrency 1: the service's own cost",
        "",
        "One connection, batching on (default). In process: the median ONNX Runtime call on the "
        "request's own input, and the service's preprocessing of it (image framing, text encoding); "
        "overhead = HTTP p50 - both: parsing, validation, batching, response, HTTP.",
        "",
        markdown_table(["endpoint", "p50 ms", "p95 ms", "p99 ms", "in-process model ms", "in-process prep ms", "overhead p50 ms"], rows),
        "",
    ]
    # 3b. sweep
    lines += ["### Throughput and tail latency by concurrency", ""]
    header = ["endpoint", "server"] + [f"c={c} req/s" for c in levels] + [f"c={c} p99 ms" for c in levels] + ["non-2xx / errors"]
    rows = []
    for ep in ENDPOINTS:
        for server in ("batching on", "batching off"):
            pts = [point(http, server, ep.key, c) for c in levels]
            if not any(pts):
                continue
            bad = sum(p["non2xx"] for p in pts if p) + sum(p["socket_errors"] for p in pts if p)
            rows.append([ep.label, server] + [f"{p['rps_ok']:.1f}" if p else "n/a" for p in pts] + [ms(p and p["p99_ms"], 1) for p in pts] + [bad])
    pts = [point(http, "naive", "classify", c) for c in levels]
    if any(pts):
        bad = sum(p["non2xx"] + p["socket_errors"] for p in pts if p)
        rows.append(["/classify cnn (JSON, 1 digit)", "naive FastAPI"] + [f"{p['rps_ok']:.1f}" if p else "n/a" for p in pts] + [ms(p and p["p99_ms"], 1) for p in pts] + [bad])
    lines += [markdown_table(header, rows), ""]
    for server, sweep_data in http["sweeps"].items():
        for key, why in sweep_data.get("unavailable", {}).items():
            lines.append(f"- {server}: `{key}` not measured: {why}")
    batch_notes = []
    for server in ("batching on", "batching off"):
        rows_by_model = http["sweeps"].get(server, {}).get("batch_rows")
        if rows_by_model:
            parts = [f"{model} {v['rows'] / v['batches']:.2f}" for model, v in sorted(rows_by_model.items()) if v["batches"]]
            batch_notes.append(f"- {server}: mean rows per executed batch over the whole sweep (from /metrics): " + ", ".join(parts))
    lines += batch_notes + [""]
    for key in ("throughput", "p99"):
        if key in plots:
            lines += [f"![{key}]({plots[key]})", ""]

    # 3c. client check
    all_points = [p for s in http["sweeps"].values() for p in s.get("points", [])]
    if all_points:
        lines += ["### Was the client the bottleneck?", ""] + client_check(all_points, levels) + [""]

    # 4. naive
    rows = []
    for c in levels:
        on, off, naive = point(http, "batching on", "classify", c), point(http, "batching off", "classify", c), point(http, "naive", "classify", c)
        rows.append([
            c,
            f"{naive['rps_ok']:.1f}" if naive else "n/a",
            ms(naive and naive["p99_ms"], 1),
            f"{on['rps_ok']:.1f}" if on else "n/a",
            ms(on and on["p99_ms"], 1),
            format_value(ratio(on and on["rps_ok"], naive and naive["rps_ok"]), "x"),
            format_value(ratio(off and off["rps_ok"], naive and naive["rps_ok"]), "x"),
        ])
    lines += [
        "## 4. Naive baseline: FastAPI + uvicorn + PyTorch eager",
        "",
        "`load_tests/naive_app.py`: what tutorials build, one uvicorn worker running the PyTorch cnn "
        "per request (same weights, same JSON body and top-3 answer as /classify cnn).",
        "",
        markdown_table(["concurrency", "naive req/s", "naive p99 ms", "service req/s", "service p99 ms", "service / naive", "batching off / naive"], rows),
        "",
    ]
    # 5. cold start
    starts = http["cold_start_s"]
    lines += ["## 5. Cold start", ""]
    if starts:
        lines.append(
            f"Process start to /readyz 200, default settings: {', '.join(f'{s:.2f}' for s in starts)} s; "
            f"median {statistics.median(starts):.2f} s. Every model is loaded, checked against its sha256 and warmed up before /readyz answers 200."
        )
    extra = ", ".join(f"{k} {val:.2f} s" for k, val in http.get("ready_s", {}).items())
    if extra:
        lines.append(f"Other starts in this run: {extra}.")
    lines.append("")
    return lines


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


def client_check(points: list[dict], levels) -> list[str]:
    """What the run shows about the load generator: its CPU, the server's, the no-op ceiling."""
    worst = max(points, key=lambda p: p["client_cores"])
    lines = [
        f"- wrk used at most {worst['client_cores']:.2f} of a core ({worst['server']} {worst['endpoint']} "
        f"c={worst['concurrency']}, {worst['rps']:.0f} req/s), measured as its own user + system time "
        "(getrusage of children around each run); the machine has "
        f"{os.cpu_count()} cores, so wrk left the server all but that.",
    ]
    for server in ("batching on", "batching off", "naive"):
        mine = [p for p in points if p["server"] == server]
        if mine:
            top = max(mine, key=lambda p: p["server_cores"])
            lines.append(
                f"- {server}: the server's processes used at most {top['server_cores']:.2f} cores "
                f"({top['endpoint']} c={top['concurrency']}; user + system time of the server and its workers from /proc)."
            )
    idle = max(points, key=lambda p: p.get("idle_servers_cores", 0.0))
    lines.append(f"- The servers not being measured used at most {idle.get('idle_servers_cores', 0.0):.2f} cores together during a point.")
    c = max(levels)
    noop = next((p for p in points if p["server"] == "batching on" and p["endpoint"] == "noop" and p["concurrency"] == c), None)
    models = [p for p in points if p["server"] == "batching on" and p["endpoint"] != "noop" and p["concurrency"] == c]
    if noop and models:
        best = max(models, key=lambda p: p["rps_ok"])
        times = noop["rps_ok"] / best["rps_ok"] if best["rps_ok"] else float("inf")
        if times >= 2:
            lines.append(
                f"- At c={c} the no-op endpoint of the same server answered {noop['rps_ok']:.0f} req/s, {times:.1f}x the "
                f"busiest model endpoint ({best['endpoint']}, {best['rps_ok']:.0f} req/s): wrk and the HTTP path deliver "
                "far more requests than the models take."
            )
        else:
            lines.append(
                f"- At c={c} the no-op endpoint of the same server answered {noop['rps_ok']:.0f} req/s, only {times:.1f}x the "
                f"busiest model endpoint ({best['endpoint']}, {best['rps_ok']:.0f} req/s): the ceiling is the server's "
                "HTTP path itself, not the models and not wrk (whose CPU is above)."
            )
    return lines


def plot(data: dict, folder: str, prefix: str) -> dict[str, str]:
    """PNG figures; returns {name: file name relative to the report}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    http, inproc = data["http"], data["in_process"]
    levels = data["profile"]["concurrency"]
    out = {}
    panels = [ep for ep in ENDPOINTS if ep.key != "noop"]
    for metric, ylabel, name in (("rps_ok", "2xx answers per second", "throughput"), ("p99_ms", "p99 latency (ms, log scale)", "p99")):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
        for ax, ep in zip(axes[0], panels):
            series = [("batching on", ep.key, "-o", "C0", "batching on"), ("batching off", ep.key, "-s", "C1", "batching off (max batch 1)")]
            series.append(("batching on", "noop", "--", "grey", "no-op endpoint (same server)"))
            if ep.key == "classify":
                series.append(("naive", "classify", "-^", "C2", "naive FastAPI + PyTorch"))
            for server, key, style, color, label in series:
                xs, ys = [], []
                for c in levels:
                    p = point(http, server, key, c)
                    if p:
                        xs.append(c)
                        ys.append(p[metric])
                if xs:
                    ax.plot(xs, ys, style, label=label, color=color)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(levels), [str(c) for c in levels])
            if metric == "rps_ok":
                ax.set_ylim(bottom=0)
            else:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(ep.label, fontsize=9)
            ax.set_xlabel("concurrent connections")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        handles, labels = [], []
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if not handles:  # nothing measured over HTTP
            plt.close(fig)
            continue
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
        file = f"{prefix}-{name}.png"
        fig.savefig(os.path.join(folder, file), dpi=110)
        plt.close(fig)
        out[name] = file

    fig, axes = plt.subplots(1, len(INPROCESS_BATCHES) + 1, figsize=(15, 4.2), squeeze=False, gridspec_kw={"width_ratios": [3, 3, 1.4]})
    for ax, batch in zip(axes[0], INPROCESS_BATCHES):
        rows = [r for r in inproc["rows"] if r["batch"] == batch and r["model"] != "resnet-int8"]
        xs = list(range(len(rows)))
        for offset, key, label, color in ((-0.2, "torch_ms", "PyTorch eager", "C3"), (0.2, "ort_ms", "ONNX Runtime", "C0")):
            values = [r[key] or 0 for r in rows]
            bars = ax.bar([x + offset for x in xs], values, 0.4, label=label, color=color)
            ax.bar_label(bars, [f"{v:.2f}" if v else "" for v in values], fontsize=7)
        ax.set_xticks(xs, [r["model"] for r in rows], fontsize=8)
        ax.set_ylabel("median ms per call, 1 thread")
        ax.set_title(f"PyTorch eager vs ONNX Runtime, batch {batch}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    ax = axes[0][-1]
    q = inproc["quantization"]["latency_ms"]
    xs = list(range(len(INPROCESS_BATCHES)))
    for offset, model, color in ((-0.2, "resnet", "C0"), (0.2, "resnet-int8", "C4")):
        values = [q[b][model] for b in INPROCESS_BATCHES]
        bars = ax.bar([x + offset for x in xs], values, 0.4, label=f"{model} (ORT)", color=color)
        ax.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=7)
    ax.set_xticks(xs, [f"batch {b}" for b in INPROCESS_BATCHES], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title("resnet FP32 vs INT8", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    file = f"{prefix}-inprocess.png"
    fig.savefig(os.path.join(folder, file), dpi=110)
    plt.close(fig)
    out["inprocess"] = file
    return out


# ----------------------------------------------------------------------------------------------


def estimate_seconds(profile: Profile) -> float:
    """Roughly how long the HTTP part takes: points x (warm-up + measure + overhead) + starts."""
    points = (2 * len(ENDPOINTS) + 1) * len(profile.concurrency)
    return points * (profile.duration_s + profile.warmup_s + 0.5) + (profile.cold_starts + 2) * 10


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
    log("in process: PyTorch eager vs ONNX Runtime, 1 thread each")
    inproc = in_process(store, payloads, profile.rounds)
    for r in inproc["rows"]:
        log(f"  {r['model']:<12} batch {r['batch']:<3} PyTorch {ms(r['torch_ms'], 3):>8} ms  ORT {ms(r['ort_ms'], 3):>8} ms  ratio {format_value(r['torch_over_ort'], 'x')}")
    if args.skip_http:
        http = {"cold_start_s": [], "sweeps": {}, "ready_s": {}}
    else:
        http = http_benchmarks(store, payloads, profile, log)

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
        "in_process": inproc,
        "http": http,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
