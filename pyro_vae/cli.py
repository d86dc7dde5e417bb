"""The ``pyro-vae`` command line: parses options, calls :mod:`pyro_vae.jobs`, prints results.

Bad input (an unknown option or name, a missing run directory, a corrupt checkpoint, data the
likelihood cannot score) prints one line starting ``pyro-vae: error:`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pyro_vae import jobs, registry
from pyro_vae.config import RunConfig
from pyro_vae.data.datasets import is_path
from pyro_vae.errors import ConfigError, NonFiniteError, PyroVAEError, UnsupportedDataError
from pyro_vae.runs import RunDir, atomic_write_text, check_output_dir, check_output_file

# Flag advice the CLI adds to a library error about data outside a likelihood's support.
SUPPORT_HINTS = {
    "binary": "--binarize dynamic or --binarize static (without --dequantize), or --likelihood "
    "continuous-bernoulli for values in [0, 1] (with --dequantize uniform for pixel levels)",
    "unit_interval": "rescale the data, or --likelihood gaussian for real-valued data",
    "open_unit_interval": "for quantised pixel data, --dequantize uniform with --binarize none; "
    "continuous data must be moved strictly inside (0, 1)",
    "levels": "--binarize none without --dequantize",
}

# CLI option dest -> (config section, field)
TRAIN_OPTIONS = {
    "dataset": ("data", "dataset"),
    "data_dir": ("data", "data_dir"),
    "binarize": ("data", "binarize"),
    "binarize_seed": ("data", "binarize_seed"),
    "dequantize": ("data", "dequantize"),
    "download": ("data", "download"),
    "latent_dim": ("model", "latent_dim"),
    "hidden": ("model", "hidden"),
    "prior": ("model", "prior"),
    "likelihood": ("model", "likelihood"),
    "guide": ("model", "guide"),
    "gaussian_scale": ("model", "gaussian_scale"),
    "scale_floor": ("model", "scale_floor"),
    "num_components": ("model", "num_components"),
    "flows": ("model", "flows"),
    "rank": ("model", "rank"),
    "elbo": ("train", "elbo"),
    "num_particles": ("train", "num_particles"),
    "vectorize_particles": ("train", "vectorize_particles"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "beta": ("train", "beta"),
    "warmup_epochs": ("train", "warmup_epochs"),
    "seed": ("train", "seed"),
    "device": ("train", "device"),
    "log_every": ("train", "log_every"),
    "eval_samples": ("train", "eval_samples"),
    "precision": ("train", "precision"),
}


def _names(table: dict, default: str) -> str:
    return f"{', '.join(table)} (default {default})"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 512,512, got '{text}'") from None
    return widths


def build_parser() -> argparse.ArgumentParser:
    d = RunConfig()
    parser = _Parser(prog="pyro-vae", description="VAEs as Pyro programs, evaluated honestly.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="fit a VAE with SVI, checkpoint every epoch, evaluate log p(x) at the end",
        argument_default=argparse.SUPPRESS,
    )
    g = t.add_argument_group("data")
    g.add_argument(
        "--dataset",
        help=f"digits, mnist, fashion-mnist, kmnist, or a .npz/.npy/.pt file "
        f"(default {d.data.dataset})",
    )
    g.add_argument("--data-dir", help="first directory to look in for data files")
    g.add_argument("--binarize", help=f"dynamic, static or none (default {d.data.binarize})")
    g.add_argument(
        "--binarize-seed",
        type=int,
        help=f"seed of static and evaluation binarisation (default {d.data.binarize_seed})",
    )
    g.add_argument(
        "--no-download", dest="download", action="store_false", help="never download data"
    )
    g.add_argument(
        "--dequantize",
        help="uniform or none: (k + u) / levels, for densities on 8-bit data "
        f"(default {d.data.dequantize})",
    )
    g = t.add_argument_group("model")
    g.add_argument("--latent-dim", type=int, help=f"dimension of z (default {d.model.latent_dim})")
    g.add_argument(
        "--hidden", type=_hidden, help="hidden widths of encoder and decoder (default 256,256)"
    )
    g.add_argument("--prior", help=f"p(z): {_names(registry.PRIORS, d.model.prior)}")
    g.add_argument(
        "--likelihood", help=f"p(x|z): {_names(registry.LIKELIHOODS, d.model.likelihood)}"
    )
    g.add_argument("--guide", help=f"q(z|x): {_names(registry.GUIDES, d.model.guide)}")
    g.add_argument(
        "--gaussian-scale",
        type=float,
        help=f"sigma of --likelihood gaussian (default {d.model.gaussian_scale})",
    )
    g.add_argument(
        "--scale-floor",
        type=float,
        help="minimum scale of gaussian-learned, laplace, discretized-logistic "
        f"(default {d.model.scale_floor})",
    )
    g.add_argument(
        "--num-components",
        type=int,
        help=f"components of mog, pseudo-inputs of vamp (default {d.model.num_components})",
    )
    g.add_argument(
        "--flows", type=int, help=f"steps of the flow prior and iaf guide (default {d.model.flows})"
    )
    g.add_argument("--rank", type=int, help=f"rank of the lowrank guide (default {d.model.rank})")
    g = t.add_argument_group("training")
    g.add_argument(
        "--elbo",
        help="trace (Trace_ELBO), meanfield (TraceMeanField_ELBO) or iwae (IWAE bound with "
        f"--num-particles K) (default {d.train.elbo})",
    )
    g.add_argument(
        "--num-particles",
        type=int,
        help=f"samples of z per datapoint per step (default {d.train.num_particles})",
    )
    g.add_argument(
        "--no-vectorize-particles",
        dest="vectorize_particles",
        action="store_false",
        help="draw particles in a Python loop",
    )
    g.add_argument("--epochs", type=int, help=f"default {d.train.epochs}")
    g.add_argument("--batch-size", type=int, help=f"default {d.train.batch_size}")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.train.lr})")
    g.add_argument(
        "--beta", type=float, help=f"KL weight; 1 is the true ELBO (default {d.train.beta})"
    )
    g.add_argument(
        "--warmup-epochs",
        type=int,
        help=f"epochs of linear KL warm-up to --beta (default {d.train.warmup_epochs})",
    )
    g.add_argument("--seed", type=int, help=f"default {d.train.seed}")
    g.add_argument("--device", help=f"auto, cpu or cuda (default {d.train.device})")
    g.add_argument(
        "--log-every",
        type=int,
        help=f"steps between progress updates (default {d.train.log_every})",
    )
    g.add_argument(
        "--eval-samples",
        type=int,
        help=f"K of the evaluation after training (default {d.train.eval_samples})",
    )
    g.add_argument(
        "--precision",
        help="precision of the networks in training steps; bf16 is mixed precision, faster "
        "where the hardware has bf16 matrix units (the final evaluation stays fp32): "
        f"{_names(registry.PRECISIONS, d.train.precision)}",
    )
    g = t.add_argument_group("run")
    g.add_argument("--out", help="run directory (default runs/DATASET-TIMESTAMP)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument(
        "--no-eval", dest="evaluate", action="store_false", help="skip the final evaluation"
    )
    _progress_flags(g)

    e = sub.add_parser(
        "evaluate",
        help="importance-sampled log p(x) vs ELBO; keeps it in RUN_DIR/evaluations/ (one per "
        "split, K and precision)",
    )
    e.add_argument("run_dir")
    e.add_argument(
        "--num-samples",
        type=int,
        default=1000,
        help="K, importance samples per datapoint (default 1000)",
    )
    e.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="particles per vectorised pass (default: automatic, sized from free device memory)",
    )
    e.add_argument("--split", default="test", help="train, val or test (default test)")
    e.add_argument("--device", default="auto", help="auto (the run's device), cpu or cuda")
    e.add_argument(
        "--precision",
        default="fp32",
        help="precision of the networks: fp32 (default, the reference) or bf16 (faster "
        "approximation; compare refuses to mix it with fp32)",
    )
    m = e.add_argument_group("estimation method")
    m.add_argument(
        "--method",
        default="iwae",
        help="iwae (importance sampling from the guide), refined (from a proposal refined per "
        "datapoint), ais (annealed importance sampling) or auto (iwae, then refined, then ais "
        "for the datapoints k-hat or the error bar flags) (default iwae)",
    )
    _ais_flags(m)
    m.add_argument(
        "--refine-steps",
        type=int,
        default=1000,
        help="most optimisation steps per datapoint of refined and auto (default 1000)",
    )
    m.add_argument(
        "--widen",
        type=float,
        default=1.1,
        help="factor on the refined proposal's scale (default 1.1)",
    )
    m.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="soft time budget of auto: no new block of its AIS stage starts once it is spent "
        "(default none)",
    )
    m.add_argument(
        "--stderr-tolerance",
        type=float,
        default=0.05,
        help="error bar in nats above which auto escalates a datapoint (default 0.05)",
    )
    m.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="auto: the most fresh draws from a refined proposal whose k-hat is fine but whose "
        "error bar is above the tolerance, before AIS (default 16 times --num-samples)",
    )
    _progress_flags(e)

    b = sub.add_parser(
        "bdmc",
        help="sandwich log p(x) between forward and reverse AIS on data simulated from the "
        "model; keeps it in RUN_DIR/bdmc/",
    )
    b.add_argument("run_dir")
    b.add_argument(
        "--num-datapoints",
        type=int,
        default=100,
        help="datapoints to simulate (default 100)",
    )
    b.add_argument(
        "--num-samples",
        type=int,
        default=1000,
        help="K of the IWAE estimate reported beside the bounds (default 1000)",
    )
    b.add_argument("--device", default="auto", help="auto (the run's device), cpu or cuda")
    _ais_flags(b)
    _progress_flags(b)

    c = sub.add_parser(
        "compare", help="rank evaluated runs by held-out log p(x), with paired differences"
    )
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    c.add_argument("--csv", default=None, help="also write the table as CSV here")
    c.add_argument(
        "--mix-methods",
        action="store_true",
        help="rank runs evaluated with different methods or K (each run's one evaluation that "
        "the selection picks)",
    )
    _selection_flags(c)

    pl = sub.add_parser("plot", help="draw the run's figures (PNG) into RUN_DIR/plots")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="directory for the PNGs (default RUN_DIR/plots)")
    _selection_flags(pl)

    s = sub.add_parser("sample", help="draw from the model; writes a PNG of means and samples")
    s.add_argument("run_dir")
    s.add_argument("--num", type=int, default=64, help="number of draws (default 64)")
    s.add_argument(
        "--out",
        default=None,
        help="PNG path (.png is added when missing; a directory gets samples.png; "
        "default RUN_DIR/samples.png)",
    )
    s.add_argument("--seed", type=int, default=None, help="seed of the draws (default: the run's)")
    return parser


def _version() -> str:
    try:
        return version("pyro_vae")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _selection_flags(parser) -> None:
    """Which kept evaluation to read, when a run holds several."""
    g = parser.add_argument_group("which evaluation (needed when a run holds several)")
    g.add_argument("--split", default=None, help="the evaluation's split")
    g.add_argument("--num-samples", type=int, default=None, help="the evaluation's K")
    g.add_argument("--precision", default=None, help="the evaluation's precision")
    g.add_argument("--method", default=None, help="the evaluation's method")


def _selection(args) -> dict:
    return {
        "split": args.split,
        "num_samples": args.num_samples,
        "precision": args.precision,
        "method": args.method,
    }


def _ais_flags(group) -> None:
    group.add_argument(
        "--ais-steps",
        type=int,
        default=500,
        help="AIS: intermediate distributions (default 500)",
    )
    group.add_argument(
        "--ais-chains", type=int, default=16, help="AIS: chains per datapoint (default 16)"
    )
    group.add_argument(
        "--ais-leapfrog",
        type=int,
        default=5,
        help="AIS: leapfrog steps per HMC transition (default 5)",
    )


def _ais_settings(args) -> dict:
    return {
        "ais_steps": args.ais_steps,
        "ais_chains": args.ais_chains,
        "ais_leapfrog": args.ais_leapfrog,
    }


def _progress_flags(group) -> None:
    group.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show progress bars (default: bars when stderr is a terminal, else a plain "
        "progress line every few seconds)",
    )
    group.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress reports"
    )


def _show_progress(args) -> str:
    """``"bar"`` on a terminal, ``"lines"`` in a log (stderr not a terminal), or as asked."""
    flag = getattr(args, "progress", None)
    if flag is None:
        return "bar" if sys.stderr.isatty() else "lines"
    return "bar" if flag else "off"


def train_config(args: argparse.Namespace) -> RunConfig:
    """The run's config: defaults (or, with --resume, the saved config) plus the given options."""
    given = {dest: getattr(args, dest) for dest in TRAIN_OPTIONS if hasattr(args, dest)}
    if getattr(args, "resume", False):
        base = RunDir(args.out).require(checkpoint=False).read_config()
    else:
        base = RunConfig()
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for dest, value in given.items():
        section, field = TRAIN_OPTIONS[dest]
        sections[section][field] = value
    return base.replace(**sections)


def _default_out(dataset: str) -> str:
    name = Path(dataset).stem if is_path(dataset) else dataset
    return str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def echo(text: str) -> None:
    """Print a line to stdout; once a reader closes the pipe (``| head``), drop the rest
    silently and let the job finish."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        echo(parser.format_help().rstrip())
        return 0
    progress = _show_progress(args)
    if args.command == "train":
        if getattr(args, "resume", False) and not hasattr(args, "out"):
            raise ConfigError("--resume needs --out RUN_DIR, the run to continue")
        config = train_config(args)
        out = getattr(args, "out", None) or _default_out(config.data.dataset)
        check_output_dir(out, "--out")
        try:
            result = jobs.train(
                config,
                out,
                resume=getattr(args, "resume", False),
                evaluate_at_end=getattr(args, "evaluate", True),
                progress=progress,
                echo=echo,
            )
        except KeyboardInterrupt:
            saved = (
                "the last finished epoch is saved"
                if RunDir(out).checkpoint_path.is_file()
                else "no epoch had finished yet"
            )
            if RunDir(out).exists():
                _error_line(
                    f"\ninterrupted: {saved}; continue with pyro-vae train --out {out} --resume"
                )
            else:
                _error_line("\ninterrupted before the run began: nothing was written")
            return 130
        echo(f"run directory: {result.run_dir}")
    elif args.command == "evaluate":
        summary = jobs.evaluate(
            args.run_dir,
            num_samples=args.num_samples,
            chunk_size=args.chunk_size,
            split=args.split,
            device=args.device,
            precision=args.precision,
            progress=progress,
            method=args.method,
            refine_steps=args.refine_steps,
            widen=args.widen,
            max_seconds=args.max_seconds,
            stderr_tolerance=args.stderr_tolerance,
            max_samples=args.max_samples,
            **_ais_settings(args),
        )
        json_path, nc_path = RunDir(args.run_dir).evaluation_paths(summary)
        echo(jobs.format_evaluation(summary))
        echo(f"wrote {json_path} and {nc_path}")
    elif args.command == "compare":
        for path, flag in ((args.markdown, "--markdown"), (args.csv, "--csv")):
            if path:
                check_output_file(path, flag)
        rows = jobs.compare(args.run_dirs, mix_methods=args.mix_methods, **_selection(args))
        caveats = jobs.comparison_caveats(rows)
        settings = sorted({r.setting for r in rows})
        setting = f"evaluations compared: {', '.join(settings)}"
        echo("\n".join([jobs.format_comparison(rows), setting, *caveats]))
        if args.markdown:
            table = jobs.format_comparison(rows, markdown=True)
            notes = "".join(f"\n{line}\n" for line in [setting, *caveats])
            atomic_write_text(Path(args.markdown), table + "\n" + notes)
            echo(f"wrote {args.markdown}")
        if args.csv:
            jobs.write_comparison_csv(rows, args.csv)
            echo(f"wrote {args.csv}")
    elif args.command == "bdmc":
        summary = jobs.bdmc(
            args.run_dir,
            num_datapoints=args.num_datapoints,
            num_samples=args.num_samples,
            device=args.device,
            progress=progress,
            **_ais_settings(args),
        )
        echo(jobs.format_bdmc(summary))
        echo(f"wrote {' and '.join(summary['paths'])}")
    elif args.command == "plot":
        if args.out is not None:
            check_output_dir(args.out, "--out")
        for path in jobs.plot(args.run_dir, args.out, **_selection(args)):
            echo(f"wrote {path}")
    elif args.command == "sample":
        if args.out is not None:
            check_output_file(jobs.samples_path(args.run_dir, args.out), "--out")
        path = jobs.sample(args.run_dir, num=args.num, out=args.out, seed=args.seed)
        echo(f"wrote {path}")
    return 0


def advice(error: PyroVAEError) -> str:
    """The command-line fix for a library error, in flags ("" when there is none to add)."""
    if isinstance(error, UnsupportedDataError):
        return SUPPORT_HINTS.get(error.support, "")
    if isinstance(error, NonFiniteError) and error.cause == "model":
        # the data's own fault (unscaled, NaN) is said by the library; no flag changes it
        return "retrain with a smaller --lr, or a larger --scale-floor for a learned scale"
    return ""


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except PyroVAEError as e:
        hint = advice(e)
        message = " ".join(str(e).split())  # one line, whatever the message holds
        _error_line(f"pyro-vae: error: {message}" + (f" ({hint})" if hint else ""))
        return 2
    except KeyboardInterrupt:  # outside training (evaluate, plot, compare, sample)
        _error_line("\npyro-vae: interrupted; files already written are whole, nothing half-done")
        return 130
    except BrokenPipeError:  # a write to a closed pipe outside echo(): the job did not finish
        _error_line("pyro-vae: error: output pipe closed before the job finished")
        return 1
    except OSError as e:  # a file that cannot be written or read: a full disk, permissions
        where = f": {e.filename}" if e.filename else ""
        _error_line(f"pyro-vae: error: {e.strerror or e}{where}")
        return 2


def _error_line(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # nobody is reading stderr any more
        pass


if __name__ == "__main__":
    sys.exit(main())
