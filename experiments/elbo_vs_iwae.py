"""Trace_ELBO against TraceMeanField_ELBO: the same VAE trained with each, then compared on
ELBO, the importance-weighted bound L_K against K, the gap, k-hat, and the variance of each
objective's gradient estimate at the same parameters.

The gradient variance is measured at the parameters of the Trace_ELBO run, on one fixed minibatch:
R single-particle gradient estimates of each objective, and the trace of their covariance (sum
over parameters of the per-coordinate variance), relative to the squared norm of the mean
gradient. The analytic KL of TraceMeanField_ELBO removes the KL term's sampling noise.
Writes runs/, table.csv, table.md, gradients.csv and bound_vs_k.png.

Usage: python experiments/elbo_vs_iwae.py [--dataset digits] [--epochs 100] [--repeats 200]
"""

from __future__ import annotations

import csv
import sys

import pyro
import torch
from _common import base_config, parser, run_variants, write_table

from pyro_vae import jobs, plots
from pyro_vae.infer import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from pyro_vae.records import Evaluation


def gradient_variance(run_dir, repeats: int, batch_size: int = 128) -> dict[str, dict]:
    config, vae, _ = jobs.load_run(run_dir, "cpu")
    dataset = jobs.load_data(config)
    x = jobs.prepare_splits(config, dataset, vae.likelihood, ("val",))["val"][:batch_size]
    params = [p for p in vae.parameters() if p.requires_grad]
    out = {}
    for name, elbo in (
        ("trace", DeviceTrace_ELBO(max_plate_nesting=1)),
        ("meanfield", DeviceTraceMeanField_ELBO(max_plate_nesting=1)),
    ):
        pyro.set_rng_seed(0)
        grads = []
        for _ in range(repeats):
            loss = elbo.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]
            g = torch.autograd.grad(loss, params)
            grads.append(torch.cat([t.reshape(-1) for t in g]))
        g = torch.stack(grads)
        total_var = g.var(0).sum().item()
        out[name] = {
            "total_variance": total_var,
            "relative_variance": total_var / g.mean(0).pow(2).sum().item(),
        }
    return out


def plot_bounds(evaluations: dict[str, Evaluation], path) -> None:
    series = {f"L_K, trained with {name}": ev.bounds_vs_k for name, ev in evaluations.items()}
    plots.bound_vs_k(series).savefig(path)


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/out/elbo_vs_iwae")
    p.add_argument("--repeats", type=int, default=200, help="gradient estimates per objective")
    args = p.parse_args(argv)
    base = base_config(args)
    variants = {
        "Trace_ELBO": ("binarised", base.replace(train={"elbo": "trace"})),
        "TraceMeanField_ELBO": ("binarised", base.replace(train={"elbo": "meanfield"})),
    }
    rows = run_variants(variants, args.out)
    title = (
        f"Trace_ELBO vs TraceMeanField_ELBO on {args.dataset}, {args.epochs} epochs, "
        f"test split, K={args.eval_samples}"
    )
    table = write_table(rows, args.out, title)
    bounds = {row["variant"]: row["evaluation"] for row in rows}
    ks = sorted({int(k) for ev in bounds.values() for k in ev.bounds_vs_k})
    lines = [
        "",
        "| trained with | " + " | ".join(f"L_{k}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for name, ev in bounds.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{ev.bounds_vs_k[str(k)]:.3f}" if str(k) in ev.bounds_vs_k else "" for k in ks
            )
            + " |"
        )
    grads = gradient_variance(args.out / "runs" / "Trace_ELBO", args.repeats)
    lines += [
        "",
        f"Gradient estimates at the Trace_ELBO run's parameters, one minibatch of 128, "
        f"{args.repeats} draws each:",
        "",
        "| objective | total variance | variance / squared mean norm |",
        "|---|---:|---:|",
    ]
    for name, g in grads.items():
        lines.append(f"| {name} | {g['total_variance']:.4g} | {g['relative_variance']:.4g} |")
    with (args.out / "gradients.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objective", "total_variance", "relative_variance"])
        for name, g in grads.items():
            w.writerow([name, g["total_variance"], g["relative_variance"]])
    table = table + "\n" + "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    plot_bounds(bounds, args.out / "bound_vs_k.png")
    print(f"wrote {args.out}/table.csv, table.md, gradients.csv, bound_vs_k.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
