"""What a certified log p(x) costs: seconds and certified share of each estimation method.

    python benchmarks/certified_cost.py RUN [RUN ...] [--first N] [--methods iwae,refined,auto]
        [--json FILE] [--png FILE]

Evaluates the first N test points of each run with each method (K = 1000, the methods'
defaults; the evaluations are kept in the runs as pyro-vae evaluate keeps them) and prints, per
run and method, the seconds per 1000 points (the estimator's own time, imports and data loading
excluded), the ratio to plain IWAE's, the mean log p(x) and the certified share: datapoints whose
estimate has k-hat <= 0.7 and an error bar <= 0.05 nats at its own final draws (AIS and SMC,
which have no k-hat: their error bar over chains or replicates <= 0.05). Run it alone: the
timings are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from pyro_vae import jobs
from pyro_vae.infer.estimator import KHAT_THRESHOLD
from pyro_vae.infer.estimators import ESTIMATORS, settings_for

TOLERANCE = 0.05


def certified(per_point) -> torch.Tensor:
    """Each datapoint's estimate passes its own check at its final draws."""
    stderr_ok = per_point.stderr <= TOLERANCE
    khat = per_point.khat
    no_khat = torch.isnan(khat)
    if per_point.estimator is not None:  # AIS and SMC have no k-hat: the error bar decides
        without = torch.tensor([not ESTIMATORS[name].has_khat for name in per_point.estimator])
        no_khat = no_khat & without
    return stderr_ok & ((khat <= KHAT_THRESHOLD) | no_khat)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--first", type=int, default=1000)
    p.add_argument("--methods", default="iwae,refined,auto")
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    rows = []
    for run in args.runs:
        base = None
        for method in methods:
            k = {"num_samples": 1000} if hasattr(settings_for(method), "num_samples") else {}
            ev = jobs.evaluate(run, method=method, first=args.first, **k)
            share = certified(ev.per_point).double().mean().item()
            per_1000 = 1000 * ev.seconds / ev.num_datapoints
            base = per_1000 if method == "iwae" else base
            row = {
                "run": str(run),
                "method": method,
                "points": ev.num_datapoints,
                "seconds_per_1000": per_1000,
                "ratio_to_iwae": per_1000 / base if base else math.nan,
                "log_px": ev.log_px,
                "certified": share,
                "stages": ev.method_summary.get("num_per_method"),
            }
            rows.append(row)
            print(
                f"{run}  {method:8s} {per_1000:7.1f} s/1000 points  x{row['ratio_to_iwae']:5.2f}"
                f"  log p(x) {ev.log_px:9.3f}  certified {100 * share:5.1f}%"
                + (f"  stages {row['stages']}" if row["stages"] else ""),
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.png:
        _figure(rows, args.png)
    return 0


def _figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        xs = [r["seconds_per_1000"] / 1000 for r in mine]
        ys = [100 * r["certified"] for r in mine]
        ax.plot(xs, ys, "o", label=Path(run).name)
        for r, x, y in zip(mine, xs, ys, strict=True):
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    every = [r["seconds_per_1000"] / 1000 for r in rows]
    ax.set_xlim(min(every) / 1.5, max(every) * 4)  # room for the labels
    ax.set_xlabel("seconds per datapoint (K = 1000)")
    ax.set_ylabel("certified datapoints (%)")
    ax.set_title("k-hat <= 0.7 and error bar <= 0.05 nats at the final draws")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
