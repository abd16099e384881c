"""What every part of the benchmark shares: paths, run profiles, targets and their verdicts,
Markdown helpers, the machine and the versions."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata as package_metadata


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("BENTOML_HOME", os.path.join(ROOT, ".bentoml"))  # the Makefile's default
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

WRK_SCRIPT = os.path.join(ROOT, "load_tests", "wrk", "post.lua")
WRK_TIMEOUT = "30s"
INPROCESS_BATCHES = (1, 32)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Profile:
    duration_s: int  # measured seconds per load point (wrk takes whole seconds)
    warmup_s: int  # unmeasured wrk run at the same concurrency just before
    concurrency: tuple[int, ...]
    rounds: int  # interleaved in-process runs per (model, batch, runtime)
    cold_starts: int


PROFILES = {
    "full": Profile(duration_s=10, warmup_s=2, concurrency=(1, 8, 32, 64), rounds=100, cold_starts=3),
    "quick": Profile(duration_s=2, warmup_s=1, concurrency=(1, 32), rounds=15, cold_starts=1),
}


@dataclasses.dataclass
class Target:
    """A target the run is judged by: `measured` `op` `limit` (op is "<=", ">=", or strictly "<", ">")."""

    name: str
    measured: float | None
    limit: float
    op: str
    unit: str  # "ms", "s", "x" (a ratio) or "points"
    how: str = ""  # what was measured, for the report
    missing: str = ""  # why `measured` is None

    @property
    def margin(self) -> float | None:
        """Positive: room to spare; negative: by how much it is missed."""
        if self.measured is None:
            return None
        return self.limit - self.measured if self.op in ("<=", "<") else self.measured - self.limit

    @property
    def passed(self) -> bool | None:
        if self.margin is None:
            return None
        return self.margin > 0 if self.op in ("<", ">") else self.margin >= 0

    def verdict(self) -> str:
        if self.measured is None:
            return f"n/a ({self.missing or 'not measured'})"
        amount = format_value(abs(self.margin), self.unit)
        if self.passed:
            return f"PASS ({amount} to spare)"
        return f"MISS by {amount}"


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "x":
        return f"{value:.3f}x" if abs(value) < 0.1 else f"{value:.2f}x"
    if unit == "points":
        return f"{value:.2f} points"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.3g} {unit}".strip()


def targets_table(targets: list[Target]) -> str:
    """The targets as a Markdown table: measured, limit, PASS/MISS and by how much."""
    lines = ["| target | measured | limit | result |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.name} | {format_value(t.measured, t.unit)} | {t.op} {format_value(t.limit, t.unit)} | {t.verdict()} |")
    return "\n".join(lines)


def targets_text(targets: list[Target]) -> str:
    """The same for the terminal: one line each."""
    width = max(len(t.name) for t in targets)
    return "\n".join(
        f"{'PASS' if t.passed else ('MISS' if t.passed is False else 'N/A '):4}  {t.name:<{width}}  "
        f"{format_value(t.measured, t.unit):>12} {t.op} {format_value(t.limit, t.unit):<10}  {t.verdict()}"
        for t in targets
    )


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)



def ms(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"



INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def machine() -> dict:
    info: dict = {"cpu": platform.processor() or "?", "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0))}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        names = re.findall(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
        info["cpu"] = names[0] if names else info["cpu"]
        info["flags"] = {flag: flag in flags for flag in INTERESTING_FLAGS}
    except (OSError, AttributeError):
        info["flags"] = {}
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            info["cgroup_cpu_max"] = f.read().strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    info["kernel"] = platform.release()
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "bentoml", "numpy", "fastapi", "uvicorn", "matplotlib"):
        try:
            out[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            out[name] = "not installed"
    wrk = shutil.which("wrk")
    if wrk:
        result = subprocess.run([wrk, "--version"], capture_output=True, text=True)
        out["wrk"] = (result.stdout + result.stderr).splitlines()[0].split(" [")[0].removeprefix("wrk ").strip()
    return out


def run_section(run, render, argv=None) -> int:
    """`python -m load_tests.bench.<section>`: one measurement section of `make bench` alone, on
    the store in $BENTOML_HOME, printed as its part of the report (full profile; --quick)."""
    import argparse
    import time

    from load_tests.bench.inputs import Store, make_payloads

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.skip_http = False
    started = time.perf_counter()
    store = Store()
    figures = run(store, make_payloads(store), PROFILES["quick" if args.quick else "full"], args,
                  lambda message: print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True))
    print("\n".join(render(figures)))
    print(f"load average {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s")
    return 1 if not figures or "error" in figures else 0
