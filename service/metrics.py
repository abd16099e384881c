"""Prometheus series of the service, beside BentoML's own request metrics.

Module-level prometheus_client objects: BentoML serves them on /metrics and, with several
workers, sums them across processes through prometheus_client's multiprocess mode.
"""

from prometheus_client import Counter, Gauge, Histogram

COMPUTE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

INFERENCE_SECONDS = Histogram(
    "modelserve_inference_seconds",
    "ONNX Runtime compute time of one executed batch (session.run only)",
    ["model", "version"],
    buckets=COMPUTE_BUCKETS,
)
BATCH_ROWS = Histogram(
    "modelserve_batch_rows", "Rows in one executed batch", ["model", "version"], buckets=ROW_BUCKETS
)
PREDICTIONS = Counter("modelserve_predictions", "Predictions by label", ["model", "version", "label"])
REJECTED = Counter(
    "modelserve_rejected_inputs", "Requests refused as client mistakes, by reason", ["endpoint", "model", "version", "reason"]
)
MODEL_INFO = Gauge(
    "modelserve_model_info",
    "Loaded models: 1 per loaded model, version and ONNX sha256, 0 once retired",
    ["model", "version", "sha256"],
    multiprocess_mode="max",
)
REQUEST_SECONDS = Histogram(
    "modelserve_request_seconds",
    "Time of one request's model calls (queue and compute, all graphs), per model and the version that answered",
    ["model", "version"],
    buckets=COMPUTE_BUCKETS,
)
QUEUE_SECONDS = Histogram(
    "modelserve_queue_seconds",
    "Time a request waited in its batcher's queue before its batch ran",
    ["model", "version"],
    buckets=COMPUTE_BUCKETS,
)
SHADOW_RUNS = Counter(
    "modelserve_shadow_runs",
    "Requests copied to a shadow version after the answer: agree (same top labels; for tensors, same shapes), disagree, error, skipped (the shadow fell behind)",
    ["model", "primary", "shadow", "result"],
)
SHADOW_DIFF = Histogram(
    "modelserve_shadow_max_abs_diff",
    "Largest absolute difference between a shadow version's tensor output and the answering version's",
    ["model", "primary", "shadow"],
    buckets=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0),
)
