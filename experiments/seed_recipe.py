"""The seeds' "MSE + lambda * KL" recipe is a Gaussian likelihood N(mu(z), lambda I).

Part 1 checks it numerically. The seeds' loss, 1/2 sum (x - mu(z))^2 + lambda * KL(q || p), is
lambda times the negative ELBO of the Gaussian likelihood with variance lambda, less a constant:
on the same draw of z, its value differs from lambda * (-ELBO) by lambda (D/2) ln(2 pi lambda) per
datapoint, and its gradient equals lambda times the ELBO's gradient.
Part 2 trains the Gaussian likelihood at several lambda (uniformly dequantised data) and reports
log p(x), which keeps the constant the recipe drops, bits/dim, and samples for each lambda.
Writes runs/, table.csv, table.md, gradient_check.md and samples.png.

Usage: python experiments/seed_recipe.py [--dataset digits] [--lambdas 0.003,0.01,0.03,0.1]
"""

from __future__ import annotations

import math
import sys

import pyro
import torch
from _common import base_config, parser, run_variants, write_table

from pyro_vae import jobs, plots
from pyro_vae.config import ModelConfig
from pyro_vae.infer import DeviceTraceMeanField_ELBO
from pyro_vae.registry import build_vae


def seed_loss(vae, x, lam: float) -> torch.Tensor:
    """The seeds' get_loss: 1/2 sum (out - x)^2 + lam * 1/2 sum (exp(lv) - lv - 1 + mu^2), summed
    over the batch (the seeds average; a constant factor)."""
    loc, log_var = vae.encoder.params(x)
    z = pyro.distributions.Normal(loc, torch.exp(0.5 * log_var)).rsample()
    out = vae.decoder(z)
    reconstruction = 0.5 * ((out - x) ** 2).sum()
    kl = 0.5 * (torch.exp(log_var) - log_var - 1 + loc**2).sum()
    return reconstruction + lam * kl


def gradient_check(lam: float, data_dim: int = 64, n: int = 32) -> dict[str, float]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    cfg = ModelConfig(
        latent_dim=4, hidden=(32,), likelihood="gaussian", gaussian_scale=math.sqrt(lam)
    )
    vae = build_vae(cfg, data_dim).double()
    lam = float(vae.likelihood.scale) ** 2  # the variance the likelihood holds (float32-rounded)
    x = torch.rand(n, data_dim, dtype=torch.float64)
    params = list(vae.parameters())
    pyro.set_rng_seed(1)
    recipe = seed_loss(vae, x, lam)
    g_recipe = torch.autograd.grad(recipe, params)
    pyro.set_rng_seed(1)
    neg_elbo = DeviceTraceMeanField_ELBO(max_plate_nesting=1).differentiable_loss(
        vae.model, vae.guide, x
    )
    g_elbo = torch.autograd.grad(neg_elbo, params)
    constant = n * lam * (data_dim / 2) * math.log(2 * math.pi * lam)
    flat_r = torch.cat([g.reshape(-1) for g in g_recipe])
    flat_e = torch.cat([g.reshape(-1) for g in g_elbo])
    return {
        "lambda": lam,
        "value_difference": (recipe - (lam * neg_elbo - constant)).abs().item(),
        "max_gradient_difference": (flat_r - lam * flat_e).abs().max().item(),
        "gradient_norm": flat_r.norm().item(),
    }


def plot_samples(run_dirs: dict[str, object], path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * len(run_dirs), 5.6), dpi=120)
    axes = fig.subplots(2, len(run_dirs), squeeze=False)
    for col, (name, run_dir) in enumerate(run_dirs.items()):
        _, vae, meta = jobs.load_run(run_dir, "cpu")
        pyro.set_rng_seed(0)
        drawn = vae.sample(16)
        shape = tuple(meta["image_shape"])
        plots.show_grid(axes[0][col], drawn.mean, shape, 4, f"{name}: means E[x|z]", 8)
        plots.show_grid(axes[1][col], drawn.sample, shape, 4, f"{name}: samples x ~ p(x|z)", 8)
    fig.suptitle("Gaussian likelihood N(mu(z), lambda I): the seeds' lambda", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/out/seed_recipe")
    p.add_argument("--lambdas", default="0.003,0.01,0.03,0.1")
    args = p.parse_args(argv)
    lambdas = [float(v) for v in args.lambdas.split(",")]
    checks = [gradient_check(lam) for lam in lambdas]
    check_lines = [
        "| lambda | value difference | max gradient difference | gradient norm |",
        "|---:|---:|---:|---:|",
    ] + [
        f"| {c['lambda']:.3g} | {c['value_difference']:.2e} | {c['max_gradient_difference']:.2e} | "
        f"{c['gradient_norm']:.3g} |"
        for c in checks
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient_check.md").write_text("\n".join(check_lines) + "\n")
    base = base_config(args).replace(
        data={"binarize": "none", "dequantize": "uniform"}, model={"likelihood": "gaussian"}
    )
    variants = {
        f"lambda={lam}": ("dequantised", base.replace(model={"gaussian_scale": math.sqrt(lam)}))
        for lam in lambdas
    }
    rows = run_variants(variants, args.out)
    title = (
        f"Gaussian N(mu, lambda I) on {args.dataset}, {args.epochs} epochs, test split, "
        f"K={args.eval_samples}"
    )
    print("Seeds' loss against lambda * (-ELBO) on one draw (float64):")
    print("\n".join(check_lines))
    print()
    print(write_table(rows, args.out, title))
    plot_samples({name: args.out / "runs" / name for name in variants}, args.out / "samples.png")
    print(f"wrote {args.out}/table.csv, table.md, gradient_check.md, samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
