"""The baseline of load_tests/bench: a model server the way tutorials build one.

FastAPI + uvicorn, one worker, the PyTorch cnn run eagerly for every request in a sync
handler (FastAPI's thread pool), PyTorch's default threads, no batching. Same weights as the
stored `cnn` (its ONNX file's initializers, see torch_rebuild.py), same request body and
answer shape as the service's /classify.

    NAIVE_CNN_ONNX=<store>/models/cnn/<version>/model.onnx uvicorn load_tests.naive_app:app
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from load_tests.torch_rebuild import load_from_onnx
from models.cnn import DigitCNN

LABELS = [str(d) for d in range(10)]


def cnn_path() -> str:
    path = os.environ.get("NAIVE_CNN_ONNX")
    if path:
        return path
    import bentoml

    return bentoml.models.get("cnn:latest").path_of("model.onnx")


model = load_from_onnx(DigitCNN(), cnn_path())
app = FastAPI(title="naive cnn")


class ClassifyRequest(BaseModel):
    images: list
    model: str = "cnn"
    top_k: int = 3


@app.get("/readyz")
def readyz() -> dict:
    return {"ok": True}


@app.post("/classify")
def classify(request: ClassifyRequest) -> dict:
    try:
        x = torch.tensor(request.images, dtype=torch.float32).reshape(-1, 1, 28, 28)
    except (ValueError, RuntimeError, TypeError) as e:
        raise HTTPException(400, f"images: {e}") from None
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)
    top = torch.topk(probabilities, request.top_k, dim=1)
    predictions = [
        [{"label": LABELS[i], "probability": float(p)} for p, i in zip(values.tolist(), indices.tolist())]
        for values, indices in zip(top.values, top.indices)
    ]
    return {"model": "cnn", "predictions": predictions}
