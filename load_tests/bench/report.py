"""reports/bench.md: the text of `make bench`'s report."""

from __future__ import annotations

import os
import statistics

from load_tests.bench.common import Target, format_value, markdown_table, ms, ratio, targets_table
from load_tests.bench.inprocess import INPROCESS_BATCHES, QUANT, SOURCE
from load_tests.bench.inputs import ENDPOINTS
from load_tests.bench.profiling import profile_section
from load_tests.bench.targets import point, reference_ms
from load_tests.bench.wrk import WRK_TIMEOUT


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
        if r["model"] == QUANT:
            fp32_torch = next(x["torch_ms"] for x in inproc["rows"] if x["model"] == SOURCE and x["batch"] == r["batch"])
            torch_cell = f"(FP32 {SOURCE}: {ms(fp32_torch, 3)})"
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
        rows.append([f"latency, batch {b} (ms, ORT)", ms(lat[SOURCE], 3), ms(lat[QUANT], 3), format_value(ratio(lat[QUANT], lat[SOURCE]), "x")])
    rows.append(["ONNX file (KiB)", f"{q['bytes'][SOURCE] / 1024:.0f}", f"{q['bytes'][QUANT] / 1024:.0f}", format_value(ratio(q["bytes"][QUANT], q["bytes"][SOURCE]), "x")])
    acc = q["accuracy"]
    rows.append([f"accuracy, re-measured ({q['eval_images']} held-out digits)", f"{acc[SOURCE]:.4f}", f"{acc[QUANT]:.4f}", f"{100 * (acc[QUANT] - acc[SOURCE]):+.2f} points"])
    accm = q["accuracy_metadata"]
    if accm[SOURCE] is not None and accm[QUANT] is not None:
        rows.append(["accuracy, stored metadata", f"{accm[SOURCE]:.4f}", f"{accm[QUANT]:.4f}", f"{100 * (accm[QUANT] - accm[SOURCE]):+.2f} points"])
    lines += [
        f"## 2. {SOURCE} FP32 against {QUANT}",
        "",
        f"Same interleaved timing as above; the INT8 model is ONNX Runtime static QDQ ({q['chosen'] or 'see its metadata'}). "
        f"One digit of {q['eval_images']} is {100 / max(q['eval_images'], 1):.2f} points.",
        "",
        markdown_table(["", f"{SOURCE} (FP32)", QUANT, "INT8 / FP32"], rows),
        "",
    ]

    lines += http_sections(data, plots)
    lines += profile_section(data["http"].get("profile"))
    lines += versions_section(data.get("versions") or {})
    lines += uploads_section(data.get("uploads") or {})
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


def versions_section(versions: dict) -> list[str]:
    """Shadow on against off, and the memory of a second loaded version (load_tests/bench/versions.py)."""
    if not versions:
        return []
    lines = ["## 6. Two versions side by side", ""]
    if "error" in versions:
        return lines + [f"Not measured: {versions['error']}", ""]
    lines += [
        "One worker on a private copy of the store, where every model has a second version (a copy of "
        "its latest). `/classify` with the default alone, and with the copy as a shadow (every request "
        "runs again on it after its answer is sent), in interleaved rounds switched by the admin API:",
        "",
    ]
    rows = []
    summary = versions["shadow"]["summary"]
    for c in sorted({s["concurrency"] for s in summary}):
        off = next(s for s in summary if s["concurrency"] == c and not s["shadow"])
        on = next(s for s in summary if s["concurrency"] == c and s["shadow"])
        rows.append([f"c={c}", f"{off['rps_ok']:,.0f} / {on['rps_ok']:,.0f}", f"{on['rps_ok'] / off['rps_ok']:.2f}x" if off["rps_ok"] else "n/a",
                     f"{off['p50_ms']:.2f} / {on['p50_ms']:.2f}", f"{off['p99_ms']:.2f} / {on['p99_ms']:.2f}", str(off["non2xx"] + on["non2xx"])])
    lines += [markdown_table(["/classify", "req/s off / on", "on / off", "p50 ms off / on", "p99 ms off / on", "failed"], rows), ""]
    memory = versions["second_version_rss"]
    rows = [[r["model"], f"{r['added_mib']:+.1f}", f"{r['rss_after_mib']:.0f}"] for r in memory["rows"]]
    lines += [
        f"Memory (RSS of the server's process tree, {memory['baseline_mib']:.0f} MiB with one version of each model), "
        "as each model's second version is loaded:",
        "",
        markdown_table(["model", "added MiB", "server MiB after"], rows),
        "",
        f"All second versions together: {memory['all_models_added_mib']:+.1f} MiB.",
        "",
    ]
    return lines


def uploads_section(uploads: dict) -> list[str]:
    """/classify beside large uploads, decoded in a pool or on the event loop (load_tests/bench/uploads.py)."""
    if not uploads:
        return []
    lines = ["## 7. Large uploads beside small requests", ""]
    if "error" in uploads:
        return lines + [f"Not measured: {uploads['error']}", ""]
    rows = []
    for label in dict.fromkeys(p["server"] for p in uploads["points"]):
        mine = [p for p in uploads["points"] if p["server"] == label]
        rows.append([label, f"{sum(p['rps_ok'] for p in mine) / len(mine):,.0f}", f"{sum(p['p50_ms'] for p in mine) / len(mine):.2f}",
                     f"{sum(p['p99_ms'] for p in mine) / len(mine):.2f}", f"{sum(p['uploads_ok'] for p in mine)}/{sum(p['uploads'] for p in mine)}"])
    lines += [
        f"`/classify` (one digit, JSON) at c={uploads['concurrency']} while another client sends {uploads['side']}x{uploads['side']} PNG "
        f"uploads ({uploads['upload_bytes'] / 2**20:.1f} MiB) to `/classify/image` one after another; two servers, interleaved rounds:",
        "",
        markdown_table(["uploads decoded", "/classify req/s", "p50 ms", "p99 ms", "uploads answered 200"], rows),
        "",
    ]
    return lines
