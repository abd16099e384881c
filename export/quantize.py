"""`resnet-int8`, `fashion-int8`: the latest stored model named by the spec's floor
(`Floor.relative_to`), statically quantized by ONNX Runtime (QDQ).

Three settings are tried and timed side by side with the FP32 model, and the fastest one that
stays within the accuracy floor is stored. On CPUs without VNNI (AVX2 only), signed 8-bit
activations are known to be slow; U8 activations with reduce_range avoid the saturation
problem of the u8s8 AVX2 kernels, which VNNI does not have, so there the full range keeps more
precision. The measurement, not this comment, decides.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from export import store
from export.data import prepare_images
from export.evaluate import evaluate, floor_failure
from export.publish import FloorError, Result, finish, load_eval_arrays
from export.recipe import TrainOptions
from modelspec import SPECS, ModelSpec

CALIBRATION_IMAGES = {"smoke": 64, "quick": 512, "full": 1024}
TIMING_BATCH = 32
TIMING_ROUNDS = {"smoke": 5, "quick": 40, "full": 100}

CANDIDATES = {
    "u8s8-per-channel-reduce-range": dict(
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
    ),
    "u8s8-per-channel": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=False),
    "s8s8-per-tensor": dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False, reduce_range=False),
}


class CalibrationImages(CalibrationDataReader):
    def __init__(self, images: np.ndarray, input_name: str, batch: int = 64):
        self.batches = iter([{input_name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self.batches, None)


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # timing one thread each keeps the comparison fair on a shared machine
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def median_latencies_ms(paths: dict[str, str], batch: np.ndarray, input_name: str, rounds: int) -> dict[str, float]:
    """Interleaved timing: each round runs every model once, so drift hits all of them alike."""
    sessions = {name: session(path) for name, path in paths.items()}
    for s in sessions.values():
        s.run(None, {input_name: batch})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            started = time.perf_counter()
            s.run(None, {input_name: batch})
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def quantize(spec: ModelSpec, options: TrainOptions) -> Result:
    """Quantize the latest stored `spec.floor.relative_to`, calibrated on its training images."""
    started = time.perf_counter()
    source = spec.floor.relative_to
    fp32 = store.latest(source)
    if fp32 is None:
        raise FloorError(f"{spec.name} quantizes the stored {source}, which is missing: run `python -m export {source}` first")
    fp32_spec = ModelSpec.from_dict(fp32.info.metadata["spec"])
    spec = dataclasses.replace(spec, labels=fp32_spec.labels, preprocessing=fp32_spec.preprocessing)
    _, dataset, x, train_idx, _ = prepare_images(SPECS[source], options.dataset, options.seed)
    if dataset.sha256 != fp32.info.metadata["dataset"]["sha256"]:
        raise FloorError(
            f"{spec.name}: the stored {source} ({fp32.tag}) was trained on {fp32.info.metadata['dataset']['name']}, "
            f"not on {dataset.name}: pass the same --dataset"
        )
    rng = np.random.default_rng(options.seed)
    calibration = x[rng.permutation(train_idx)[: CALIBRATION_IMAGES[options.profile]]]
    eval_arrays = load_eval_arrays(fp32.path)
    input_name = spec.graphs[0].inputs[0].name
    fp32_metrics = fp32.info.metadata["metrics"]

    with tempfile.TemporaryDirectory(prefix=f"export-{spec.name}-") as work:
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(fp32.path_of("model.onnx"), prepared)
        paths, tried = {"fp32": fp32.path_of("model.onnx")}, {}
        for name, settings in CANDIDATES.items():
            folder = os.path.join(work, name)
            os.makedirs(folder)
            quantize_static(
                prepared,
                os.path.join(folder, "model.onnx"),
                CalibrationImages(calibration, input_name),
                quant_format=QuantFormat.QDQ,
                **settings,
            )
            paths[name] = os.path.join(folder, "model.onnx")
            metrics = evaluate(spec, folder, eval_arrays)
            failure = floor_failure(spec, metrics, fp32_metrics)
            tried[name] = {"accuracy": metrics["accuracy"], "meets_floor": failure is None, **({"floor_failure": failure} if failure else {})}
        batch = eval_arrays["x"][:TIMING_BATCH]
        latency = median_latencies_ms(paths, batch, input_name, TIMING_ROUNDS[options.profile])
        for name in tried:
            tried[name].update(
                latency_ms_batch32=latency[name],
                speedup_vs_fp32=latency["fp32"] / latency[name],
                bytes=os.path.getsize(paths[name]),
            )
        passing = [name for name in tried if tried[name]["meets_floor"]]
        if not passing:
            raise FloorError(f"{spec.name}: no quantization setting kept accuracy within the floor: {tried}; not stored")
        chosen = min(passing, key=lambda name: latency[name])
        folder = os.path.join(work, "chosen")
        os.makedirs(folder)
        shutil.copy2(paths[chosen], os.path.join(folder, "model.onnx"))
        metadata = {
            "dataset": fp32.info.metadata["dataset"],
            "training": {"profile": options.profile, "quantized_from": str(fp32.tag)},
            "quantization": {
                "chosen": chosen,
                "format": "QDQ",
                "calibration": {"method": "MinMax", "images": len(calibration), "from": "training split"},
                "fp32_latency_ms_batch32": latency["fp32"],
                "fp32_bytes": os.path.getsize(paths["fp32"]),
                "candidates": tried,
                "timing": f"median of {TIMING_ROUNDS[options.profile]} interleaved runs, batch {TIMING_BATCH}, 1 thread",
            },
        }
        return finish(spec, folder, eval_arrays, metadata, started)
