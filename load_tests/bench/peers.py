"""The servers users would pick instead, on the same stored model: `make bench-peers` (or
`python -m load_tests.bench.peers`) writes reports/bench-peers.md, .json and .png.

Each peer (load_tests/peers/, one file each) serves the stored cnn ONNX file with one worker or
replica and one ONNX Runtime thread, in a venv of its own under .peers/ (their pins of
starlette, fastapi, pydantic and protobuf conflict with one another and with the service's),
except the plain BentoML service, which runs in the project's venv. All servers are started
side by side and take turns point by point (concurrency, then server), with wrk's and each
server's CPU recorded. The run also measures this service's /noop ceiling, its V2 binary
endpoint at 64 rows per request and ONNX Runtime in process at batch 64; the goals are ratios
of figures from this one run (peers_report.py), and a missed goal makes the exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

from load_tests import server as launcher
from load_tests.bench.common import ROOT
from load_tests.bench.procstat import ServerProcess

PEERS_DIR = os.path.join(ROOT, "load_tests", "peers")
VENVS = os.path.join(ROOT, ".peers")
COMMON = ["onnxruntime", "numpy", "pillow"]
TRITON = "Triton Inference Server: not installable here (its PyPI package, tritonserver, is a placeholder; the server ships as a container image)"


@dataclasses.dataclass(frozen=True)
class Peer:
    key: str
    name: str
    packages: tuple[str, ...]  # pip requirements of its venv; () = the project's venv
    path: str  # where the request is POSTed
    settings: str  # for the report
    body: str = "classify_json"  # or "v2_json" (MLServer speaks the V2 protocol only)
    python: bool = True  # a Python server (goal: 2x), not TorchServe's Java front end (goal: above)
    java: bool = False

    def command(self, port: int, workdir: str) -> list[str]:
        script = os.path.join(PEERS_DIR, f"{self.key}_peer.py")
        if not self.packages:
            return [sys.executable, "-m", "bentoml", "serve", "bentoml_peer:PlainClassifier", "--working-dir", PEERS_DIR,
                    "--host", "127.0.0.1", "--port", str(port)]
        return [venv_python(self), script, str(port), workdir]


PEERS = [
    Peer("bentoml", "plain BentoML service", (), "/classify",
         "bentoml 1.4 of the project's venv, `@bentoml.service(workers=1)`, `@bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)`, sync API"),
    Peer("litserve", "LitServe", ("litserve==0.2.19",), "/predict",
         "`LitAPI(max_batch_size=64, batch_timeout=0.001)`, `LitServer(accelerator='cpu', workers_per_device=1)`"),
    Peer("ray", "Ray Serve", ("ray[serve]==2.60.0",), "/classify",
         "1 deployment, 1 replica (`num_cpus=1`, `max_ongoing_requests=64`: Ray warns that its default of 5 keeps batches from filling), "
         "`@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.001)`, local Ray of 2 CPUs, no dashboard"),
    Peer("torchserve", "TorchServe", ("torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml", "torch==2.13.0"), "/predictions/cnn",
         "Java 17 front end, 1 Python worker running ORT (`handle(data, context)`), batchSize 64, maxBatchDelay 1 ms, token authorization off; "
         "its worker imports torch (ts/protocol/otf_message_handler.py), so torch 2.13.0 CPU is in its venv",
         python=False, java=True),
    Peer("mlserver", "MLServer", ("mlserver==1.7.1", "uvloop<0.22"), "/v2/models/cnn/infer",
         "custom runtime (`MLModel`), 1 parallel worker (its default), adaptive batching max_batch_size 64, max_batch_time 1 ms; "
         "uvloop<0.22 (its worker calls asyncio.get_event_loop(), which uvloop 0.22 turned into an error); the V2 protocol only, so the request is the same image as a V2 JSON tensor and the answer the top-3 labels as a BYTES tensor",
         body="v2_json"),
]


def venv_python(peer: Peer) -> str:
    return os.path.join(VENVS, peer.key, "bin", "python")


def install(peer: Peer, log) -> str | None:
    """Creates the peer's venv and installs what it needs unless already done; None, or why it
    could not be set up."""
    if peer.java and subprocess.run(["sh", "-c", "command -v java"], capture_output=True).returncode != 0:
        return "no java (make bench-peers installs Debian's openjdk-17-jre-headless)"
    if not peer.packages:
        return None
    requirements = list(peer.packages) + COMMON
    marker = os.path.join(VENVS, peer.key, ".installed")
    if os.path.exists(marker) and open(marker).read() == " ".join(requirements):
        return None
    log(f"installing {peer.name} into .peers/{peer.key}: {' '.join(requirements)}")
    steps = [["python3", "-m", "venv", os.path.join(VENVS, peer.key)],
             [venv_python(peer), "-m", "pip", "install", "--quiet", *requirements]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            return f"`{' '.join(step[-len(requirements):] if 'pip' in step else step)}` failed: {(result.stderr or result.stdout).strip()[-400:]}"
    with open(marker, "w") as f:
        f.write(" ".join(requirements))
    return None


def version_of(peer: Peer) -> str:
    if not peer.packages:
        from importlib import metadata

        return metadata.version("bentoml")
    dist = peer.packages[0].split("==")[0].split("[")[0]
    result = subprocess.run([venv_python(peer), "-c", f"from importlib import metadata; print(metadata.version('{dist}'))"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "?"


class PeerServer(ServerProcess):
    """A peer started in a session of its own, ready when a real request answers 2xx."""

    kind = "peer"

    def __init__(self, peer: Peer, env: dict, body: bytes, log_dir: str, seconds: float = 240):
        import requests

        self.peer = peer
        port = launcher.free_port()
        self.url = f"http://127.0.0.1:{port}"
        workdir = tempfile.mkdtemp(prefix=f"peer-{peer.key}-", dir=log_dir)
        self.log = os.path.join(workdir, "server.log")
        started = time.perf_counter()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(peer.command(port, workdir), cwd=PEERS_DIR, env={**os.environ, **env},
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.process.log_path = self.log
        headers = {"Content-Type": "application/json"}
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"exited with {self.process.returncode}: {launcher.output(self.process)[-1500:]}")
                if time.perf_counter() - started > seconds:
                    raise RuntimeError(f"not ready within {seconds:.0f} s: {launcher.output(self.process)[-1500:]}")
                try:
                    if requests.post(self.url + peer.path, data=body, headers=headers, timeout=5).status_code // 100 == 2:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - started


def labels_in(answer) -> list[str]:
    """The labels of an answer in order, wherever they are: dicts with a "label", or a V2
    BYTES output holding them as JSON."""
    if isinstance(answer, dict):
        if "label" in answer:
            return [answer["label"]]
        return [label for value in answer.values() for label in labels_in(value)]
    if isinstance(answer, list):
        return [label for item in answer for label in labels_in(item)]
    if isinstance(answer, str) and answer.startswith(("[", "{")):
        return labels_in(json.loads(answer))
    return []
