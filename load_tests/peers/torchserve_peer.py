"""TorchServe 0.12 as its docs teach: torch-model-archiver packs the ONNX file and the handler
into cnn.mar, config.properties binds the three APIs to 127.0.0.1, registers the model with
one worker and TorchServe's batching (batchSize 64, maxBatchDelay 1 ms), token authorization
off. `python torchserve_peer.py PORT WORKDIR` runs the Java front end in the foreground
(Java 17 from Debian), POST /predictions/cnn."""

import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, HERE)
from onnx_model import free_port  # noqa: E402


def main(port: int, workdir: str) -> int:
    store = os.path.join(workdir, "model-store")
    os.makedirs(store, exist_ok=True)
    shutil.copy(os.environ["PEER_MODEL"], os.path.join(workdir, "model.onnx"))
    subprocess.run(
        [os.path.join(BIN, "torch-model-archiver"), "--model-name", "cnn", "--version", "1.0",
         "--serialized-file", os.path.join(workdir, "model.onnx"),
         "--handler", os.path.join(HERE, "torchserve_handler.py"),
         "--extra-files", os.path.join(HERE, "onnx_model.py"),
         "--export-path", store, "--force"],
        check=True,
    )
    models = {"cnn": {"1.0": {"defaultVersion": True, "marName": "cnn.mar", "minWorkers": 1, "maxWorkers": 1,
                              "batchSize": 64, "maxBatchDelay": 1, "responseTimeout": 120}}}
    config = os.path.join(workdir, "config.properties")
    with open(config, "w") as f:
        f.write(
            f"inference_address=http://127.0.0.1:{port}\n"
            f"management_address=http://127.0.0.1:{free_port()}\n"
            f"metrics_address=http://127.0.0.1:{free_port()}\n"
            f"model_store={store}\n"
            "load_models=cnn.mar\n"
            f"models={json.dumps(models)}\n"
            "default_workers_per_model=1\n"
            "disable_token_authorization=true\n"
            "enable_envvars_config=false\n"
        )
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "LOG_LOCATION": workdir, "METRICS_LOCATION": workdir}
    return subprocess.call(
        [os.path.join(BIN, "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
         "--ts-config", config, "--model-store", store],
        cwd=workdir, env=env,
    )


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
