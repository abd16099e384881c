"""Ray Serve as its docs teach: one deployment, one replica, `@serve.batch` (max_batch_size 64,
batch_wait_timeout_s 1 ms) with max_ongoing_requests raised to the batch size (Ray warns that
its default of 5 keeps batches from filling), the HTTP proxy on 127.0.0.1. A local Ray of 2 CPUs, no dashboard.
`python ray_peer.py PORT`, POST /classify."""

import signal
import sys

import ray
from ray import serve
from starlette.requests import Request

from onnx_model import answer, images, session, top_k


@serve.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class Classifier:
    def __init__(self):
        self.session = session()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.001)
    async def predict(self, rows: list) -> list:
        import numpy as np

        return top_k(self.session.run(None, {"image": np.stack(rows)})[0])

    async def __call__(self, request: Request) -> dict:
        return answer([await self.predict(images(await request.json())[0])])


if __name__ == "__main__":
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Classifier.bind(), route_prefix="/classify")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    finally:
        serve.shutdown()
        ray.shutdown()
