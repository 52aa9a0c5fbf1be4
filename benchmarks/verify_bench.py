"""Time ``nftdocker verify`` of one case (default: multi), median of N runs (default 3).

Needs root, like verify itself. Prints one line per run and a JSON summary line:

    .venv/bin/python benchmarks/verify_bench.py [--case multi] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nftdocker.verify.run import verify  # noqa: E402
from nftdocker.docker.generate import generate  # noqa: E402
from nftdocker.scenario.load import load  # noqa: E402


def scenario_path(case: str) -> Path:
    for base in (REPO / "rulesets", REPO.parent / "shared" / "reference"):
        p = base / case / "scenario.toml"
        if p.exists():
            return p
    raise SystemExit(f"no scenario.toml for case {case!r} under rulesets/ or ../shared/reference/")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="multi")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    path = scenario_path(args.case)
    gen = generate(load(str(path)))
    walls: list[float] = []
    phases: list[dict[str, float]] = []
    for i in range(args.runs):
        t = time.monotonic()
        report = verify(gen)
        walls.append(time.monotonic() - t)
        phases.append(report.timings)
        print(f"run {i + 1}: {walls[-1]:.2f} s, {len(report.rows)} probes, {len(report.differences)} differ, "
              + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items()))
        if not report.ok:
            print(report.text(), file=sys.stderr)
            return 1
    summary = {
        "benchmark": "verify",
        "case": args.case,
        "runs": args.runs,
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "probes": len(report.rows),
        "median_phases_s": {k: round(statistics.median(p[k] for p in phases), 3) for k in phases[0]},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
