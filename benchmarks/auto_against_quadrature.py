"""auto and plain IWAE against exact log p(x) on a run whose latent is 2-dimensional.

The exact log p(x) of each test point comes from the trapezoid-rule oracle of
``tests/infer/quadrature.py`` (on a float64 copy of the model; cached beside the run as
``quadrature.pt``, it takes minutes). Each method then runs with R seeds on the same points;
printed: the mean over points of (estimate - exact), its standard error over the R per-seed
means, the stages auto chose, its flagged share, and the mean on the points it kept at stage 1
(where a selection effect would show). An importance estimate is below the exact value in
expectation; auto should sit no lower than plain IWAE.

Usage (the run of docs/numbers.md):
    pyro-vae train --dataset digits --latent-dim 2 --epochs 30 --batch-size 32 --seed 3 \\
        --out runs/digits-2d --no-eval
    python benchmarks/auto_against_quadrature.py runs/digits-2d --seeds 24
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import jobs
from pyro_vae.infer import auto_log_likelihood, importance_log_likelihood
from pyro_vae.infer.escalate import STAGES

# the oracle of the test suite, loaded from its file (tests/ is not a package users install)
_ORACLE = Path(__file__).resolve().parents[1] / "tests" / "infer" / "quadrature.py"
_spec = importlib.util.spec_from_file_location("quadrature_oracle", _ORACLE)
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)


def exact_log_px(run: Path, vae, x: torch.Tensor) -> torch.Tensor:
    cache = run / "quadrature.pt"
    if cache.exists():
        saved = torch.load(cache)
        if torch.equal(saved["x"], x):
            return saved["log_px"]
    v64 = copy.deepcopy(vae).double()
    with torch.no_grad():
        log_joint = oracle.log_joint_from_model(v64.model, x.double(), max_plate_nesting=1)
        q = oracle.quadrature(log_joint, len(x))
    print(f"quadrature: largest error estimate {float(q.error.max()):.1e} nats")
    torch.save({"x": x, "log_px": q.log_px}, cache)
    return q.log_px


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--pilot-samples", type=int, default=None)
    args = p.parse_args(argv)
    config, vae, _ = jobs.load_run(args.run_dir, "cpu")
    data = jobs.prepare_splits(
        config, jobs.load_data(config), vae.likelihood, ("test",), fixed=True
    )
    x = data["test"]
    vae.eval()
    exact = exact_log_px(args.run_dir, vae, x)
    k, m = args.num_samples, {"max_plate_nesting": 1}
    methods = {
        "iwae": lambda: importance_log_likelihood(vae.model, vae.guide, x, num_samples=k, **m),
        "auto": lambda: auto_log_likelihood(
            vae.model, vae.guide, x, num_samples=k, pilot_samples=args.pilot_samples, **m
        ),
    }
    print(f"{len(x)} test points, exact mean {float(exact.mean()):.4f}, K = {k}")
    for name, estimate in methods.items():
        diffs, kept, seconds, flagged, counts = [], [], [], [], []
        for seed in range(args.seeds):
            pyro.set_rng_seed(seed)
            start = time.perf_counter()
            r = estimate()
            seconds.append(time.perf_counter() - start)
            d = r.log_px.double() - exact
            diffs.append(float(d.mean()))
            if name == "auto":
                kept.append(d[r.where(STAGES[0])])
                flagged.append(float((~r.extras["reliable"]).double().mean()))
                counts.append(r.counts(STAGES))
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
        line = (
            f"{name:5s} mean - exact {statistics.mean(diffs):+.5f} +- {se:.5f} "
            f"({args.seeds} seeds, {statistics.median(seconds):.1f} s per run)"
        )
        if name == "auto":
            per_stage = {s: sum(c[s] for c in counts) / len(counts) for s in STAGES}
            line += (
                f"; per run {per_stage}; flagged {100 * statistics.mean(flagged):.1f}%; "
                f"on the points kept at stage 1 {float(torch.cat(kept).mean()):+.5f}"
            )
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
