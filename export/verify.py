"""`python -m export verify`: re-check every latest stored model with plain ONNX Runtime.

For each model: the ONNX files match their stored sha256, the metric measured again on the
stored eval.npz equals the stored one, and the floor holds. Imported models (`python -m export
import`) are checked too; those imported without --eval have their checksums checked only.
Exit status 1 on any failure. No torch: this runs with the serving requirements.
"""

from __future__ import annotations

import os

import math

from export import store
from export.evaluate import JUDGES, evaluate, floor_failure
from export.publish import load_eval_arrays
from modelspec import EXPORT_ORDER, ModelSpec, sha256_file

TOLERANCE = 1e-6


def differences(stored: dict, measured: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in stored.items():
        if key not in measured:
            found.append(f"{prefix}{key} missing")
        elif isinstance(value, dict):
            found += differences(value, measured[key], f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isclose(value, measured[key], rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            found.append(f"{prefix}{key}: stored {value}, measured {measured[key]}")
        elif not isinstance(value, float) and value != measured[key]:
            found.append(f"{prefix}{key}: stored {value}, measured {measured[key]}")
    return found


def check(name: str) -> list[str]:
    model = store.latest(name)
    if model is None:
        return [f"{name}: not in the store"]
    md = model.info.metadata
    spec = ModelSpec.from_dict(md["spec"])
    problems = []
    for filename, expected in md["onnx_files"].items():
        actual = sha256_file(model.path_of(filename))
        if actual != expected["sha256"]:
            problems.append(f"{model.tag}: {filename} sha256 {actual} != stored {expected['sha256']}")
    if problems or not os.path.exists(model.path_of("eval.npz")):
        return problems
    judges = {name: store.latest(name) for name in JUDGES}
    paths = {name: judge.path_of("model.onnx") for name, judge in judges.items() if judge is not None}
    metrics = evaluate(spec, model.path, load_eval_arrays(model.path), paths)
    problems += [f"{model.tag}: {d}" for d in differences(md["metrics"], metrics)]
    reference = store.latest(spec.floor.relative_to) if spec.floor.relative_to else None
    failure = floor_failure(spec, metrics, reference.info.metadata["metrics"] if reference else None)
    if failure:
        problems.append(failure)
    return problems


def main(names: list[str] | None = None) -> int:
    failed = False
    for name in names or EXPORT_ORDER + [n for n in store.imported_names() if n not in EXPORT_ORDER]:
        problems = check(name)
        failed |= bool(problems)
        print(f"{name:<12} {'FAILED' if problems else 'ok'}")
        for p in problems:
            print(f"    {p}")
    return 1 if failed else 0
