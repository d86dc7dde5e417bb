"""Networks at equal wall-clock: MLP and convolutional VAEs, each trained for the same time.

Each network in --nets (a conv one per list of --conv-channels) trains the base config until its
training time (the sum of the epochs' seconds, ``pyro-vae train --max-seconds``) reaches
--seconds, or --epochs are done, whichever comes first; then it is scored on the test split (the
first --test-points, K = --eval-samples). A run stops after the epoch that reaches the budget,
so it overshoots it by up to one of its epochs, more for a network with longer epochs. So the
table gives each run's own training time and test log p(x) (at that time, with its difference
from the first run's, paired over the test points, and that difference's standard error: the
spread over the points and both Monte Carlo errors, not the spread over training seeds), and, at
one time for all, T = the shortest run's time, each run's validation ELBO interpolated linearly
between the epochs around T. The figure draws the validation ELBO of every epoch against the
time spent, where the networks can be compared at any time up to the budget. Each run's first
epoch includes its one-time costs (allocations, kernel choices). Runs compared by time want an
otherwise idle machine and one thread count (--threads). Writes runs/, table.csv, table.md and
equal_time.png.

Usage: python experiments/equal_time.py --dataset fashion-mnist --seconds 450 [--nets mlp,conv]
       [--hidden 512,512] [--conv-hidden 512] [--conv-channels 32,64 16,32] [--test-points N]
"""

from __future__ import annotations

import math
import sys

from _common import _percent, base_config, paired, parser, train_fresh, write_files

from pyro_vae import jobs
from pyro_vae.cli import add_config_flags
from pyro_vae.config import RunConfig
from pyro_vae.options import parse_widths

# pyro-vae train's, with no epoch limit short of the time budget and K = 100 at the end
DEFAULTS = RunConfig().replace(train={"epochs": 100_000, "eval_samples": 100})
EXTRA_FLAGS = ("train.batch_size", "train.lr")
NETS = ("mlp", "conv")

COLUMNS = [
    "variant",
    "net",
    "channels",
    "hidden",
    "epochs",
    "train_seconds",
    "val_elbo",
    "val_elbo_at_common_time",
    "log_px",
    "log_px_stderr",
    "log_px_minus_first",
    "log_px_minus_first_se",
    "elbo",
    "active_units",
    "frac_khat_above_threshold",
]


def main(argv=None) -> int:
    p = parser(__doc__.split("\n\n")[0], "experiments/out/equal_time", DEFAULTS)
    p.add_argument(
        "--seconds", type=float, required=True, help="training time of every run, in seconds"
    )
    p.add_argument("--nets", default="mlp,conv", help="networks: mlp, conv or mlp,conv")
    p.add_argument(
        "--conv-hidden",
        type=parse_widths,
        default=None,
        help="widths of the conv networks' dense layers (default: --hidden)",
    )
    p.add_argument(
        "--conv-channels",
        type=parse_widths,
        nargs="+",
        default=[RunConfig().model.channels],
        metavar="C,C",
        help="the conv networks' channels: one conv run per list (default 32,64)",
    )
    p.add_argument(
        "--test-points", type=int, default=None, help="score the first N test points only"
    )
    add_config_flags(p, DEFAULTS, EXTRA_FLAGS)
    args = p.parse_args(argv)
    nets = args.nets.split(",")
    if not nets or any(n not in NETS for n in nets) or len(set(nets)) < len(nets):
        raise SystemExit(
            f"--nets must name each of {', '.join(NETS)} at most once, got {args.nets}"
        )
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise SystemExit(f"--seconds must be a positive number, got {args.seconds}")
    base = base_config(args, DEFAULTS).replace(train={"max_seconds": args.seconds})
    if len(set(args.conv_channels)) < len(args.conv_channels):
        raise SystemExit("--conv-channels must name each list once at most")
    variants = {}  # name -> config
    for net in nets:
        if net == "mlp":
            variants["mlp"] = base.replace(model={"net": "mlp"})
            continue
        for channels in args.conv_channels:
            name = (
                "conv" if len(args.conv_channels) == 1 else "conv-" + "-".join(map(str, channels))
            )
            hidden = args.conv_hidden or base.model.hidden
            variants[name] = base.replace(
                model={"net": "conv", "hidden": hidden, "channels": channels}
            )
    rows, curves, first = [], {}, None
    for name, config in variants.items():
        net, hidden = config.model.net, config.model.hidden
        run_dir = args.out / "runs" / name
        result, _ = train_fresh(config, run_dir, evaluate_at_end=False)
        ev = jobs.evaluate(run_dir, num_samples=config.train.eval_samples, first=args.test_points)
        history = result.history
        spent, curve = 0.0, []
        for r in history:
            spent += r.seconds
            curve.append((spent, r.val_elbo))
        curves[name] = curve
        # the other runs' difference from the first, paired over datapoints
        first = ev if first is None else first
        diff, diff_se = paired(ev.per_point, first.per_point, same=ev is first)
        row = {
            "variant": name,
            "net": net,
            "channels": "" if net == "mlp" else ",".join(map(str, config.model.channels)),
            "hidden": ",".join(map(str, hidden)),
            "epochs": len(history),
            "train_seconds": spent,
            "val_elbo": history[-1].val_elbo,
            "log_px": ev.log_px,
            "log_px_stderr": ev.log_px_stderr,
            "log_px_minus_first": diff,
            "log_px_minus_first_se": diff_se,
            "elbo": ev.elbo,
            "active_units": ev.active_units,
            "frac_khat_above_threshold": ev.frac_khat_above_threshold,
        }
        rows.append(row)
        print(
            f"  {name:12s} {len(history):5d} epochs in {spent:7.1f} s: val ELBO "
            f"{row['val_elbo']:9.3f}, test log p(x) {ev.log_px:9.3f}",
            file=sys.stderr,
        )
    common = min(r["train_seconds"] for r in rows)
    for row in rows:
        row["val_elbo_at_common_time"] = value_at(curves[row["variant"]], common)
    points = "" if args.test_points is None else f" (first {args.test_points})"
    title = (
        f"{args.dataset}, a budget of {args.seconds:g} s of training each, latent "
        f"{base.model.latent_dim}, test split{points}, K={base.train.eval_samples}"
    )
    print(write_table(rows, args.out, title, common))
    plot(curves, args.seconds, args.out / "equal_time.png", title)
    print(f"wrote {args.out}/table.csv, table.md, equal_time.png")
    return 0


def value_at(curve: list[tuple[float, float]], t: float) -> float:
    """The curve's value at time ``t``, linear between its points (NaN before its first)."""
    for (t0, v0), (t1, v1) in zip(curve, curve[1:], strict=False):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return curve[-1][1] if curve and t == curve[-1][0] else math.nan


def write_table(rows: list[dict], out, title: str, common: float) -> str:
    lines = [
        f"**{title}**",
        "",
        f"| run | widths | epochs | train s | val ELBO, last epoch | val ELBO at {common:.4g} s "
        f"| test log p(x) | minus {rows[0]['variant']}'s, paired | ELBO | active | k-hat > 0.7 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        widths = f"{r['channels']}; {r['hidden']}" if r["channels"] else r["hidden"]
        lines.append(
            f"| {r['variant']} | {widths} | {r['epochs']} | {r['train_seconds']:.0f} "
            f"| {r['val_elbo']:.2f} | {_nats(r['val_elbo_at_common_time'])} "
            f"| {r['log_px']:.3f} ± {r['log_px_stderr']:.3f} "
            f"| {r['log_px_minus_first']:+.3f} ± {r['log_px_minus_first_se']:.3f} "
            f"| {r['elbo']:.2f} | {r['active_units']} "
            f"| {_percent(r['frac_khat_above_threshold'])} |"
        )
    return write_files(out, COLUMNS, rows, lines)


def _nats(value: float) -> str:
    return "n/a (no epoch yet)" if math.isnan(value) else f"{value:.2f}"


def plot(curves: dict[str, list[tuple[float, float]]], budget: float, path, title: str) -> None:
    """The validation ELBO after each epoch against the training time spent, per network."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2), dpi=120)
    ax = fig.subplots()
    shown = []  # each curve's values after a tenth of its time: its first epochs may be off-scale
    for name, curve in curves.items():
        ax.plot([t for t, _ in curve], [v for _, v in curve], "o-", ms=3, label=name)
        end = curve[-1][0]
        shown += [v for t, v in curve if t >= end / 10 and math.isfinite(v)]
    ax.axvline(budget, color="0.5", ls="--", lw=1, label=f"budget ({budget:g} s)")
    if shown:
        ax.set_ylim(min(shown) - 1.0, max(shown) + 0.5)
    ax.set_xlabel("training time, s (sum of the epochs' seconds)")
    ax.set_ylabel("validation ELBO, nats (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
