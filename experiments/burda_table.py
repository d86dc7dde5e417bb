"""A table in the shape of Burda et al. (2016) Table 1: objective x k x layers x networks.

Rows: the VAE trained on Trace_ELBO and TraceMeanField_ELBO with k particles (the k-sample
average ELBO) and the IWAE bound with k samples, for k in --ks; for one and two stochastic
layers (--top-latent-dim above z) and for MLP and convolutional networks. Every run has the same
data, epochs and seed. Each is scored on the test split with K = --eval-samples importance
samples (IWAE from the guide), and with --method auto (IWAE escalated to refined proposals and
AIS where k-hat or the error bar flags a datapoint) when --auto is given (without it, an auto
evaluation already kept in the run, with the same settings, is shown); the table gives both,
the active units of z and the share of test points with k-hat > 0.7, and each run's training
wall-clock (the sum of its epochs' seconds in metrics.csv). Writes runs/, table.csv, table.md
and burda_table.png; table.csv is rewritten after every row.

With --resume, an earlier --out is reused: a run already there is trained on only if it was
interrupted (pyro-vae train --resume; its settings must be the same), and an evaluation already
kept in it with the setting asked for (of its current checkpoint) is read instead of computed
again; runs not there yet are trained. So rows can be added later (--nets mlp,conv), or --auto
run on trained rows, without training anything twice. The table holds the rows of the call.

Usage: python experiments/burda_table.py [--dataset fashion-mnist] [--epochs N] [--ks 1,5,50]
       [--layers 1,2] [--nets mlp,conv] [--objectives trace,meanfield,iwae] [--auto] [--resume]
"""

from __future__ import annotations

import math
import sys

import torch
from _common import _percent, base_config, parser, write_files

from pyro_vae import jobs
from pyro_vae.config import RunConfig
from pyro_vae.infer.estimators import settings_for
from pyro_vae.records import Evaluation
from pyro_vae.runs import RunDir

COLUMNS = [
    "objective",
    "k",
    "layers",
    "net",
    "log_px",
    "log_px_stderr",
    "log_px_auto",
    "frac_unreliable_auto",
    "elbo",
    "active_units",
    "frac_khat_above_threshold",
    "train_seconds",
]
# pyro-vae train's, scored with K = 5000 as in Burda et al.
DEFAULTS = RunConfig().replace(train={"eval_samples": 5000})
OBJECTIVE_NAMES = {"trace": "VAE (Trace_ELBO)", "meanfield": "VAE (TraceMeanField_ELBO)"}


def _csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def variants(base: RunConfig, args) -> dict[str, RunConfig]:
    """Every row's config, named objective-k-layers-net."""
    out = {}
    for net in args.nets.split(","):
        for layers in _csv_ints(args.layers):
            for objective in args.objectives.split(","):
                for k in _csv_ints(args.ks):
                    model = {
                        "net": net,
                        "top_latent_dim": args.top_latent_dim if layers == 2 else None,
                    }
                    train = {"elbo": objective, "num_particles": k}
                    out[f"{objective}-k{k}-L{layers}-{net}"] = base.replace(
                        model=model, train=train
                    )
    return out


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/out/burda_table", DEFAULTS)
    p.add_argument("--ks", default="1,5,50", help="particles k of the training objectives")
    p.add_argument("--layers", default="1,2", help="stochastic layers: 1, 2 or 1,2")
    p.add_argument("--nets", default="mlp,conv", help="networks: mlp, conv or mlp,conv")
    p.add_argument("--objectives", default="trace,meanfield,iwae")
    p.add_argument("--top-latent-dim", type=int, default=None, help="z2 of 2-layer rows")
    p.add_argument(
        "--auto",
        action="store_true",
        help="also evaluate with --method auto (without it, the auto column shows only auto "
        "evaluations already kept in the runs)",
    )
    p.add_argument("--smc-particles", type=int, default=64, help="particles of auto's SMC sweeps")
    p.add_argument("--refine-steps", type=int, default=1000, help="auto's refinement steps")
    p.add_argument(
        "--test-points", type=int, default=None, help="evaluate the first N test points only"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="add to an earlier --out: reuse its runs (finishing interrupted ones) and their "
        "kept evaluations",
    )
    args = p.parse_args(argv)
    base = base_config(args, DEFAULTS)
    if args.top_latent_dim is None:
        args.top_latent_dim = max(1, base.model.latent_dim // 2)
    title = (
        f"{args.dataset}, {base.train.epochs} epochs, latent {base.model.latent_dim} "
        f"(2 layers: z2 of {args.top_latent_dim}), hidden {','.join(map(str, base.model.hidden))},"
        f" test split{'' if args.test_points is None else f' (first {args.test_points})'},"
        f" K={base.train.eval_samples}, {torch.get_num_threads()} CPU threads"
    )
    rows = []
    runs = {name: (args.out / "runs" / name, c) for name, c in variants(base, args).items()}
    there = [str(run_dir) for run_dir, _ in runs.values() if run_dir.exists()]
    if there and not args.resume:  # before anything is trained or written
        raise SystemExit(
            f"{there[0]} exists: choose another --out, or reuse its runs with --resume"
        )
    for name, (run_dir, config) in runs.items():
        result = jobs.train(
            config,
            run_dir,
            resume=run_dir.exists(),
            evaluate_at_end=False,
            progress=False,
            echo=lambda s: None,
        )
        seconds = sum(r.seconds for r in result.history)
        trained = result.history[-1].epoch
        k, first = config.train.eval_samples, args.test_points
        ev = scored(run_dir, trained, first, num_samples=k)
        settings = {"smc_particles": args.smc_particles, "refine_steps": args.refine_steps}
        auto = scored(run_dir, trained, first, args.auto, num_samples=k, method="auto", **settings)
        row = {
            "objective": config.train.elbo,
            "k": config.train.num_particles,
            "layers": 1 if config.model.top_latent_dim is None else 2,
            "net": config.model.net,
            "log_px": ev.log_px,
            "log_px_stderr": ev.log_px_stderr,
            "log_px_auto": math.nan if auto is None else auto.log_px,
            # the share auto could not clear (k-hat or error bar still flagged after AIS)
            "frac_unreliable_auto": math.nan
            if auto is None
            else auto.method_summary["frac_unreliable"],
            "elbo": ev.elbo,
            "active_units": ev.active_units,
            "frac_khat_above_threshold": ev.frac_khat_above_threshold,
            "train_seconds": seconds,
        }
        rows.append(row)
        write_table(rows, args.out, title)  # what is done so far survives a crash
        print(
            f"  {name:24s} log p(x) {ev.log_px:9.3f}  ELBO {ev.elbo:9.3f}  "
            f"active {ev.active_units}  ({seconds:.0f} s, {len(result.history)} epochs)",
            file=sys.stderr,
        )
    print(write_table(rows, args.out, title))
    plot(rows, args.out / "burda_table.png", title)
    print(f"wrote {args.out}/table.csv, table.md, burda_table.png")
    return 0


def scored(
    run_dir, epochs_trained: int, first: int | None, compute: bool = True, **spec
) -> Evaluation | None:
    """The test split's evaluation with the estimator ``spec`` (``method`` and the fields of its
    ``Settings``) of the run's checkpoint at ``epochs_trained``: the one kept in ``run_dir``,
    else, when ``compute``, a new one (kept there too), else None."""
    kept = kept_evaluation(run_dir, epochs_trained, dict(spec), first)
    if kept is not None or not compute:
        return kept
    return jobs.evaluate(run_dir, first=first, **spec)


def kept_evaluation(
    run_dir, epochs_trained: int, spec: dict, first: int | None
) -> Evaluation | None:
    """The evaluation of the test split already kept in ``run_dir`` of its checkpoint at
    ``epochs_trained`` (in fp32), with ``spec``'s method and settings and the same subset, or
    None."""
    method = spec.pop("method", "iwae")
    settings = settings_for(method, **spec)
    for stored in RunDir(run_dir).select_evaluations(
        split="test", num_samples=settings.num_samples, precision="fp32", method=method
    ):
        ev = stored.evaluation
        subset = ev.first == first or (ev.first is None and first and ev.num_datapoints <= first)
        if (
            subset
            and ev.epochs_trained == epochs_trained
            and ev.method_settings == settings.recorded()
        ):
            return ev
    return None


def _label(r: dict) -> str:
    objective = OBJECTIVE_NAMES.get(r["objective"], "IWAE")
    return f"{objective}, k={r['k']}"


def write_table(rows: list[dict], out, title: str) -> str:
    lines = [
        f"**{title}**",
        "",
        "| objective | layers | net | test log p(x) | auto log p(x) | ELBO | active units "
        "| k-hat > 0.7 | auto: still flagged | train s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        auto = "" if math.isnan(r["log_px_auto"]) else f"{r['log_px_auto']:.2f}"
        flagged = _percent(r["frac_unreliable_auto"]) if auto else ""
        lines.append(
            f"| {_label(r)} | {r['layers']} | {r['net']} | {r['log_px']:.2f} | {auto} "
            f"| {r['elbo']:.2f} | {r['active_units']} | {_percent(r['frac_khat_above_threshold'])} "
            f"| {flagged} | {r['train_seconds']:.0f} |"
        )
    return write_files(out, COLUMNS, rows, lines)


def plot(rows: list[dict], path, title: str) -> None:
    """Test log p(x) against k, one line per objective, a panel per (layers, net)."""
    from matplotlib.figure import Figure

    panels = sorted({(r["layers"], r["net"]) for r in rows})
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=120)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]  # one scale: compare
    for ax, (layers, net) in zip(axes, panels, strict=True):
        for objective in dict.fromkeys(r["objective"] for r in rows):
            sel = sorted(
                (
                    r
                    for r in rows
                    if (r["layers"], r["net"], r["objective"]) == (layers, net, objective)
                ),
                key=lambda r: r["k"],
            )
            if sel:
                ax.errorbar(
                    [r["k"] for r in sel],
                    [r["log_px"] for r in sel],
                    yerr=[r["log_px_stderr"] or 0.0 for r in sel],
                    marker="o",
                    capsize=3,
                    label=OBJECTIVE_NAMES.get(objective, "IWAE"),
                )
        ax.set_xscale("log")
        ks = sorted({r["k"] for r in rows})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("k (particles of the training objective)")
        ax.set_title(f"{layers} stochastic layer{'s' if layers > 1 else ''}, {net}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test log p(x), nats (higher is better)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
