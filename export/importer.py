"""`python -m export import PATH.onnx --name NAME --task TASK`: store an ONNX model the user brings.

Before anything is stored: onnx.checker; the graph loads in ONNX Runtime and runs on a random
input of its declared shape; the batch axis is dynamic (or `--fixed-batch` says it is not, and
the spec records `max_batch: 1` in its preprocessing so that it is never batched); the inputs
and outputs fit the task; the labels match the output width. The stored model.onnx is the
user's file, byte for byte. No torch: this runs with the serving requirements plus onnx.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from export import store
from export.import_checks import ImportRefused, check_task, preprocessing_for, signature
from export.import_eval import eval_arrays
from modelspec import IMAGE_CLASSIFICATION, SPECS, TENSOR, Floor, GraphSpec, ModelSpec, sha256_file

TASKS = (IMAGE_CLASSIFICATION, TENSOR)
STORE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export import",
        description="Check an ONNX model and store it in the BentoML model store, ready to serve.",
        epilog="Preprocessing keys (image-classification): size=H,W channels=1|3 value_range=LO,HI mean=M[,M,M] "
        "std=S[,S,S] polarity=light_on_dark|dark_on_light|as_is framing=crop_to_content|resize "
        "resample=bilinear|box|nearest content_margin=F. size and channels come from the graph.",
    )
    parser.add_argument("path", help="the .onnx file (weights inside it, not in external data files)")
    parser.add_argument("--name", required=True, help="store name: lowercase letters, digits, '.', '_' and '-'")
    parser.add_argument("--task", required=True, choices=TASKS)
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="class names, comma-separated, in output order")
    labels.add_argument("--labels-file", help="class names, one a line, in output order")
    parser.add_argument("--preprocessing", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval", metavar="SOURCE", help="measure accuracy on an image folder (one sub-folder per class) or IDX files")
    parser.add_argument("--fixed-batch", action="store_true", help="the graph's batch axis is fixed at 1: never batch it")
    return parser.parse_args(argv)


def read_labels(args: argparse.Namespace) -> list[str] | None:
    if args.labels is not None:
        names = [name.strip() for name in args.labels.split(",")]
    elif args.labels_file is not None:
        try:
            with open(args.labels_file, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ImportRefused(f"{args.labels_file}: cannot read the labels ({e})") from None
    else:
        return None
    if any(not name for name in names):
        raise ImportRefused(f"empty label in {names}")
    if len(set(names)) != len(names):
        raise ImportRefused(f"labels repeat a name: {names}")
    return names


def load_model(path: str) -> onnx.ModelProto:
    if not os.path.isfile(path):
        raise ImportRefused(f"{path}: file not found")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... for a file that is not a model
        raise ImportRefused(f"{path}: not an ONNX file ({type(e).__name__}: {e})") from None
    if not model.graph.node and not model.graph.output:
        raise ImportRefused(f"{path}: not an ONNX file (no graph in it)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ImportRefused(f"{path}: weights are in external data files; save the model as one file first")
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # ValidationError, or shape inference errors
        raise ImportRefused(f"{path}: onnx.checker: {e}") from None
    return model


def random_feeds(graph: GraphSpec, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values of every input's declared dtype and shape; dynamic axes: the batch, else 1."""
    feeds = {}
    for t in graph.inputs:
        shape = [batch if i == 0 and d == -1 else (1 if d == -1 else d) for i, d in enumerate(t.shape)]
        dtype = np.dtype(t.dtype)
        if dtype.kind == "f":
            feeds[t.name] = rng.random(shape).astype(dtype)
        else:  # ints and bools: zeros are valid indices and flags
            feeds[t.name] = np.zeros(shape, dtype=dtype)
    return feeds


def run_on_random_inputs(path: str, graph: GraphSpec, fixed_batch: bool) -> None:
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ImportRefused(f"{path}: ONNX Runtime cannot load it: {e}") from None
    rng = np.random.default_rng(0)
    for batch in (1,) if fixed_batch else (1, 3):
        feeds = random_feeds(graph, batch, rng)
        shapes = {name: list(a.shape) for name, a in feeds.items()}
        try:
            outputs = session.run(None, feeds)
        except Exception as e:
            raise ImportRefused(f"{path}: fails to run on a random input of its declared shape {shapes}: {e}") from None
        for t, out in zip(graph.outputs, outputs):
            if not fixed_batch and (out.ndim == 0 or out.shape[0] != batch):
                raise ImportRefused(f"{path}: output {t.name!r} has shape {list(out.shape)} for a batch of {batch}")
            if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
                raise ImportRefused(f"{path}: output {t.name!r} holds NaN or infinity for a random input {shapes}")


def import_model(args: argparse.Namespace) -> str:
    """Every check, then one store write. Returns the stored tag."""
    if not STORE_NAME.match(args.name):
        raise ImportRefused(f"--name {args.name!r}: use lowercase letters, digits, '.', '_' and '-' (at most 63)")
    if args.name in SPECS:
        raise ImportRefused(f"--name {args.name!r} is one of the trained models ({', '.join(SPECS)}): choose another name")
    model = load_model(args.path)
    graph = signature(model)
    check_task(args.task, graph, args.fixed_batch)
    labels = read_labels(args)
    preprocessing = preprocessing_for(args.task, graph, args.preprocessing, args.fixed_batch)
    if args.task == IMAGE_CLASSIFICATION:
        width = graph.outputs[0].shape[1]
        labels = labels if labels is not None else [str(i) for i in range(width)]
        if len(labels) != width:
            raise ImportRefused(f"{len(labels)} labels for an output of width {width} ({graph.outputs[0].name!r})")
    elif labels is not None:
        raise ImportRefused(f"--labels are for {IMAGE_CLASSIFICATION}, not {args.task}")
    elif args.eval:
        raise ImportRefused(f"--eval measures accuracy: it is for {IMAGE_CLASSIFICATION}, not {args.task}")
    run_on_random_inputs(args.path, graph, args.fixed_batch)

    spec = ModelSpec(
        name=args.name,
        task=args.task,
        input_kind="image" if args.task == IMAGE_CLASSIFICATION else "tensor",
        description=f"Imported from {os.path.basename(args.path)}.",
        graphs=(graph,),
        floor=Floor("accuracy" if args.task == IMAGE_CLASSIFICATION else "none"),
        labels=tuple(labels or ()),
        preprocessing=preprocessing,
    )
    source_sha256 = sha256_file(args.path)
    metadata = {
        "imported_from": {"file": os.path.basename(args.path), "sha256": source_sha256},
        "sha256": source_sha256,
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "training": {"profile": "imported"},
        "metrics": {},
    }
    with tempfile.TemporaryDirectory(prefix=f"import-{args.name}-") as folder:
        stored = os.path.join(folder, graph.filename)
        with open(args.path, "rb") as src, open(stored, "wb") as dst:
            dst.write(src.read())
        if args.eval:
            from export.evaluate import evaluate

            arrays, dataset = eval_arrays(args.eval, spec)
            np.savez_compressed(os.path.join(folder, "eval.npz"), **arrays)
            metadata["metrics"] = evaluate(spec, folder, arrays)
            metadata["dataset"] = dataset
        model_record = store.save(spec, folder, metadata)
    return str(model_record.tag)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        tag = import_model(args)
    except ImportRefused as e:
        print(f"import refused, nothing stored: {e}", file=sys.stderr)
        return 1
    md = store.latest(args.name).info.metadata
    accuracy = md["metrics"].get("accuracy")
    print(f"stored {tag}" + (f": accuracy {accuracy:.4f} on {md['metrics']['n']} images" if accuracy is not None else ""))
    from export import report

    print(f"report: {report.models_report()}")
    return 0
