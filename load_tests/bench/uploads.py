"""Large uploads beside small requests: `/classify` (JSON, one digit) at c=8 while another client
sends 16-megapixel PNG uploads to `/classify/image` one after another, with uploads decoded in the
service's thread pool (the default) against decoded on the event loop (MODELSERVE_DECODE_THREADS=0),
two servers side by side, interleaved rounds."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading

from load_tests.bench.common import Profile
from load_tests.bench.http import Server
from load_tests.bench.inputs import Payloads, Store
from load_tests.bench.wrk import run_wrk

SIDE = 4096  # 16 megapixels, the default pixel limit
ROUNDS = 2
CONCURRENCY = 8


def big_png() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = np.full((SIDE, SIDE), 255, dtype=np.uint8)
    picture[SIDE // 4 : 3 * SIDE // 4, SIDE // 2 - 200 : SIDE // 2 + 200] = rng.integers(0, 60, (SIDE // 2, 400), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Uploader(threading.Thread):
    """Posts the big upload again and again until stopped; counts what came back."""

    def __init__(self, url: str, body: bytes):
        super().__init__(daemon=True)
        self.url, self.body, self.stopping, self.statuses = url, body, threading.Event(), []

    def run(self) -> None:
        import requests

        session = requests.Session()
        while not self.stopping.is_set():
            try:
                answer = session.post(self.url + "/classify/image", files={"image": ("big.png", self.body, "image/png")}, timeout=60)
                self.statuses.append(answer.status_code)
            except requests.RequestException as e:
                self.statuses.append(type(e).__name__)


def run_uploads(store: Store, payloads: Payloads, profile: Profile, args, log) -> dict:
    if getattr(args, "skip_http", False):
        return {}
    workdir = tempfile.mkdtemp(prefix="modelserve-bench-uploads-")
    servers: dict[str, Server] = {}
    try:
        body_file = os.path.join(workdir, "classify.json")
        with open(body_file, "wb") as f:
            f.write(payloads.classify_json)
        upload = big_png()
        log(f"uploads: /classify c={CONCURRENCY} beside {SIDE}x{SIDE} PNG uploads ({len(upload) / 2**20:.1f} MiB), decoded in a pool / on the loop")
        servers["decode pool"] = Server("bentoml", {}, workdir)
        servers["decode on the loop"] = Server("bentoml", {"MODELSERVE_DECODE_THREADS": "0"}, workdir)
        points = []
        for round_ in range(ROUNDS):
            for label, server in servers.items():
                uploader = Uploader(server.url, upload)
                uploader.start()
                try:
                    run_wrk(server.url + "/classify", body_file, "application/json", CONCURRENCY, profile.warmup_s)
                    figures, _ = run_wrk(server.url + "/classify", body_file, "application/json", CONCURRENCY, profile.duration_s)
                finally:
                    uploader.stopping.set()
                    uploader.join(timeout=90)
                uploads_ok = sum(1 for s in uploader.statuses if s == 200)
                points.append({"server": label, "round": round_, "uploads_ok": uploads_ok, "uploads": len(uploader.statuses), **figures})
                log(f"  {label:<20} round {round_ + 1}: /classify {figures['rps_ok']:8.1f} req/s  p50 {figures['p50_ms']:7.2f} ms  "
                    f"p99 {figures['p99_ms']:7.2f} ms  non-2xx {figures['non2xx']}; uploads answered {uploads_ok}/{len(uploader.statuses)}")
        return {"points": points, "upload_bytes": len(upload), "side": SIDE, "concurrency": CONCURRENCY}
    except (RuntimeError, OSError) as e:
        log(f"uploads: failed: {e}")
        return {"error": str(e)[:1000]}
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
