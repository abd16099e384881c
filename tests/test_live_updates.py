"""Versions side by side and live updates on a real 2-worker server under steady load.

Two versions of `cnn` (the smoke store's and one trained here with another seed). Eight
client threads call /classify the whole time; the admin API switches the default back and
forth, then runs a canary, a shadow and a rollback. Nothing may fail, and within 2 s of each
200 every answer must name a version of the new state. Then refused updates, the model
repository extension through tritonclient, and a restart on the same home.
"""

import collections
import shutil
import threading
import time

import bentoml
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import LIVE_ADMIN_KEY, LIVE_ENV, _scratch
from load_tests import server as launcher

TIMEOUT = 30
ADMIN = {"Authorization": f"Bearer {LIVE_ADMIN_KEY}"}
ZERO_IMAGE = [[0.0] * 28] * 28
CONVERGE_S = 2.0


def put(url, body, name="cnn"):
    return requests.put(f"{url}/admin/models/{name}", json=body, headers=ADMIN, timeout=TIMEOUT)


def classify(url, headers=None):
    return requests.post(f"{url}/classify", json={"images": [ZERO_IMAGE]}, headers=headers, timeout=TIMEOUT)


class Load:
    """Eight threads calling /classify until stopped: (sent at, status, version, thread)."""

    def __init__(self, url: str, threads: int = 8, seconds_limit: float = 300):
        self.url, self.answers, self.stop_at = url, [], time.monotonic() + seconds_limit
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, i: int) -> None:
        session = requests.Session()
        while not self.stopping.is_set() and time.monotonic() < self.stop_at:
            sent = time.monotonic()
            try:
                answer = session.post(f"{self.url}/classify", json={"images": [ZERO_IMAGE]}, headers={"X-Request-Key": f"client-{i}"}, timeout=TIMEOUT)
                self.answers.append((sent, answer.status_code, answer.headers.get("x-model-version"), i))
            except requests.RequestException as e:
                self.answers.append((sent, type(e).__name__, None, i))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)

    def since(self, start: float, end: float = float("inf")):
        return [a for a in list(self.answers) if start <= a[0] < end]


def test_versions_side_by_side_pinned_by_header_and_v2_path(live, versions):
    v1, v2 = versions
    assert classify(live).headers["x-model-version"] == v2, "a server serves a model's latest version when no state names it"
    answer = put(live, {"default": v1, "loaded": [v2]})
    assert answer.status_code == 200, answer.text
    assert classify(live).headers["x-model-version"] == v1
    pinned = classify(live, {"X-Model-Version": v2})
    assert pinned.status_code == 200 and pinned.headers["x-model-version"] == pinned.json()["version"] == v2
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}]}
    v2_path = requests.post(f"{live}/v2/models/cnn/versions/{v2}/infer", json=body, timeout=TIMEOUT)
    assert v2_path.status_code == 200 and v2_path.json()["model_version"] == v2
    unknown = classify(live, {"X-Model-Version": "not-loaded"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_version"
    assert v1 in unknown.json()["detail"] and v2 in unknown.json()["detail"]
    listed = {v["version"]: v for v in requests.get(f"{live}/models/cnn", timeout=TIMEOUT).json()["versions"]}
    assert (listed[v1]["role"], listed[v1]["traffic_share"], listed[v2]["role"], listed[v2]["traffic_share"]) == ("default", 1.0, "previous", 0.0)
    assert listed[v2]["requests"] >= 1 and listed[v2]["sha256"]["model.onnx"]


def test_admin_routes_need_the_admin_key(live, server):
    assert requests.get(f"{live}/admin/models/cnn", headers={"Authorization": "Bearer wrong"}, timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{live}/admin/models/cnn", timeout=TIMEOUT).status_code == 401
    off = requests.put(f"{server}/admin/models/cnn", json={"default": "x"}, headers=ADMIN, timeout=TIMEOUT)
    assert off.status_code == 403 and off.json()["error"] == "admin_disabled"


def test_switches_canary_shadow_and_rollback_under_load_drop_nothing(live, versions):
    v1, v2 = versions
    assert put(live, {"default": v1}).status_code == 200
    shadow_before = shadow_runs(live, v1, v2)
    late = []
    with Load(live) as load:
        time.sleep(1)

        def update(body, expected: set, path=None):
            answer = requests.post(f"{live}{path}", headers=ADMIN, timeout=TIMEOUT) if path else put(live, body)
            assert answer.status_code == 200, answer.text
            done = time.monotonic()
            time.sleep(CONVERGE_S + 1)
            seen = {a[2] for a in load.since(done + CONVERGE_S, time.monotonic()) if a[1] == 200}
            assert seen and seen <= expected, (body or path, seen, expected)
            late.append(sum(1 for a in load.since(done, done + CONVERGE_S) if a[2] not in expected))
            return answer.json()["state"], done

        for default in (v2, v1, v2, v1, v2):
            state, _ = update({"default": default}, {default})
            assert state["default"] == default and state["previous"] == ({v1, v2} - {default}).pop()
        state, done = update({"default": v1, "canary": {"version": v2, "percent": 50}}, {v1, v2})
        canary = load.since(done + CONVERGE_S, time.monotonic())
        by_client = collections.defaultdict(set)
        for _, status, version, client in canary:
            by_client[client].add(version)
        assert all(len(seen) == 1 for seen in by_client.values()), f"a request key moved between versions: {dict(by_client)}"
        assert {v for seen in by_client.values() for v in seen} == {v1, v2}, "8 sticky clients at 50% all landed on one version"
        update({"default": v1, "shadow": v2}, {v1})
        state, _ = update(None, {v2}, path="/admin/models/cnn/rollback")
        assert (state["default"], state["previous"]) == (v2, v1)
    failed = [a for a in load.answers if a[1] != 200]
    print(f"\n{len(load.answers)} requests over 5 switches, canary, shadow, rollback; failed {len(failed)}; "
          f"answers naming an old state within {CONVERGE_S} s of a 200: {late}")
    assert len(load.answers) > 100 and not failed, failed[:5]
    assert shadow_runs(live, v1, v2) > shadow_before, "the shadow version ran no copy"


def shadow_runs(url: str, primary: str, shadow: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=TIMEOUT).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("modelserve_shadow_runs_total") and f'primary="{primary}"' in line and f'shadow="{shadow}"' in line
    )


def damaged_copy(version: str) -> str:
    """A third stored version of cnn whose model.onnx no longer matches its sha256."""
    source = bentoml.models.get(f"cnn:{version}")
    bad = "damaged" + version[7:]
    target = source.path.replace(version, bad)
    shutil.copytree(source.path, target)
    with open(f"{target}/model.yaml", encoding="utf-8") as f:
        text = f.read()
    with open(f"{target}/model.yaml", "w", encoding="utf-8") as f:
        f.write(text.replace(version, bad))
    with open(f"{target}/model.onnx", "ab") as f:
        f.write(b"tampered")
    return bad


def test_refused_updates_change_nothing(live, versions):
    v1, v2 = versions
    assert put(live, {"default": v1, "loaded": [v2]}).status_code == 200
    before = requests.get(f"{live}/admin/models/cnn", headers=ADMIN, timeout=TIMEOUT).json()
    bad = damaged_copy(v1)
    try:
        refused = [
            (put(live, {"default": "no-such-version"}), 404, "unknown_version"),
            (put(live, {"default": bad}), 422, "load_failed"),
            (put(live, {"default": v1, "canary": {"version": v2, "percent": 101}}), 400, "percent_out_of_range"),
            (put(live, {"default": v1, "canary": {"version": v2}}), 400, "invalid_input"),
            (put(live, {"default": v1, "mirror": v2}), 400, "unknown_field"),
            (put(live, ["not", "an", "object"]), 400, "invalid_input"),
            (requests.put(f"{live}/admin/models/cnn", data=b"{", headers=ADMIN, timeout=TIMEOUT), 400, "invalid_json"),
            (put(live, {"default": v1}, name="no-such-model"), 404, "unknown_model"),
        ]
    finally:
        shutil.rmtree(bentoml.models.get(f"cnn:{v1}").path.replace(v1, bad), ignore_errors=True)
    for answer, status, reason in refused:
        assert (answer.status_code, answer.json()["error"]) == (status, reason), answer.text
    assert "sha256" in refused[1][0].json()["detail"]
    assert requests.get(f"{live}/admin/models/cnn", headers=ADMIN, timeout=TIMEOUT).json() == before
    assert {classify(live).headers["x-model-version"] for _ in range(6)} == {v1}
    shadowed = put(live, {"default": v1, "shadow": v2})
    assert shadowed.status_code == 200
    in_use = requests.delete(f"{live}/admin/models/cnn", headers=ADMIN, timeout=TIMEOUT)
    assert in_use.status_code == 409 and in_use.json()["error"] == "in_use"


def test_tritonclient_drives_the_repository(live, versions):
    client = triton.InferenceServerClient(live.removeprefix("http://"), network_timeout=TIMEOUT)
    index = {m["name"]: m for m in client.get_model_repository_index(headers=ADMIN)}
    assert index["resnet"]["state"] == "READY"
    client.unload_model("resnet", headers=ADMIN)
    assert {m["name"]: m["state"] for m in client.get_model_repository_index(headers=ADMIN)}["resnet"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException, match="no model"):
        client.get_model_metadata("resnet")
    client.load_model("resnet", headers=ADMIN)
    assert client.is_model_ready("resnet")
    with pytest.raises(InferenceServerException, match="401|unauthorized"):
        client.unload_model("resnet")
    before = client.get_inference_statistics("resnet")["model_stats"][0]
    image = triton.InferInput("image", [3, 1, 28, 28], "FP32")
    image.set_data_from_numpy(__import__("numpy").zeros((3, 1, 28, 28), "float32"))
    client.infer("resnet", [image])
    after = client.get_inference_statistics("resnet")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    config = client.get_model_config("resnet")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [1, 28, 28] and "dynamic_batching" in config


def test_the_serving_state_survives_a_restart(versions):
    v1, v2 = versions
    home = launcher.home_of_its_own(_scratch)
    try:
        with launcher.running({**LIVE_ENV, "BENTOML_HOME": home}, log_dir=_scratch) as first:
            assert put(first, {"default": v2, "canary": {"version": v1, "percent": 25}}).status_code == 200
            state = requests.get(f"{first}/admin/models/cnn", headers=ADMIN, timeout=TIMEOUT).json()
        with launcher.running({**LIVE_ENV, "BENTOML_HOME": home}, log_dir=_scratch) as again:
            assert requests.get(f"{again}/admin/models/cnn", headers=ADMIN, timeout=TIMEOUT).json() == state
            served = {classify(again, {"X-Request-Key": f"k{i}"}).headers["x-model-version"] for i in range(20)}
            assert served == {v1, v2}
    finally:
        shutil.rmtree(home, ignore_errors=True)
