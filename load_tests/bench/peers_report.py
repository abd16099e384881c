"""The goals of `make bench-peers` as ratios of one run's figures, and its report:
reports/bench-peers.md, .json and a PNG plot, rewritten after every point."""

from __future__ import annotations

import json
import os
import statistics

from load_tests.bench.common import Target, machine, markdown_table, ms, ratio, targets_table


def point(data: dict, server: str, what: str, c: int) -> dict | None:
    """A server's figures at one point: with several rounds, the median of each figure."""
    found = [p for p in data["points"] if p["server"] == server and p["what"] == what and p["concurrency"] == c and "failed" not in p]
    if len(found) <= 1:
        return found[0] if found else None
    number = (int, float)
    return {k: statistics.median(p[k] for p in found) if isinstance(v, number) and not isinstance(v, bool) else v for k, v in found[0].items()}


def ours(data: dict) -> str:
    return next(label for label, info in data["servers"].items() if info["kind"] == "modelserve")


def targets(data: dict) -> list[Target]:
    """c=32 throughput >= 2x each Python peer's and above TorchServe's; c=1 p50 below each
    peer's; V2 binary 64-row throughput >= 0.7x in-process ORT at batch 64; /classify c=32 >= 0.7x /noop."""
    me = ours(data)
    mine32, mine1 = point(data, me, "classify", 32), point(data, me, "classify", 1)
    out = []
    for label, info in data["servers"].items():
        if info["kind"] == "modelserve":
            continue
        why = info.get("failed") or "not measured"
        theirs32, theirs1 = point(data, label, "classify", 32), point(data, label, "classify", 1)
        out.append(Target(f"{me} c=32 req/s / {label}'s", ratio(mine32 and mine32["rps_ok"], theirs32 and theirs32["rps_ok"]),
                          2.0 if info["python"] else 1.0, ">=" if info["python"] else ">", "x", missing=why))
        out.append(Target(f"{me} c=1 p50 / {label}'s", ratio(mine1 and mine1["p50_ms"], theirs1 and theirs1["p50_ms"]), 1.0, "<", "x", missing=why))
    v2 = next((point(data, p["server"], p["what"], p["concurrency"]) for p in data["points"] if p["what"] == "v2_binary"), None)
    inproc = {"rows_per_s": statistics.median(r["rows_per_s"] for r in data["inprocess_batch"])} if data["inprocess_batch"] else None
    out.append(Target(f"V2 binary {v2['rows_per_request'] if v2 else 64}-row rows/s / in-process ORT batch 64",
                      ratio(v2 and v2["rps_ok"] * v2["rows_per_request"], inproc and inproc["rows_per_s"]), 0.7, ">=", "x", missing="V2 point missing"))
    noop = point(data, me, "noop", 32)
    out.append(Target("/classify c=32 req/s / /noop c=32 (same server)", ratio(mine32 and mine32["rps_ok"], noop and noop["rps_ok"]),
                      0.7, ">=", "x", missing="/noop or /classify point missing"))
    return out


def table(data: dict) -> str:
    rows = []
    for label, info in data["servers"].items():
        p1, p32 = point(data, label, "classify", 1), point(data, label, "classify", 32)
        bad = sum(p["non2xx"] + p["socket_errors"] for p in (p1, p32) if p)
        rows.append([label, info.get("version", ""), ms(p1 and p1["p50_ms"]), f"{p32['rps_ok']:,.0f}" if p32 else "n/a",
                     ms(p32 and p32["p99_ms"], 1), f"{p32['server_cores']:.2f} / {p32['client_cores']:.2f}" if p32 else "n/a",
                     f"{p32['idle_servers_cores']:.2f}" if p32 else "n/a", f"{p32['server_rss_mib']:.0f}" if p32 else "n/a", bad, info.get("failed", info.get("answer", ""))[:120]])
    return markdown_table(["server", "version", "c=1 p50 ms", "c=32 req/s", "c=32 p99 ms", "c=32 cores server / wrk",
                           "idle others' cores", "RSS MiB", "non-2xx + errors", "answer (top-3 vs in process)"], rows)


def write(data: dict, folder: str, prefix: str) -> None:
    with open(os.path.join(folder, f"{prefix}.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    plot = plot_png(data, folder, prefix)
    m = machine()
    load = data["loadavg_start"]
    end = data.get("loadavg_end")
    lines = [
        "# modelserve against other servers", "",
        f"`{data['command'].strip()}` on {data['date']}, {data.get('seconds', 0):.0f} s"
        + ("" if end else " — **run in progress or interrupted: partial results**")
        + f". {data['duration_s']} s per point after a {data['warmup_s']} s warm-up, wrk `-t1`, every server up side by side and taking turns point by point, "
        f"{data.get('rounds', 1)} round(s) of all the points; with more than one, each figure below is the median over the rounds.", "",
        f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs. Load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in load)}"
        + (f", at end {', '.join(f'{x:.2f}' for x in end)}" if end else "")
        + ": the machine is shared, figures are noisy; ratios measured side by side in this run are what count.", "",
        "## Goals", "", targets_table(targets(data)) if data["points"] else "no point measured yet", "",
        "## One 28x28 image per request, top-3 labels", "",
        f"Model: the stored `{data['model']['name']}:{data['model']['version']}` ONNX file, one ONNX Runtime thread in every server. "
        "Throughput counts 2xx answers; CPU is user + system time of each server's process tree (/proc) and wrk's (getrusage), in cores; "
        "The servers not being measured are paused (SIGSTOP to their process trees) during each point and the in-process timing: idle, LitServe's and Ray's "
        "processes took about 0.2 core from whichever server was measured. \"idle others\" is what the paused servers used meanwhile (0.00: the pause held). "
        "The version of modelserve is the commit.", "",
        table(data), "",
    ]
    if plot:
        lines += [f"![servers]({plot})", ""]
    lines += ["## Settings", ""] + [f"- **{label}**: {info['settings']}" for label, info in data["servers"].items()]
    lines += [f"- {data['triton']}.", ""]
    v2 = [p for p in data["points"] if p["what"] in ("v2_binary", "noop")]  # every round
    if v2 or data["inprocess_batch"]:
        lines += ["## Closer to the limit", ""]
        for p in v2:
            if "failed" in p:
                lines.append(f"- {p['server']} {p['what']} c={p['concurrency']}: failed: {p['failed'][:300]}")
            else:
                lines.append(f"- {p['server']} `{p['what']}` c={p['concurrency']}: {p['rps_ok']:,.0f} req/s"
                             + (f" x {p['rows_per_request']} rows = {p['rps_ok'] * p['rows_per_request']:,.0f} rows/s" if p["rows_per_request"] > 1 else "")
                             + f", p50 {p['p50_ms']:.2f} ms, server {p['server_cores']:.2f} cores")
        for r in data["inprocess_batch"]:
            lines.append(f"- ONNX Runtime in process, batch {r['rows']}, 1 thread: median {r['median_ms']:.2f} ms = {r['rows_per_s']:,.0f} rows/s")
        lines += ceiling_lines(data)
        lines.append("")
    lines += profile_lines(data.get("profile"))
    failed = [p for p in data["points"] if "failed" in p]
    if failed:
        lines += ["## Failed points", ""] + [f"- {p['server']} {p['what']} c={p['concurrency']}: {p['failed'][:300]}" for p in failed] + [""]
    with open(os.path.join(folder, f"{prefix}.md"), "w") as f:
        f.write("\n".join(lines))


def cpu_ms_per_request(p: dict) -> float:
    """Server and wrk CPU per answered request: what bounds c=32 throughput on cores both share."""
    return 1000 * (p["server_cores"] + p["client_cores"]) / p["rps_ok"]


def ceiling_lines(data: dict) -> list[str]:
    """How close /classify could come to /noop if the service ran nothing but the model."""
    me = ours(data)
    noop, classify = point(data, me, "noop", 32), point(data, me, "classify", 32)
    if not (noop and classify and noop["rps_ok"] and classify["rps_ok"] and data["inprocess_batch"]):
        return []
    floor, cost = cpu_ms_per_request(noop), cpu_ms_per_request(classify)
    model = statistics.median(1000 / r["rows_per_s"] for r in data["inprocess_batch"])
    return [f"- CPU per answered request at c=32 (server + wrk), {me}: `/noop` {floor:.3f} ms, `/classify` {cost:.3f} ms. "
            f"ONNX Runtime alone takes {model:.3f} ms a row (in process, batch 64; the server's batches are smaller, so this "
            f"is a lower bound). With nothing but the model beside `/noop`'s work, `/classify` would reach "
            f"{floor:.3f} / ({floor:.3f} + {model:.3f}) = {floor / (floor + model):.2f}x of `/noop`; the service's own work "
            f"beside the model is about {cost - floor - model:.3f} ms a request."]


def plot_png(data: dict, folder: str, prefix: str) -> str | None:
    labels = [label for label in data["servers"] if point(data, label, "classify", 32) or point(data, label, "classify", 1)]
    if not labels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(labels) + 1.8))
    for ax, (what, c, key, title) in zip(axes, (("classify", 32, "rps_ok", "c=32: 2xx answers per second"), ("classify", 1, "p50_ms", "c=1: p50 latency (ms)"))):
        values = [(point(data, label, what, c) or {}).get(key, 0) for label in labels]
        bars = ax.barh(labels, values, color=["C0" if data["servers"][lab]["kind"] == "modelserve" else "C7" for lab in labels])
        ax.bar_label(bars, [f"{v:,.0f}" if key == "rps_ok" else f"{v:.2f}" for v in values], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    axes[1].set_yticklabels([])
    fig.tight_layout()
    file = f"{prefix}.png"
    fig.savefig(os.path.join(folder, file), dpi=100)
    plt.close(fig)
    return file


def profile_lines(profile: dict | None) -> list[str]:
    """/classify against /noop, by layer of the worker's event-loop thread (py-spy)."""
    if not profile:
        return []
    missing = [f"{key}: {p['missing']}" for key, p in profile.items() if "missing" in p]
    if missing:
        return ["## What stands between /classify and /noop", "", "Not profiled: " + "; ".join(missing), ""]
    loops = {key: p["threads"].get("event loop", {"samples": 0, "waiting": 0, "layers": []}) for key, p in profile.items()}
    layers = sorted({layer for t in loops.values() for layer, _ in t["layers"]}, key=lambda name: -dict(loops["classify"]["layers"]).get(name, 0))
    rows = [[layer] + [f"{100 * dict(t['layers']).get(layer, 0):.1f}%" for t in loops.values()] for layer in layers]
    rows.append(["(samples; share waiting)"] + [f"{t['samples']}; {100 * t['waiting']:.0f}%" for t in loops.values()])
    return ["## What stands between /classify and /noop", "",
            f"py-spy sampled the one worker of the default-setting server at 100 Hz for {next(iter(profile.values()))['seconds']} s "
            "under each endpoint at c=32: shares of the event-loop thread's busy samples by layer (each sample at its innermost frame; "
            "the batch thread runs ONNX Runtime beside it).", "",
            markdown_table(["layer"] + [f"`/{key}`" for key in loops], rows), "",
            "Innermost functions of the event loop under `/classify`:", "",
            markdown_table(["function", "share"], [[f"`{f}`", f"{100 * share:.1f}%"] for f, share in loops["classify"].get("functions", [])[:10]]), ""]
