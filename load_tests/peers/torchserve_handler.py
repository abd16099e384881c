"""TorchServe's custom handler (a module-level `handle(data, context)`, as TorchServe's docs
teach for non-PyTorch models): ONNX Runtime on the cnn file packed into the model archive.
TorchServe's Java front end batches the requests (batchSize 64, maxBatchDelay 1 ms) and hands
each batch to this one Python worker; `data` holds one {"body": parsed JSON} per request."""

import os

import numpy as np

from onnx_model import answer, images, session, top_k

_session = None


def handle(data, context):
    global _session
    if _session is None:
        _session = session(os.path.join(context.system_properties["model_dir"], "model.onnx"))
    if data is None:  # the initialize call
        return None
    rows = [images(request.get("body") or request.get("data"))[0] for request in data]
    predictions = top_k(_session.run(None, {"image": np.stack(rows)})[0])
    return [answer([p]) for p in predictions]
