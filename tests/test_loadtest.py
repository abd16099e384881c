"""The locust scenario against the real test server, and the SLO gate on stats it is given."""

import csv
import os
import subprocess
import sys

from conftest import ROOT
from load_tests import slo

ENDPOINTS = [
    "/classify cnn", "/classify resnet", "/classify resnet-int8", "/classify/image", "/sentiment", "/gan/generate",
    "/vae/sample", "/vae/reconstruct", "/vae/interpolate", "/vae/interpolate/images", "/models",
]
COLUMNS = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
           "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
           "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]


def read_stats(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f) if row["Name"] != "Aggregated"}


def test_locust_smoke_run_covers_every_endpoint_and_passes_the_gate(server, tmp_path):
    prefix = str(tmp_path / "smoke")
    command = [sys.executable, "-m", "locust", "-f", os.path.join(ROOT, "load_tests", "locustfile.py"), "--headless",
               "--host", server, "-u", "4", "-r", "4", "-t", "10s", "--equal-weights", "--think", "0.1",
               "--csv", prefix, "--html", prefix + ".html", "--only-summary", "--exit-code-on-error", "0"]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-5000:]
    assert os.path.getsize(prefix + ".html") > 0

    stats = read_stats(prefix + "_stats.csv")
    with open(prefix + "_failures.csv") as f:
        failures = f.read()
    for name in ENDPOINTS:
        assert name in stats, f"{name} not in the stats: {sorted(stats)}"
        assert int(stats[name]["Request Count"]) > 0, name
        assert int(stats[name]["Failure Count"]) == 0, f"{name}:\n{failures}"
    assert sorted(stats) == sorted(ENDPOINTS)

    table, violations = slo.check(prefix + "_stats.csv")  # the bounds of `make slo`, load_tests/slo.toml
    print("\n" + table)
    assert violations == [], table
    assert table.count("PASS") == len(ENDPOINTS)


def write_stats(path, rows):
    """rows: (name, requests, failures, p50, p95, p99) -> a locust *_stats.csv, Aggregated row included."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for name, requests, failures, p50, p95, p99 in [*rows, ("Aggregated", 1, 0, 1, 1, 1)]:
            percentiles = [p50, p50, p50, p95, p95, p95, p99, p99, p99, p99, p99]
            writer.writerow(["" if name == "Aggregated" else "POST", name, requests, failures, p50, p50, 1, p99, 100, 10, 0, *percentiles])


BOUNDS = """
[default]
p50_ms = 100
p95_ms = 500
p99_ms = 1000
max_error_rate = 0.0

[endpoints."/vae/reconstruct"]
p95_ms = 900
max_error_rate = 0.05
"""


def gate(tmp_path, rows, capsys):
    write_stats(tmp_path / "stats.csv", rows)
    (tmp_path / "slo.toml").write_text(BOUNDS)
    code = slo.main([str(tmp_path / "stats.csv"), "--slo", str(tmp_path / "slo.toml")])
    return code, capsys.readouterr().out


def test_gate_passes_within_bounds_and_applies_overrides(tmp_path, capsys):
    code, out = gate(tmp_path, [("/classify cnn", 100, 0, 50, 400, 900), ("/vae/reconstruct", 40, 1, 90, 800, 950)], capsys)
    assert code == 0, out
    assert out.count("PASS") == 3  # two endpoints and the verdict
    assert "800/900" in out and "Aggregated" not in out


def test_gate_fails_a_percentile_above_its_bound(tmp_path, capsys):
    code, out = gate(tmp_path, [("/classify cnn", 100, 0, 50, 600, 900), ("/sentiment", 100, 0, 50, 400, 900)], capsys)
    assert code == 1
    violations = [line for line in out.splitlines() if line.startswith("SLO violation")]
    assert violations == ["SLO violation: /classify cnn: p95 600 ms above the bound 500 ms"]
    assert "FAIL" in next(line for line in out.splitlines() if line.startswith("/classify cnn"))
    assert "PASS" in next(line for line in out.splitlines() if line.startswith("/sentiment"))


def test_gate_fails_any_error_above_the_maximum(tmp_path, capsys):
    code, out = gate(tmp_path, [("/sentiment", 1000, 1, 50, 400, 900), ("/vae/reconstruct", 40, 1, 90, 800, 950)], capsys)
    assert code == 1
    violations = [line for line in out.splitlines() if line.startswith("SLO violation")]
    assert violations == ["SLO violation: /sentiment: error rate 0.10% (1 of 1000) above the maximum 0.00%"]


def test_gate_fails_on_stats_without_requests(tmp_path, capsys):
    code, out = gate(tmp_path, [], capsys)
    assert code == 1 and "no requests" in out
