"""The pure parts of load_tests/bench/: wrk output, request bodies, targets, metrics, /proc.
No server, no wrk, no timing here: `make bench` runs the benchmark itself."""

import email
import os

import pytest

from load_tests.bench import common, http, inputs, procstat, profiling, wrk
from load_tests.bench import targets as bench_targets

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:3000/classify
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    50.01ms   10.00ms 120.00ms   90.00%
  Latency Distribution
     50%   48.00ms
     99%  110.00ms
  6400 requests in 10.00s, 1.00MB read
  Non-2xx or 3xx responses: 40
Requests/sec:    640.00
WRK_JSON {"duration_us": 10000000, "requests": 6400, "bytes": 1048576, "errors": {"connect": 0, "read": 1, "write": 0, "status": 40, "timeout": 2}, "latency_us": {"mean": 50010.5, "min": 1000, "max": 120000, "p50": 48000, "p90": 70000, "p95": 80000, "p99": 110000}, "statuses": {"200": 6360, "503": 40}}
"""


def test_parse_wrk_reads_the_scripts_json_line():
    r = wrk.parse_wrk(WRK_OUTPUT)
    assert r["seconds"] == 10.0
    assert r["requests"] == 6400
    assert r["ok"] == 6360 and r["non2xx"] == 40
    assert r["statuses"] == {200: 6360, 503: 40}
    assert r["socket_errors"] == 3 and r["timeouts"] == 2
    assert r["rps"] == pytest.approx(640.0)
    assert r["rps_ok"] == pytest.approx(636.0)
    assert (r["p50_ms"], r["p95_ms"], r["p99_ms"]) == (48.0, 80.0, 110.0)
    assert r["mean_ms"] == pytest.approx(50.0105)


def test_parse_wrk_without_the_json_line_says_so():
    with pytest.raises(ValueError, match="WRK_JSON"):
        wrk.parse_wrk("Running 10s test @ http://x\nunable to connect to 127.0.0.1:1 Connection refused\n")


def test_multipart_body_is_a_valid_form():
    png = b"\x89PNG\r\n\x1a\n\x00binary\r\n--not-the-boundary"
    body = inputs.multipart_body({"model": "cnn"}, {"image": ("digit.png", "image/png", png)}, "b0undary")
    message = email.message_from_bytes(b"Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n" + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
    assert parts["model"].get_payload() == "cnn"
    assert parts["image"].get_filename() == "digit.png"
    assert parts["image"].get_content_type() == "image/png"
    assert parts["image"].get_payload(decode=True) == png
    assert body.endswith(b"--b0undary--\r\n")


def test_target_verdicts_say_pass_or_miss_and_by_how_much():
    under = common.Target("p50 overhead", 1.5, 2.0, "<=", "ms")
    over = common.Target("p50 overhead", 3.25, 2.0, "<=", "ms")
    enough = common.Target("vs naive", 3.5, 3.0, ">=", "x")
    short = common.Target("vs naive", 2.0, 3.0, ">=", "x")
    missing = common.Target("vs no-op", None, 0.7, ">=", "x", missing="/noop not measured")
    assert (under.passed, under.verdict()) == (True, "PASS (0.50 ms to spare)")
    assert (over.passed, over.verdict()) == (False, "MISS by 1.25 ms")
    assert (enough.passed, enough.verdict()) == (True, "PASS (0.50x to spare)")
    assert (short.passed, short.verdict()) == (False, "MISS by 1.00x")
    assert (missing.passed, missing.verdict()) == (None, "n/a (/noop not measured)")
    assert common.Target("exactly", 2.0, 2.0, "<=", "ms").passed


def test_targets_table_has_one_row_per_target():
    targets = [
        common.Target("cold start", 7.0, 10.0, "<=", "s"),
        common.Target("accuracy drop", 0.56, 0.5, "<=", "points"),
        common.Target("vs no-op", None, 0.7, ">=", "x", missing="not measured"),
    ]
    table = common.targets_table(targets).splitlines()
    assert table[0] == "| target | measured | limit | result |"
    assert table[2] == "| cold start | 7.00 s | <= 10.00 s | PASS (3.00 s to spare) |"
    assert table[3] == "| accuracy drop | 0.56 points | <= 0.50 points | MISS by 0.06 points |"
    assert table[4] == "| vs no-op | n/a | >= 0.70x | n/a (not measured) |"
    text = common.targets_text(targets).splitlines()
    assert [line[:4] for line in text] == ["PASS", "MISS", "N/A "]


def test_compute_targets_from_measured_figures():
    def p(server, endpoint, c, rps, p50=1.0):
        return {"server": server, "endpoint": endpoint, "concurrency": c, "rps_ok": rps, "p50_ms": p50}

    http = {
        "cold_start_s": [6.0, 9.0, 12.0],
        "sweeps": {
            "batching on": {"points": [p("batching on", "classify", 1, 300, p50=2.5), p("batching on", "classify", 32, 900), p("batching on", "noop", 32, 1000)]},
            "naive": {"points": [p("naive", "classify", 32, 200)]},
        },
    }
    inproc = {
        "timings": {"endpoint|classify|model": {"median_ms": 0.3}},
        "quantization": {"latency_ms": {32: {"resnet": 10.0, "resnet-int8": 6.0}}, "accuracy": {"resnet": 0.9972, "resnet-int8": 0.9944}},
    }
    targets = {t.name.split(" (")[0]: t for t in bench_targets.compute_targets(inproc, http)}
    assert len(targets) == 6
    overhead = next(t for name, t in targets.items() if name.startswith("cnn /classify p50"))
    assert overhead.measured == pytest.approx(2.2) and overhead.passed is False
    naive = next(t for name, t in targets.items() if "naive" in name)
    assert naive.measured == pytest.approx(4.5) and naive.passed
    noop = next(t for name, t in targets.items() if "no-op" in name)
    assert noop.measured == pytest.approx(0.9) and noop.passed
    int8 = next(t for name, t in targets.items() if "latency, batch 32" in name)
    assert int8.measured == pytest.approx(0.6) and int8.passed
    drop = next(t for name, t in targets.items() if "accuracy drop" in name)
    assert drop.measured == pytest.approx(0.28) and drop.passed
    cold = next(t for name, t in targets.items() if "cold start" in name)
    assert cold.measured == 9.0 and cold.passed


def test_parse_batch_rows_sums_over_versions():
    text = "\n".join(
        [
            "# HELP modelserve_batch_rows rows in one executed batch",
            'modelserve_batch_rows_bucket{le="1.0",model="cnn",version="a"} 3.0',
            'modelserve_batch_rows_count{model="cnn",version="a"} 10.0',
            'modelserve_batch_rows_sum{model="cnn",version="a"} 80.0',
            'modelserve_batch_rows_count{model="cnn",version="b"} 2.0',
            'modelserve_batch_rows_sum{model="cnn",version="b"} 4.0',
            'modelserve_batch_rows_count{model="gan",version="c"} 5.0',
            'modelserve_batch_rows_sum{model="gan",version="c"} 5.0',
            'other_count{model="cnn"} 99',
        ]
    )
    assert http.parse_batch_rows(text) == {"cnn": {"batches": 12.0, "rows": 84.0}, "gan": {"batches": 5.0, "rows": 5.0}}


def test_process_tree_cpu_follows_parent_pids(tmp_path):
    tick = procstat.CLK_TCK

    def stat(pid, comm, ppid, utime, stime):
        folder = tmp_path / str(pid)
        folder.mkdir()
        # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        (folder / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0\n")

    stat(100, "bentoml serve", 1, 2 * tick, tick)
    stat(101, "worker (1)", 100, 5 * tick, 0)  # its own session, still under the server
    stat(102, "thread) x", 101, tick, tick)
    stat(200, "other", 1, 50 * tick, 0)
    (tmp_path / "self").mkdir()
    assert sorted(procstat.process_tree(100, procstat.read_proc_stats(str(tmp_path)))) == [100, 101, 102]
    assert procstat.process_tree_cpu_seconds(100, str(tmp_path)) == pytest.approx(10.0)
    assert procstat.process_tree_cpu_seconds(999, str(tmp_path)) == 0.0


def test_the_wrk_script_prints_what_parse_wrk_reads():
    script = open(os.path.join(common.ROOT, "load_tests", "wrk", "post.lua")).read()
    assert wrk.WRK_JSON_PREFIX.strip() in script
    for key in ("duration_us", "requests", "errors", "latency_us", "statuses", "p50", "p95", "p99"):
        assert f'"{key}' in script


# py-spy frames as `--full-filenames` writes them
SITE, STDLIB = "/venv/lib/python3.11/site-packages", "/usr/lib/python3.11"
LOOP_FRAME = f"Runner.run ({STDLIB}/asyncio/runners.py:118)"


def test_summarize_profile_splits_threads_and_counts_innermost_frames():
    site, stdlib, loop = SITE, STDLIB, LOOP_FRAME
    pool = f"_worker ({stdlib}/concurrent/futures/thread.py:81)"
    raw = "\n".join(
        [
            f"{loop};validate ({site}/pydantic/main.py:847) 6",
            f"{loop};classify ({common.ROOT}/service/service.py:249) 3",
            f"{loop};trace ({site}/opentelemetry/sdk/trace/__init__.py:10) 1",
            f"{loop} 10",  # the event loop waiting
            f"{pool};run ({site}/onnxruntime/capi/session.py:406) 4",
            f"{pool} 4",  # the pool thread waiting for a batch
            f"run ({common.ROOT}/service/state.py:169) 2",  # the state watcher's thread, not the event loop
            "not a line",
        ]
    )
    summary = profiling.summarize_profile(raw)
    assert summary["samples"] == 30
    event_loop, batch = summary["threads"]["event loop"], summary["threads"]["batch"]
    assert list(summary["threads"])[0] == "event loop" and set(summary["threads"]) == {"event loop", "batch", "other"}
    assert summary["threads"]["other"]["samples"] == 2
    assert (event_loop["samples"], event_loop["waiting"]) == (20, 0.5)
    assert event_loop["layers"] == [
        ("pydantic (request parsing and validation)", 0.6),
        ("modelserve's own code (service/)", 0.3),
        ("OpenTelemetry (BentoML's tracing middleware)", 0.1),
    ]
    assert event_loop["functions"][0] == ("validate (pydantic/main.py:847)", 0.6)
    assert event_loop["functions"][1] == ("classify (service/service.py:249)", 0.3)
    assert (batch["samples"], batch["waiting"], batch["layers"]) == (8, 0.5, [("ONNX Runtime", 1.0)])


def test_summarize_profile_sorts_threads_by_their_names():
    site, stdlib, loop = SITE, STDLIB, LOOP_FRAME
    submit = f"submit ({stdlib}/concurrent/futures/thread.py:176)"
    named = "\n".join(
        [
            f"thread (101): MainThread;classify ({common.ROOT}/service/service.py:249) 5",  # a task's stack, no runner below it
            f"thread (101): MainThread;{loop};{submit} 1",  # the loop handing a batch to the pool
            f"thread (102): batch-cnn:v1:model.onnx_0;run ({site}/onnxruntime/capi/session.py:406) 3",
            f"thread (103): modelserve-state-watcher;run ({common.ROOT}/service/state.py:169) 2",
            "thread (101): MainThread 2",  # uvloop's C code, no Python frame
        ]
    )
    by_name = profiling.summarize_profile(named)["threads"]
    assert {kind: t["samples"] for kind, t in by_name.items()} == {"event loop": 8, "batch": 3, "other": 2}
    assert ("event loop and HTTP (asyncio, uvicorn, h11)", 0.25) in by_name["event loop"]["layers"]
    assert ("(C code, no Python frame)", 0.25) in by_name["event loop"]["functions"]


def test_profile_section_says_why_there_is_no_profile():
    assert profiling.profile_section(None) == []
    assert "py-spy not installed" in "\n".join(profiling.profile_section({"missing": "py-spy not installed"}))


def test_peer_report_keeps_failures_and_takes_medians_over_rounds(tmp_path):
    from load_tests.bench import peers_report
    from load_tests.bench.peers import labels_in

    def p(server, what, c, rps, p50, round_=0):
        return {"server": server, "what": what, "concurrency": c, "round": round_, "rows_per_request": 64 if what == "v2_binary" else 1,
                "rps_ok": rps, "p50_ms": p50, "p99_ms": 2 * p50, "non2xx": 0, "socket_errors": 0, "server_cores": 1.0,
                "client_cores": 0.1, "idle_servers_cores": 0.0, "server_rss_mib": 300.0}

    data = {
        "command": "x", "date": "today", "duration_s": 1, "warmup_s": 1, "rounds": 3, "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.0, 1.0, 1.0],
        "model": {"name": "cnn", "version": "v"}, "triton": "Triton: not installable",
        "servers": {"ours": {"kind": "modelserve", "settings": "defaults", "python": True},
                    "peer": {"kind": "litserve", "settings": "s", "python": True},
                    "java": {"kind": "torchserve", "settings": "s", "python": False, "failed": "not set up: no java"}},
        "points": [p("ours", "classify", 32, r, 1.0, i) for i, r in enumerate((900, 1000, 5000))]
        + [p("peer", "classify", 32, 400, 2.0), p("ours", "classify", 1, 100, 1.0), p("peer", "classify", 1, 50, 4.0),
           p("ours", "noop", 32, 2000, 1.0), p("ours", "v2_binary", 4, 100, 50.0),
           {"server": "peer", "what": "classify", "concurrency": 32, "round": 1, "rows_per_request": 1, "failed": "wrk failed (1): boom"}],
        "inprocess_batch": [{"rows": 64, "median_ms": 10.0, "p10_ms": 9.0, "p90_ms": 11.0, "rows_per_s": 8000.0}],
    }
    assert peers_report.point(data, "ours", "classify", 32)["rps_ok"] == 1000  # the median of three rounds
    targets = {t.name: t for t in peers_report.targets(data)}
    assert targets["ours c=32 req/s / peer's"].measured == 2.5 and targets["ours c=32 req/s / peer's"].passed
    assert targets["ours c=1 p50 / peer's"].measured == 0.25 and targets["ours c=1 p50 / peer's"].passed
    java = targets["ours c=32 req/s / java's"]
    assert (java.op, java.limit, java.passed) == (">", 1.0, None) and "no java" in java.verdict()
    assert targets["V2 binary 64-row rows/s / in-process ORT batch 64"].measured == 0.8
    assert targets["/classify c=32 req/s / /noop c=32 (same server)"].measured == 0.5
    assert targets["/classify c=32 req/s / /noop c=32 (same server)"].passed is False
    peers_report.write(data, str(tmp_path), "peers")
    report = (tmp_path / "peers.md").read_text()
    assert "wrk failed (1): boom" in report and "not set up: no java" in report and "Triton: not installable" in report
    assert "MISS by 0.20x" in report

    assert labels_in({"model": "cnn", "predictions": [[{"label": "7", "probability": 0.9}, {"label": "1", "probability": 0.1}]]}) == ["7", "1"]
    assert labels_in({"outputs": [{"name": "labels", "data": ['[{"label": "3", "probability": 1.0}]']}]}) == ["3"]
