"""Seconds per 1000 datapoints of each estimation method, through ``pyro_vae.jobs.evaluate``.

Times ``jobs.evaluate`` of a trained run on the first N test datapoints with each method (the
whole job: loading, the estimate, k-hat, writing), repeated, and prints the median seconds per
1000 datapoints. Written against the keywords ``jobs.evaluate`` has taken since methods existed,
so the same command times an earlier version of the library (a ``git worktree`` of it) for a
before/after comparison in one session on one machine.

Usage: python benchmarks/estimator_speed.py RUN_DIR [--repeats R] [--json PATH]
       [--iwae-points N] [--refined-points N] [--ais-points N] [--ais-steps T]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro

from pyro_vae import jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iwae-points", type=int, default=1000)
    p.add_argument("--refined-points", type=int, default=200)
    p.add_argument("--ais-points", type=int, default=64)
    p.add_argument("--ais-steps", type=int, default=100)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cases = {
        "iwae K=1000": (args.iwae_points, {"method": "iwae", "num_samples": 1000}),
        "refined K=1000": (args.refined_points, {"method": "refined", "num_samples": 1000}),
        f"ais T={args.ais_steps} C=16": (
            args.ais_points,
            {"method": "ais", "ais_steps": args.ais_steps, "ais_chains": 16},
        ),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run_dir, run, ignore=shutil.ignore_patterns("evaluations", ".lock"))
        for name, (points, settings) in cases.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                with pyro.validation_enabled(False):
                    ev = jobs.evaluate(run, first=points, device="cpu", **settings)
                times.append(time.perf_counter() - start)
            per_1000 = 1000 * statistics.median(times) / ev.num_datapoints
            results[name] = {"seconds_per_1000": per_1000, "points": ev.num_datapoints}
            print(
                f"{name:18s} {per_1000:9.2f} s per 1000 datapoints (median of {args.repeats} on "
                f"{ev.num_datapoints}; log p(x) {ev.log_px:.3f})",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
