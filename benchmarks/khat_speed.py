"""PSIS k-hat of many datapoints: the library's batched torch computation against ArviZ's loop.

    python benchmarks/khat_speed.py [--datapoints N] [--samples K] [--repeats R]

Prints the median seconds of each over R repeats on the same log weights (2 * standard normal,
float64) and the largest difference between their k-hats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyro_vae import arviz_compat
from pyro_vae.infer.estimator import psis_khat


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datapoints", type=int, default=10_000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    lw = 2 * torch.randn(args.samples, args.datapoints, dtype=torch.float64)
    psis_khat(lw[:, :50]), arviz_compat.psis_khat(lw[:, :50].T.numpy())  # imports, once
    batched, loop = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = psis_khat(lw)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = arviz_compat.psis_khat(lw.T.numpy())
        loop.append(time.perf_counter() - start)
    diff = (ours - torch.from_numpy(theirs)).abs().max().item()
    print(
        f"{args.datapoints} datapoints x K={args.samples}: batched "
        f"{statistics.median(batched):.2f} s, ArviZ loop {statistics.median(loop):.2f} s "
        f"(medians of {args.repeats}); largest difference {diff:.1e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
