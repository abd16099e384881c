"""Per model and version figures summed over every worker of the server, read from the same
prometheus_client multiprocess files that /metrics serves (each worker counts only its own
requests in memory)."""

from __future__ import annotations

import os
from collections import defaultdict

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

SERIES = {
    "modelserve_request_seconds": "request",
    "modelserve_queue_seconds": "queue",
    "modelserve_inference_seconds": "compute",
    "modelserve_batch_rows": "rows",
}


def collect() -> dict[tuple[str, str], dict[str, float]]:
    """{(model, version): {"request_count", "request_sum", "queue_count", ..., "rows_sum"}}."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:  # one process (tests of the service object): this process's own series
        from prometheus_client import REGISTRY as registry
    figures: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        short = SERIES.get(family.name)
        if short is None:
            continue
        for sample in family.samples:
            suffix = sample.name.removeprefix(family.name)
            if suffix in ("_count", "_sum") and "model" in sample.labels:
                figures[(sample.labels["model"], sample.labels["version"])][short + suffix] += sample.value
    return figures


def summary(figures: dict[str, float]) -> dict:
    """What GET /models/{name} shows of one version."""
    requests = int(figures.get("request_count", 0))
    return {
        "requests": requests,
        "mean_latency_ms": round(1000 * figures.get("request_sum", 0) / requests, 3) if requests else None,
        "batches": int(figures.get("compute_count", 0)),
        "rows": int(figures.get("rows_sum", 0)),
        "mean_queue_ms": round(1000 * figures.get("queue_sum", 0) / figures["queue_count"], 3) if figures.get("queue_count") else None,
    }


def triton(view: str, version: str, figures: dict[str, float]) -> dict:
    """Triton's statistics extension for one model version (durations in nanoseconds)."""

    def duration(count_key: str, sum_key: str) -> dict:
        return {"count": int(figures.get(count_key, 0)), "ns": int(figures.get(sum_key, 0) * 1e9)}

    zero = {"count": 0, "ns": 0}
    return {
        "name": view,
        "version": version,
        "last_inference": 0,
        "inference_count": int(figures.get("rows_sum", 0)),
        "execution_count": int(figures.get("compute_count", 0)),
        "inference_stats": {
            "success": duration("request_count", "request_sum"),
            "fail": zero,
            "queue": duration("queue_count", "queue_sum"),
            "compute_input": zero,
            "compute_infer": duration("compute_count", "compute_sum"),
            "compute_output": zero,
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
    }
