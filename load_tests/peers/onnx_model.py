"""The model every peer serves, the same way: the stored cnn ONNX file under ONNX Runtime with
one thread, one 28x28 image per request as JSON ({"images": [[...28x28...]], "top_k": 3}), the
top-3 labels with their probabilities as the answer, shaped like modelserve's /classify.

Plain numpy and onnxruntime, no project imports: each peer runs it in a venv of its own
(torchserve packs it into its model archive). The harness passes the file and the labels in
PEER_MODEL and PEER_LABELS."""

import json
import os

import numpy as np
import onnxruntime as ort

LABELS = json.loads(os.environ.get("PEER_LABELS", '["0","1","2","3","4","5","6","7","8","9"]'))


def session(path=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path or os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"])


def images(body):
    """A request body (dict) -> float32 [n, 1, 28, 28]."""
    array = np.asarray(body["images"], dtype=np.float32)
    return array.reshape(-1, 1, 28, 28)


def top_k(logits, k=3):
    """Logits [n, classes] -> per row the k best labels with their softmax probabilities."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    best = np.argsort(-probabilities, axis=1)[:, :k]
    return [[{"label": LABELS[i], "probability": float(row[i])} for i in order] for row, order in zip(probabilities, best)]


def answer(predictions):
    return {"model": "cnn", "predictions": predictions}


def free_port():
    """A free 127.0.0.1 port, for a peer's second and third listener (gRPC, metrics, management)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
