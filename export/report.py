"""Figures and the models report under reports/ (or $REPORTS_DIR)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from export import store  # noqa: E402
from modelspec import EXPORT_ORDER  # noqa: E402
from modelspec.image import grid  # noqa: E402


def reports_dir() -> str:
    folder = os.environ.get("REPORTS_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), "reports"))
    os.makedirs(folder, exist_ok=True)
    return folder


def training_figures(name: str, history: dict[str, list[float]], samples: np.ndarray | None) -> list[str]:
    written = []
    if history:
        fig, axes = plt.subplots(1, len(history), figsize=(4 * len(history), 3), squeeze=False)
        for ax, (key, values) in zip(axes[0], history.items()):
            ax.plot(range(1, len(values) + 1), values)
            ax.set_title(f"{name}: {key}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(os.path.join(reports_dir(), f"{name}-training.png"))
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    if samples is not None:
        written.append(os.path.join(reports_dir(), f"{name}-samples.png"))
        plt.imsave(written[-1], grid(samples, columns=10), cmap="gray", vmin=0, vmax=1)
    return written


def confusion_figure(name: str, labels: list[str], confusion: list[list[int]]) -> str:
    """reports/NAME-confusion.png: rows the true class, columns the predicted one, counts in the cells."""
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.6 + 0.6 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: confusion matrix ({matrix.sum()} images)")
    fig.tight_layout()
    path = os.path.join(reports_dir(), f"{name}-confusion.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def headline(metrics: dict) -> str:
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.4f} (n={metrics['n']})"
    text = f"{metrics['classes_covered']}/10 classes, mean cnn confidence {metrics['mean_confidence']:.3f}"
    if "class_spread" in metrics:  # stored before issue 13: coverage and confidence only
        text += f", class spread {metrics['class_spread']:.2f}"
    if "asked_digit_accuracy_min_cnn" in metrics:
        text += f", asked digit drawn >= {metrics['asked_digit_accuracy_min_cnn']:.0%} of the time for every digit"
    if "reconstruction_mse" in metrics:
        text += f", reconstruction MSE {metrics['reconstruction_mse']:.4f}"
    return text


def generator_details(name: str, m: dict) -> list[str]:
    if "resnet" not in m:  # stored before issue 13: judged by cnn alone
        return [f"- {name}: samples per class as judged by cnn: {m['class_counts']}"]
    r = m["resnet"]
    lines = [
        f"- {name}: {m['samples']} unconditional samples, per class as judged by cnn: {m['class_counts']} "
        f"(spread {m['class_spread']:.2f}, mean confidence {m['mean_confidence']:.3f}); by resnet: {r['class_counts']} "
        f"(spread {r['class_spread']:.2f}, mean confidence {r['mean_confidence']:.3f})",
        f"- {name}: Frechet distance in the cnn's last hidden layer, samples vs held-out digits "
        f"{m['frechet_distance']['samples_vs_held_out']:.2f}; between two halves of the held-out digits "
        f"{m['frechet_distance']['held_out_halves']:.2f}",
    ]
    for judge in ("cnn", "resnet"):
        if f"asked_digit_accuracy_{judge}" in m:
            shares = ", ".join(f"{d}: {v:.2f}" for d, v in m[f"asked_digit_accuracy_{judge}"].items())
            lines.append(f"- {name}: asked digit drawn ({m['per_class_samples'] // 10} per digit), judged by {judge}: {shares}")
    return lines


def imported_section() -> list[str]:
    """The models `python -m export import` stored: their source file, signature, preprocessing and
    the accuracy measured by --eval (if it was given)."""
    names = store.imported_names()
    if not names:
        return []
    lines = [
        "",
        "## Imported models",
        "",
        "Stored by `python -m export import`: the user's ONNX file, byte for byte.",
        "",
        "| model | version | task | source file (sha256) | inputs -> outputs | preprocessing | metric |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        model = store.latest(name)
        md = model.info.metadata
        source = md["imported_from"]
        graph = md["spec"]["graphs"][0]
        signature = ", ".join(f"{t['name']} {t['dtype']} {t['shape']}" for t in graph["inputs"]) + " -> " + ", ".join(
            f"{t['name']} {t['dtype']} {t['shape']}" for t in graph["outputs"]
        )
        preprocessing = ", ".join(f"{k}={v}" for k, v in md["spec"]["preprocessing"].items()) or "-"
        metrics = md.get("metrics", {})
        metric = (
            f"accuracy {metrics['accuracy']:.4f} on {metrics['n']} images of {md['dataset']['name']}"
            if "accuracy" in metrics
            else "not measured (imported without --eval)"
        )
        lines.append(
            f"| {name} | {model.tag.version} | {md['spec']['task']} | {source['file']} ({source['sha256'][:12]}) | "
            f"{signature} | {preprocessing} | {metric} |"
        )
    return lines


def models_report() -> str:
    """reports/models.md: every latest stored model with its metrics, floor and provenance, then
    the imported ones."""
    lines = [
        "# Stored models",
        "",
        "Written by `python -m export` from the latest version of each model in the store.",
        "Every metric is measured with ONNX Runtime on the model's own `eval.npz`; re-check with `python -m export verify`.",
        "",
        "| model | version | metric | floor | dataset | training | parity (max abs diff) |",
        "|---|---|---|---|---|---|---|",
    ]
    details = []
    for name in EXPORT_ORDER:
        model = store.latest(name)
        if model is None:
            lines.append(f"| {name} | not stored | | | | | |")
            continue
        md = model.info.metadata
        floor_text = ", ".join(
            f"{floor['metric']} >= {floor['minimum']}"
            if "minimum" in floor
            else f"{floor['metric']} within {floor['max_drop']} of {floor['relative_to']}"
            for floor in [md["spec"]["floor"], *md["spec"].get("also", [])]
        )
        dataset = md["dataset"]
        training = md.get("training", {})
        parity = md.get("parity_max_abs_diff", {})
        cpu = f" ({training['cpu_seconds']} CPU s)" if "cpu_seconds" in training else ""
        lines.append(
            f"| {name} | {model.tag.version} | {headline(md['metrics'])} | {floor_text} | "
            f"{dataset['name']} ({dataset['sizes']['train']} train / {dataset['sizes']['test']} test) | "
            f"{training.get('profile', '')}, {training.get('seconds', '-')} s{cpu} | "
            f"{', '.join(f'{k}: {v:.1e}' for k, v in parity.items()) or '-'} |"
        )
        extra = {k: v for k, v in training.items() if k.startswith(("baseline", "torch_accuracy")) and k != "baseline_seconds"}
        if extra:
            details.append(f"- {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        if "quantization" in md:
            q = md["quantization"]
            details.append(
                f"- {name}: chose `{q['chosen']}`; FP32 {q['fp32_latency_ms_batch32']:.2f} ms at batch 32; "
                + "; ".join(
                    f"{k}: {c['latency_ms_batch32']:.2f} ms ({c['speedup_vs_fp32']:.2f}x), accuracy {c['accuracy']:.4f}, "
                    f"{c['bytes'] / 1024:.0f} KiB"
                    for k, c in q["candidates"].items()
                )
                + f" (FP32 {q['fp32_bytes'] / 1024:.0f} KiB; {q['timing']})"
            )
        if "confusion_matrix" in md["metrics"] and len(md["spec"]["labels"]) > 2:
            figure = confusion_figure(name, md["spec"]["labels"], md["metrics"]["confusion_matrix"])
            per_class = ", ".join(f"{label} {value:.3f}" for label, value in md["metrics"]["per_class_accuracy"].items())
            details.append(f"- {name}: accuracy per class: {per_class}; confusion matrix: `{os.path.basename(figure)}`")
        if "class_counts" in md["metrics"]:
            details += generator_details(name, md["metrics"])
    if details:
        lines += ["", "## Details", "", *details]
    lines += imported_section()
    path = os.path.join(reports_dir(), "models.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
