"""Early stopping: does the run stop by itself, and is the best epoch's checkpoint at least as
good on the test split as the last one?

For each seed in --seeds, trains the base config for --epochs once as the reference, watching
the validation L_K every epoch without stopping (--patience equal to --epochs: it trains every
epoch and keeps its best one), and once per patience P in --patiences. Early stopping does not
change training (the watched L_K draws from a stream of its own), so each stopping run is the
reference cut short. Every run is evaluated on the test split with K = --eval-samples at its
best epoch's checkpoint and at its last (``pyro-vae evaluate --checkpoint last``).

The table gives, per run, the epochs trained, the best epoch, both test log p(x), and two paired
differences over the test points with their standard errors: best against the run's own last
checkpoint, and best against the reference's last (every epoch trained). Writes runs/, table.csv,
table.md and early_stopping.png.

Usage: python experiments/early_stopping.py [--epochs 500] [--patiences 20,50] [--seeds 0,1,2]
       [--binarize dynamic|static] [--lr-schedule none|cosine|plateau] [--stop-samples K]
"""

from __future__ import annotations

import math
import sys

from _common import base_config, paired, parser, train_fresh, write_files

from pyro_vae import jobs
from pyro_vae.cli import add_config_flags
from pyro_vae.config import RunConfig

# pyro-vae train's flags this script offers beside the experiments' own
EXTRA_FLAGS = (
    "data.binarize",
    "train.lr",
    "train.lr_schedule",
    "train.lr_patience",
    "train.stop_samples",
)

COLUMNS = [
    "seed",
    "patience",
    "epochs_trained",
    "stopped",
    "best_epoch",
    "log_px_best",
    "log_px_last",
    "best_minus_last",
    "best_minus_last_se",
    "best_minus_reference",
    "best_minus_reference_se",
    "train_seconds",
]


def main(argv=None) -> int:
    defaults = RunConfig().replace(train={"epochs": 500})
    p = parser(__doc__.split("\n\n")[0], "experiments/out/early_stopping", defaults)
    p.add_argument("--patiences", default="20,50", help="patiences P of the stopping runs")
    p.add_argument("--seeds", default="0,1,2", help="a reference and a run per P for each seed")
    add_config_flags(p, defaults, EXTRA_FLAGS)
    args = p.parse_args(argv)
    base = base_config(args, defaults)
    patiences = [int(v) for v in args.patiences.split(",")]
    if any(v < 1 or v >= base.train.epochs for v in patiences):
        raise SystemExit(f"--patiences must lie between 1 and --epochs - 1, got {patiences}")
    rows, curves = [], {}
    for seed in (int(v) for v in args.seeds.split(",")):
        reference = None
        for patience in (base.train.epochs, *patiences):
            config = base.replace(train={"seed": seed, "patience": patience})
            name = f"seed{seed}-" + ("reference" if reference is None else f"P{patience}")
            run_dir = args.out / "runs" / name
            result, _ = train_fresh(config, run_dir, evaluate_at_end=False)
            k = config.train.eval_samples
            best = jobs.evaluate(run_dir, num_samples=k)
            last = jobs.evaluate(run_dir, num_samples=k, checkpoint="last")
            if reference is None:
                reference = last
                curves[seed] = [(r.epoch, r.val_bound) for r in result.history]
            diff, diff_se = paired(
                best.per_point, last.per_point, best.epochs_trained == last.epochs_trained
            )
            ref, ref_se = paired(  # training is the reference's, cut short: one model per epoch
                best.per_point, reference.per_point, best.epochs_trained == reference.epochs_trained
            )
            row = {
                "seed": seed,
                "patience": "none" if patience == base.train.epochs else patience,
                "epochs_trained": len(result.history),
                "stopped": len(result.history) < base.train.epochs,
                "best_epoch": best.epochs_trained,
                "log_px_best": best.log_px,
                "log_px_last": last.log_px,
                "best_minus_last": diff,
                "best_minus_last_se": diff_se,
                "best_minus_reference": ref,
                "best_minus_reference_se": ref_se,
                "train_seconds": sum(r.seconds for r in result.history),
            }
            rows.append(row)
            print(
                f"  {name:16s} {row['epochs_trained']:4d} epochs, best {row['best_epoch']:4d}: "
                f"test {best.log_px:.3f} (best) {last.log_px:.3f} (last)",
                file=sys.stderr,
            )
    title = (
        f"{args.dataset}, up to {base.train.epochs} epochs, latent {base.model.latent_dim}, hidden "
        f"{','.join(map(str, base.model.hidden))}, {base.data.binarize} binarisation, lr "
        f"{base.train.lr:g} (schedule {base.train.lr_schedule}), watched validation "
        f"L_{base.train.stop_samples}, test K={base.train.eval_samples}"
    )
    print(write_table(rows, args.out, title))
    plot(rows, curves, args.out / "early_stopping.png", title)
    print(f"wrote {args.out}/table.csv, table.md, early_stopping.png")
    return 0


def write_table(rows: list[dict], out, title: str) -> str:
    lines = [
        f"**{title}**",
        "",
        "| seed | patience | epochs trained | best epoch | test log p(x), best | last "
        "| best - last | best - reference's last | train s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        trained = f"{r['epochs_trained']}{' (stopped)' if r['stopped'] else ''}"
        lines.append(
            f"| {r['seed']} | {r['patience']} | {trained} | {r['best_epoch']} "
            f"| {r['log_px_best']:.3f} | {r['log_px_last']:.3f} "
            f"| {r['best_minus_last']:+.3f} ± {r['best_minus_last_se']:.3f} "
            f"| {r['best_minus_reference']:+.3f} ± {r['best_minus_reference_se']:.3f} "
            f"| {r['train_seconds']:.0f} |"
        )
    return write_files(out, COLUMNS, rows, lines)


def plot(rows: list[dict], curves: dict, path, title: str) -> None:
    """Left: each seed's watched validation L_K over the reference's epochs, the stopping runs'
    best (star) and stopping (cross) epochs on it. Right: each run's best and last checkpoints'
    test log p(x) less the reference's last, with paired standard errors."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=120)
    left, right = fig.subplots(1, 2)
    for i, (seed, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        epochs, values = zip(*curve, strict=True)
        left.plot(epochs, values, color=colour, lw=1, label=f"seed {seed}")
        at = dict(curve)
        for r in rows:
            if r["seed"] != seed or r["patience"] == "none":
                continue
            left.plot(r["best_epoch"], at[r["best_epoch"]], "*", color=colour, ms=12, mec="k")
            if r["stopped"]:
                left.plot(
                    r["epochs_trained"], at[r["epochs_trained"]], "X", color=colour, ms=10, mec="k"
                )
    # where stopping happens: from the earliest stop on (the first epochs' climb is cut off)
    start = min([r["epochs_trained"] for r in rows if r["stopped"]] or [1]) // 2
    shown = [v for curve in curves.values() for e, v in curve if e >= start]
    if shown and all(math.isfinite(v) for v in shown):
        low, high = min(shown), max(shown)
        left.set_xlim(start, max(e for curve in curves.values() for e, _ in curve))
        left.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low))
    left.set_xlabel("epoch")
    left.set_ylabel("validation L_K, nats (watched)")
    left.set_title("watched score; per patience, * best epoch and X stop", fontsize=9)
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)
    labels = [f"s{r['seed']} P={r['patience']}" for r in rows]
    xs = range(len(rows))
    best = [r["best_minus_reference"] for r in rows]
    last = [
        r["best_minus_reference"] - r["best_minus_last"] for r in rows
    ]  # last minus the reference's last
    right.errorbar(
        [x - 0.1 for x in xs],
        best,
        yerr=[r["best_minus_reference_se"] for r in rows],
        fmt="*",
        ms=9,
        capsize=3,
        label="best epoch's checkpoint",
    )
    right.plot([x + 0.1 for x in xs], last, "x", ms=8, color="C3", label="last checkpoint")
    right.axhline(0.0, color="0.5", lw=1)
    right.set_xticks(list(xs))
    right.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("test log p(x) - reference's last, nats")
    right.set_title("test split: higher is better; error bars paired", fontsize=9)
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
