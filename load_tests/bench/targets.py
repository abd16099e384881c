"""The targets of `make bench`, computed from the figures of one run."""

from __future__ import annotations

import statistics

from load_tests.bench.common import Target, ratio
from load_tests.bench.inprocess import QUANT, SOURCE


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
    targets.append(Target(f"{QUANT} / {SOURCE} latency, batch 32 (in process)", ratio(b32[QUANT], b32[SOURCE]), 0.65, "<=", "x"))
    targets.append(
        Target(f"{SOURCE} accuracy drop FP32 -> INT8 (eval.npz)", 100 * (q["accuracy"][SOURCE] - q["accuracy"][QUANT]), 0.5, "<=", "points")
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
