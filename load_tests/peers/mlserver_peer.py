"""MLServer as its docs teach for a custom runtime: an `MLModel` subclass named in
model-settings.json, adaptive batching by MLServer (max_batch_size 64, max_batch_time 1 ms),
its default of one parallel inference worker, every server (REST, gRPC, metrics) on 127.0.0.1.
MLServer speaks only the V2 protocol: the request is the image as a V2 FP32 tensor [1, 1, 28, 28],
the answer the top-3 predictions as a BYTES tensor (one JSON string per row).
`python mlserver_peer.py PORT WORKDIR` writes its settings into WORKDIR and runs `mlserver start`;
POST /v2/models/cnn/infer."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from onnx_model import free_port  # noqa: E402

try:
    import numpy as np
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec, StringCodec
    from mlserver.types import InferenceRequest, InferenceResponse

    from onnx_model import session, top_k

    class Classifier(MLModel):
        async def load(self) -> bool:
            self.session = session()
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32).reshape(-1, 1, 28, 28)
            predictions = top_k(self.session.run(None, {"image": x})[0])
            labels = StringCodec.encode_output("labels", [json.dumps(p) for p in predictions])
            return InferenceResponse(model_name=self.name, outputs=[labels])
except ImportError:  # the harness only reads this file's docstring in the project's venv
    pass


def main(port: int, workdir: str) -> int:
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False, "parallel_workers": 1}
    model = {"name": "cnn", "implementation": "mlserver_peer.Classifier", "max_batch_size": 64, "max_batch_time": 0.001}
    with open(os.path.join(workdir, "settings.json"), "w") as f:
        json.dump(settings, f)
    with open(os.path.join(workdir, "model-settings.json"), "w") as f:
        json.dump(model, f)
    env = {**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.call([os.path.join(os.path.dirname(sys.executable), "mlserver"), "start", workdir], cwd=workdir, env=env)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
