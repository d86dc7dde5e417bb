"""Swap the likelihood p(x|z), keep everything else, and compare in bits per dimension.

Discrete likelihoods score the stored levels (Bernoulli: binarised pixels; discretized logistic:
the quantised grey levels); densities score uniformly dequantised levels, and their bits/dim bound
the levels' probability. So every row but Bernoulli's scores the same grey-level data, and bits/dim
compare them. Writes runs/, table.csv, table.md and likelihoods.png into --out.

Usage: python experiments/swap_likelihoods.py [--dataset digits] [--epochs 100]
"""

from __future__ import annotations

import sys

from _common import base_config, parser, report_bars, run_variants

DENSITIES = ("continuous-bernoulli", "gaussian", "gaussian-learned", "laplace", "beta")


def main(argv=None) -> int:
    args = parser(__doc__.split("\n\n")[0], "experiments/out/swap_likelihoods").parse_args(argv)
    base = base_config(args)
    variants = {
        "bernoulli": ("binarised", base.replace(model={"likelihood": "bernoulli"})),
        "discretized-logistic": (
            "grey levels",
            base.replace(model={"likelihood": "discretized-logistic"}, data={"binarize": "none"}),
        ),
    }
    for name in DENSITIES:
        variants[name] = (
            "dequantised levels",
            base.replace(
                model={"likelihood": name}, data={"binarize": "none", "dequantize": "uniform"}
            ),
        )
    rows = run_variants(variants, args.out)
    title = (
        f"Likelihoods on {args.dataset}, {args.epochs} epochs, test split, K={args.eval_samples}"
    )
    report_bars(rows, args.out, title, "likelihoods.png", value="bits_per_dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
