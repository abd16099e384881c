"""A short run of the peer harness (`make bench-peers`, load_tests/bench/peers_run.py) against
the plain BentoML peer, which needs nothing beyond the project's venv: this service and the
peer start side by side, answer the same top-3 as ONNX Runtime in process, and every row of
the report is a real measurement. About 30 s of servers and load (1 s points); wrk from apt."""

import json
import os
import signal
import subprocess
import sys
import time

from load_tests.bench import peers_report, peers_run, procstat


def test_peer_harness_measures_the_service_and_the_plain_bentoml_peer(smoke_store, tmp_path):
    status = peers_run.main(["--peers", "bentoml", "--duration", "1", "--warmup", "1", "--levels", "1,32", "--no-default", "--out", str(tmp_path)])
    with open(tmp_path / "bench-peers.json") as f:
        data = json.load(f)
    targets = peers_report.targets(data)
    # 1 s points on smoke models may miss a goal; the exit status says whether one was missed
    assert status == (1 if any(t.passed is False for t in targets) else 0)

    assert set(data["servers"]) == {peers_run.SERVICE, "plain BentoML service"}
    for label, info in data["servers"].items():
        assert "failed" not in info, info
        assert info["answer"] == "ok", (label, info["answer"])  # the same top-3 as in process
    assert not [p for p in data["points"] if "failed" in p]
    expected = {(s, "classify", c) for s in data["servers"] for c in (1, 32)}
    expected |= {(peers_run.SERVICE, "noop", 32), (peers_run.SERVICE, "v2_binary", peers_run.V2_CONCURRENCY)}
    assert {(p["server"], p["what"], p["concurrency"]) for p in data["points"]} == expected
    for p in data["points"]:
        assert p["requests"] > 0 and p["ok"] == p["requests"], p  # every answer 2xx
        assert p["socket_errors"] == 0 and p["non2xx"] == 0
        assert 0 < p["p50_ms"] <= p["p99_ms"] < 30_000
        assert p["rps_ok"] > 0 and 0.5 <= p["seconds"] <= 3
        assert p["server_cores"] > 0 and p["client_cores"] > 0  # CPU of server and wrk, from /proc and getrusage
        assert p["server_rss_mib"] > 50
    assert data["inprocess_batch"][0]["rows"] == 64 and data["inprocess_batch"][0]["rows_per_s"] > 0

    # every goal was measured, and the report prints it with its ratio
    assert len(targets) == 4 and all(t.measured is not None and t.measured > 0 for t in targets)
    report = (tmp_path / "bench-peers.md").read_text()
    for t in targets:
        assert t.name in report and t.verdict() in report
    mine = next(p for p in data["points"] if p["server"] == peers_run.SERVICE and p["what"] == "classify" and p["concurrency"] == 32)
    row = next(line for line in report.splitlines() if line.startswith(f"| {peers_run.SERVICE} |"))
    assert f"| {mine['rps_ok']:,.0f} |" in row
    assert os.path.getsize(tmp_path / "bench-peers.png") > 1000
    noop = next(p for p in data["points"] if p["what"] == "noop")
    floor = 1000 * (noop["server_cores"] + noop["client_cores"]) / noop["rps_ok"]
    assert f"`/noop` {floor:.3f} ms" in report  # the ceiling with nothing but the model beside /noop's work


def test_a_paused_server_takes_no_cpu_until_resumed():
    """peers_run pauses every server but the one measured: the whole tree stops (SIGSTOP), a
    child in a session of its own included, and runs again after."""
    spin = "import time\nwhile True: time.perf_counter()"
    parent = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {spin!r}], start_new_session=True)\n{spin}"

    class Spinner(procstat.ServerProcess):
        def __init__(self):
            self.process = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)

    server = Spinner()
    try:
        deadline = time.monotonic() + 30
        while len(procstat.process_tree(server.process.pid, procstat.read_proc_stats())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = procstat.process_tree(server.process.pid, procstat.read_proc_stats())
        assert len(tree) == 2
        with procstat.paused([server]):
            assert [procstat.process_state(pid) for pid in tree] == ["T", "T"]
            before = server.cpu_seconds()
            time.sleep(0.5)
            assert server.cpu_seconds() == before
        before = server.cpu_seconds()
        time.sleep(0.5)
        assert server.cpu_seconds() > before + 0.2
        assert [procstat.process_state(pid) in ("R", "S") for pid in tree] == [True, True]
    finally:
        for pid in procstat.process_tree(server.process.pid, procstat.read_proc_stats()):
            os.kill(pid, signal.SIGKILL)
        server.process.wait()
