"""A plain BentoML 1.4 service as BentoML's docs teach: one class, `@bentoml.api(batchable=True)`,
adaptive batching by BentoML. Served by the shared venv's bentoml (our own dependency):
`bentoml serve bentoml_peer:PlainClassifier --working-dir load_tests/peers`, POST /classify.
A batchable API takes one batched argument and answers one item per input row, so the answer
is the list of top-3 predictions of the image (the `predictions` of /classify), not a dict."""

import bentoml
import numpy as np

from onnx_model import images, session, top_k


@bentoml.service(workers=1)
class PlainClassifier:
    def __init__(self):
        self.session = session()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def classify(self, images: np.ndarray) -> list:
        batch = np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28)
        return top_k(self.session.run(None, {"image": batch})[0])


__all__ = ["PlainClassifier", "images"]
