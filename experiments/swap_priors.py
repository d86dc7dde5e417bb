"""Swap the prior p(z), keep everything else: normal / mog / vamp / flow at the same budget.

Each variant is trained with the same data, likelihood (Bernoulli, dynamic binarisation), guide,
objective, epochs and seed, then evaluated on the test split with K importance samples.
Writes runs/, table.csv, table.md and priors.png into --out and prints the table.

Usage: python experiments/swap_priors.py [--dataset digits] [--epochs 100] [--eval-samples 1000]
"""

from __future__ import annotations

import sys

from _common import base_config, parser, report_bars, run_variants

PRIORS = ("normal", "mog", "vamp", "flow")


def main(argv=None) -> int:
    args = parser(__doc__.split("\n\n")[0], "experiments/out/swap_priors").parse_args(argv)
    base = base_config(args)
    variants = {p: ("binarised", base.replace(model={"prior": p})) for p in PRIORS}
    rows = run_variants(variants, args.out)
    title = f"Priors on {args.dataset}, {args.epochs} epochs, test split, K={args.eval_samples}"
    report_bars(rows, args.out, title, "priors.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
