"""Train on the ELBO or on the IWAE bound (K = 5, 50); evaluate all with K = 5000.

The shape of Burda et al.'s Table 1: the bound a model is trained on, its test log p(x)
estimated with many samples, and the number of active latent dimensions. Every run has the same
data, networks, epochs and seed. Writes runs/, table.csv, table.md and iwae_training.png.

Usage: python experiments/iwae_training.py [--dataset digits] [--epochs 100] [--eval-samples 5000]
"""

from __future__ import annotations

import sys

from _common import base_config, parser, report_bars, run_variants

from pyro_vae.config import RunConfig

# pyro-vae train's, scored with K = 5000 as in Burda et al.
DEFAULTS = RunConfig().replace(train={"eval_samples": 5000})


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/out/iwae_training", DEFAULTS)
    p.add_argument("--ks", default="5,50", help="IWAE particle counts to train with")
    args = p.parse_args(argv)
    base = base_config(args, DEFAULTS)
    variants = {"ELBO (K=1)": ("binarised", base.replace(train={"elbo": "trace"}))}
    for k in (int(k) for k in args.ks.split(",")):
        variants[f"IWAE (K={k})"] = (
            "binarised",
            base.replace(train={"elbo": "iwae", "num_particles": k}),
        )
    rows = run_variants(variants, args.out)
    title = (
        f"Training objective on {args.dataset}, {args.epochs} epochs, test split, "
        f"K={args.eval_samples}"
    )
    report_bars(rows, args.out, title, "iwae_training.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
