"""The SLO gate: judge locust's per-endpoint stats against the bounds in a TOML file.

    python -m load_tests.slo reports/loadtest/locust_stats.csv [--slo load_tests/slo.toml]

Prints each endpoint's measured value against its bound, PASS or FAIL, then one line per
violation; exits 1 if there is any (an error rate above its maximum, a percentile above its
bound, or no requests at all).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tomllib

DEFAULT_SLO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slo.toml")


def check(stats_csv: str, slo_toml: str = DEFAULT_SLO) -> tuple[str, list[str]]:
    """(table, violations) for every endpoint in locust's `*_stats.csv`."""
    with open(slo_toml, "rb") as f:
        config = tomllib.load(f)
    with open(stats_csv, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f) if row["Name"] != "Aggregated"]
    lines = [f"{'endpoint':<28} {'requests':>8} {'errors':>15} {'p50 ms':>13} {'p95 ms':>13} {'p99 ms':>13}  result"]
    violations = []
    if not rows:
        violations.append(f"{stats_csv}: no requests in the stats")
    for name in sorted(set(config.get("endpoints", {})) - {row["Name"] for row in rows}):
        print(f"note: {name} has bounds in {slo_toml} but no stats", file=sys.stderr)
    for row in rows:
        name = row["Name"]
        bounds = {**config.get("default", {}), **config.get("endpoints", {}).get(name, {})}
        requests, failures = int(row["Request Count"]), int(row["Failure Count"])
        found = []
        if requests == 0:
            found.append(f"{name}: no requests")
        rate, max_rate = failures / max(requests, 1), bounds.get("max_error_rate", 0.0)
        if rate > max_rate:
            found.append(f"{name}: error rate {rate:.2%} ({failures} of {requests}) above the maximum {max_rate:.2%}")
        cells = {}
        for key, bound in bounds.items():
            if not (key.startswith("p") and key.endswith("_ms")) or requests == 0:
                continue
            percentile = key[1:-3]
            measured = float(row[f"{percentile}%"])
            cells[percentile] = f"{measured:.0f}/{bound:g}"
            if measured > bound:
                found.append(f"{name}: p{percentile} {measured:.0f} ms above the bound {bound:g} ms")
        violations += found
        lines.append(
            f"{name:<28} {requests:>8} {f'{rate:.1%}/{max_rate:.1%}':>15} {cells.get('50', '-'):>13} "
            f"{cells.get('95', '-'):>13} {cells.get('99', '-'):>13}  {'FAIL' if found else 'PASS'}"
        )
    return "\n".join(lines), violations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stats_csv", help="locust's STATS_stats.csv (from --csv STATS)")
    parser.add_argument("--slo", default=DEFAULT_SLO, help="the bounds (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        table, violations = check(args.stats_csv, args.slo)
    except FileNotFoundError as e:
        print(f"SLO: FAIL: {e.filename} not found (run `make loadtest` first)")
        return 1
    print(f"measured/bound per endpoint ({args.slo}):\n{table}")
    for violation in violations:
        print(f"SLO violation: {violation}")
    print(f"SLO: {'FAIL' if violations else 'PASS'} ({len(violations)} violation{'s' * (len(violations) != 1)})")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
