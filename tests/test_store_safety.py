"""Stored content is never trusted: `bentoml serve` on damaged copies of the test store exits
non-zero naming the model, and the serving code unpickles and evaluates nothing."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, _scratch
from load_tests import server as launcher
from modelspec import sha256_file



def damaged_store(tmp_path: Path, name: str, damage) -> Path:
    home = tmp_path / name
    shutil.copytree(os.environ["BENTOML_HOME"], home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    damage(home / "models")
    return home


def version_dir(models: Path, name: str) -> Path:
    return models / name / (models / name / "latest").read_text().strip()


def appended_bytes(models: Path) -> None:
    with open(version_dir(models, "cnn") / "model.onnx", "ab") as f:
        f.write(b"\0tampered")


def garbage_with_its_sha256(models: Path) -> None:
    folder = version_dir(models, "resnet")
    old = sha256_file(str(folder / "model.onnx"))
    (folder / "model.onnx").write_bytes(b"not an onnx graph " * 100)
    new = sha256_file(str(folder / "model.onnx"))
    metadata = (folder / "model.yaml").read_text()
    assert old in metadata
    (folder / "model.yaml").write_text(metadata.replace(old, new))


def missing_model(models: Path) -> None:
    """The serving state names sentiment's version, which is gone from the store."""
    (models.parent / "modelserve").mkdir(exist_ok=True)
    state = {"generation": 1, "models": {"sentiment": {"default": version_dir(models, "sentiment").name}}}
    (models.parent / "modelserve" / "serving.json").write_text(json.dumps(state))
    shutil.rmtree(models / "sentiment")


def edited_vocabulary(models: Path) -> None:
    vocab = version_dir(models, "sentiment") / "vocab.json"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("1", "2", 1), encoding="utf-8")


def empty_store(models: Path) -> None:
    for folder in models.iterdir():
        shutil.rmtree(folder)


DAMAGES = {
    "sha256": (appended_bytes, ["model cnn:", "does not match the sha256", "python -m export cnn"]),
    "unloadable": (garbage_with_its_sha256, ["model resnet:", "ONNX Runtime cannot load model.onnx", "python -m export resnet"]),
    "missing": (missing_model, ["is not in the model store", "sentiment", "make models"]),
    "vocabulary": (edited_vocabulary, ["model sentiment:", "vocab.json does not match the sha256", "python -m export sentiment"]),
    "empty": (empty_store, ["no model in the model store", "make models", "python -m export import"]),
}


def test_a_damaged_or_missing_model_stops_the_server_naming_it(smoke_store, tmp_path):
    started = {}
    for name, (damage, _) in DAMAGES.items():
        home = damaged_store(tmp_path, name, damage)
        started[name] = launcher.start({"BENTOML_HOME": str(home), "MODELSERVE_WORKERS": "1"}, log_dir=str(tmp_path))
    try:
        for name, (process, url) in started.items():
            try:
                code = process.wait(timeout=90)
            except Exception:
                pytest.fail(f"{name}: bentoml serve still running after 90 s:\n{launcher.output(process)[-3000:]}")
            output = launcher.output(process)
            assert code != 0, f"{name}: exit code 0\n{output[-3000:]}"
            for words in DAMAGES[name][1]:
                assert words in output, f"{name}: {words!r} not in the output:\n{output[-3000:]}"
    finally:
        for process, _ in started.values():
            launcher.stop(process)


# Nothing on the serving path unpickles or evaluates stored content.

SERVING_CODE = ["service", "modelspec"]
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}


def unsafe_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if name in {"eval", "exec", "compile", "__import__"} and not owner:
                found.append(f"{name}()")
            if owner in UNSAFE_MODULES:
                found.append(f"{owner}.{name}()")
            if name == "load" and owner == "yaml" and not any(k.arg == "Loader" and "Safe" in ast.unparse(k.value) for k in node.keywords):
                found.append("yaml.load without a safe loader")
            for keyword in node.keywords:
                if keyword.arg == "allow_pickle" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    found.append(f"{ast.unparse(func)}(allow_pickle=...)")
    return [f"{path.name}: {item}" for item in found]


def test_the_serving_code_unpickles_and_evaluates_nothing():
    files = [p for folder in SERVING_CODE for p in sorted((Path(ROOT) / folder).rglob("*.py"))]
    assert len(files) >= 5
    found = [item for path in files for item in unsafe_uses(path)]
    assert not found, found
    sample = Path(_scratch) / "unsafe_sample.py"
    sample.write_text("import pickle\nimport numpy as np\neval('1')\nnp.load('x', allow_pickle=True)\npickle.loads(b'')\n")
    assert len(unsafe_uses(sample)) == 4, "the check itself must catch these"
