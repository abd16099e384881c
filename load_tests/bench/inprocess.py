"""In process, one thread each: PyTorch eager against ONNX Runtime per stored model, the
quantized model against its source, and the in-process references of the HTTP endpoints."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

from load_tests.bench.common import ratio
from load_tests.bench.inputs import Payloads, Store
from modelspec import DEFAULT_MODEL, GENERATIVE_TASKS, IMAGE_CLASSIFICATION, IMAGE_GENERATION, SPECS, TEXT_CLASSIFICATION

INPROCESS_BATCHES = (1, 32)


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


def served_graph(spec) -> str:
    """The graph a model's endpoints run: a generative model's is the one fed a latent."""
    if spec.task in GENERATIVE_TASKS:
        return next(g.filename for g in spec.graphs if g.inputs[0].kind == "normal")
    return spec.graphs[0].filename


# (label, store name, graph file) of every stored model, from modelspec
INPROCESS_MODELS = [
    (name if len(spec.graphs) == 1 else f"{name} {served_graph(spec).removesuffix('.onnx')}", name, served_graph(spec))
    for name, spec in SPECS.items()
]
# The quantized model and the one it was made from (its floor is relative to it)
QUANT, SOURCE = next((name, spec.floor.relative_to) for name, spec in SPECS.items() if spec.floor.relative_to)


def model_inputs(store: Store, name: str, filename: str, batch: int, seed: int | None = None) -> dict:
    """Inputs of one graph: `batch` rows of its eval arrays, or for a generator latents (and
    classes) drawn from `seed` (default: `batch`) in the order /gan/generate draws them."""
    import numpy as np

    spec = store.metadata(name)["spec"]
    graph = next(g for g in spec["graphs"] if g["filename"] == filename)
    first = graph["inputs"][0]
    if first["kind"] == "image01":
        source = SPECS[name].floor.relative_to or name  # a derived model is judged on its source's data
        return {first["name"]: store.eval_arrays(source)["x"][:batch]}
    if first["kind"] == "normal":
        rng = np.random.default_rng(batch if seed is None else seed)
        feeds = {first["name"]: rng.standard_normal((batch, first["shape"][1]), dtype=np.float32)}
        for t in graph["inputs"][1:]:  # a conditional generator's class, drawn after z as the service does
            if t["kind"] == "class_index":
                feeds[t["name"]] = rng.integers(0, len(spec["labels"]), batch).astype(np.int64)
        return feeds
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
        if name == QUANT:
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

    fp32, int8 = store.path(SOURCE), store.path(QUANT)
    resnet_eval = store.eval_arrays(SOURCE)
    accuracy = {}
    for label in (SOURCE, QUANT):
        logits = np.concatenate([sessions[label].run(None, {"image": resnet_eval["x"][i : i + 256]})[0] for i in range(0, len(resnet_eval["x"]), 256)])
        accuracy[label] = float((logits.argmax(1) == resnet_eval["y"]).mean())
    quant = {
        "latency_ms": {b: {m: timings[f"{m}|{b}|ort"]["median_ms"] for m in (SOURCE, QUANT)} for b in INPROCESS_BATCHES},
        "bytes": {SOURCE: os.path.getsize(fp32), QUANT: os.path.getsize(int8)},
        "accuracy": accuracy,
        "accuracy_metadata": {m: store.metadata(m)["metrics"].get("accuracy") for m in (SOURCE, QUANT)},
        "eval_images": int(len(resnet_eval["y"])),
        "chosen": store.metadata(QUANT).get("quantization", {}).get("chosen"),
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
    from modelspec.text import encode_batch

    classifier, generator, text = DEFAULT_MODEL[IMAGE_CLASSIFICATION], DEFAULT_MODEL[IMAGE_GENERATION], DEFAULT_MODEL[TEXT_CLASSIFICATION]
    label_of = {name: label for label, name, _ in INPROCESS_MODELS}
    cnn, gan, sentiment = sessions[label_of[classifier]], sessions[label_of[generator]], sessions[label_of[text]]
    digit = payloads.digit
    calls = {"classify|model": lambda: cnn.run(None, {"image": digit})}
    try:
        from service.inputs import image_input

        preprocessing = store.metadata(classifier)["spec"]["preprocessing"]
        framed = image_input(payloads.png, preprocessing)
        calls["classify_image|prep"] = lambda: image_input(payloads.png, preprocessing)
        calls["classify_image|model"] = lambda: cnn.run(None, {"image": framed})
    except Exception:  # the service's helpers moved: the image row shows the model alone
        calls["classify_image|model"] = lambda: cnn.run(None, {"image": digit})
    with open(store.path(text, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    text_pre = store.metadata(text)["spec"]["preprocessing"]
    tokens, lengths = encode_batch([payloads.review], vocab, text_pre)
    calls["sentiment|prep"] = lambda: encode_batch([payloads.review], vocab, text_pre)
    calls["sentiment|model"] = lambda: sentiment.run(None, {"tokens": tokens, "lengths": lengths})
    gan_feeds = model_inputs(store, generator, served_graph(SPECS[generator]), 1, seed=payloads.gan_seed)
    calls["gan|model"] = lambda: gan.run(None, gan_feeds)
    return calls
