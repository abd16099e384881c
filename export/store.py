"""The BentoML model store: where verified models go, and where their metadata comes back from.

A model is written to the store only after every check has passed, in one
`bentoml.models.create` block; an exception inside it leaves the store as it was, so the
last good version stays the latest.
"""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata as package_metadata

import bentoml

from modelspec import OPSET, ModelSpec, sha256_file




def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "bentoml", "numpy"):
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
    return versions


def save(spec: ModelSpec, folder: str, metadata: dict) -> bentoml.Model:
    """Store every file of `folder` as a new version of `spec.name`, with the checksum of every
    file (`files`; the ONNX files also under `onnx_files`, with their sizes) and the spec itself
    in the metadata."""
    onnx_files = {
        g.filename: {"sha256": sha256_file(os.path.join(folder, g.filename)), "bytes": os.path.getsize(os.path.join(folder, g.filename))}
        for g in spec.graphs
    }
    files = {name: sha256_file(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
    full_metadata = {"spec": spec.to_dict(), "opset": OPSET, "onnx_files": onnx_files, "files": files, "versions": package_versions(), **metadata}
    labels = {"task": spec.task, "profile": str(metadata.get("training", {}).get("profile", ""))}
    with bentoml.models.create(spec.name, labels=labels, metadata=full_metadata) as model:
        for name in sorted(os.listdir(folder)):
            shutil.copy2(os.path.join(folder, name), model.path_of(name))
    return model


def latest(name: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        return None
