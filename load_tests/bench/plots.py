"""The PNG figures of `make bench`."""

from __future__ import annotations

import os

from load_tests.bench.inprocess import INPROCESS_BATCHES, QUANT, SOURCE
from load_tests.bench.inputs import ENDPOINTS
from load_tests.bench.targets import point


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
        rows = [r for r in inproc["rows"] if r["batch"] == batch and r["model"] != QUANT]
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
    for offset, model, color in ((-0.2, SOURCE, "C0"), (0.2, QUANT, "C4")):
        values = [q[b][model] for b in INPROCESS_BATCHES]
        bars = ax.bar([x + offset for x in xs], values, 0.4, label=f"{model} (ORT)", color=color)
        ax.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=7)
    ax.set_xticks(xs, [f"batch {b}" for b in INPROCESS_BATCHES], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(f"{SOURCE} FP32 vs INT8", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    file = f"{prefix}-inprocess.png"
    fig.savefig(os.path.join(folder, file), dpi=110)
    plt.close(fig)
    out["inprocess"] = file
    return out
