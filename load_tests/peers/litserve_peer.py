"""LitServe as its docs teach: a LitAPI with setup/decode_request/batch/predict/unbatch/
encode_response, batching by LitServe (max_batch_size 64, batch_timeout 1 ms), one worker on
the CPU. `python litserve_peer.py PORT`, POST /predict."""

import sys

import litserve as ls
import numpy as np

from onnx_model import answer, images, session, top_k


class Classifier(ls.LitAPI):
    def setup(self, device):
        self.session = session()

    def decode_request(self, request):
        return images(request)[0]

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return top_k(self.session.run(None, {"image": x})[0])

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return answer([output])


if __name__ == "__main__":
    api = Classifier(max_batch_size=64, batch_timeout=0.001)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
