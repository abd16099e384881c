"""Judge generated digits with a classifier: which classes appear, and how sure it is of them.

ONNX Runtime only (no torch), so the pipeline can judge the exported decoders' own outputs.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


def judge_samples(judge_path: str, images: np.ndarray) -> dict:
    """images: float32 [N, 1, 28, 28] in [0, 1] -> classes covered, mean top-1 softmax
    confidence, and how many images the judge put in each of its classes."""
    session = ort.InferenceSession(judge_path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": np.ascontiguousarray(images, dtype=np.float32)})
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    class_counts = np.bincount(predicted, minlength=logits.shape[1])
    return {
        "classes_covered": int((class_counts > 0).sum()),
        "mean_confidence": float(probabilities.max(axis=1).mean()),
        "class_counts": [int(c) for c in class_counts],
    }
