"""The ``pyro-vae`` command line: parses options, calls :mod:`pyro_vae.jobs`, prints results.

Bad input (an unknown option or name, a missing run directory, a corrupt checkpoint, data the
likelihood cannot score) prints one line starting ``pyro-vae: error:`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import itertools
import os
import sys
import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyro
import torch

from pyro_vae import jobs, registry
from pyro_vae.build import resolve_device
from pyro_vae.config import SECTIONS, RunConfig
from pyro_vae.data.datasets import is_path
from pyro_vae.distributed import World, broadcast_object, init_process_group, world_from_env
from pyro_vae.errors import (
    ConfigError,
    NonFiniteError,
    PyroVAEError,
    UnsupportedDataError,
    name_options,
)
from pyro_vae.infer.ais import AIS
from pyro_vae.infer.escalate import Auto
from pyro_vae.infer.estimators import ESTIMATORS, setting_fields
from pyro_vae.infer.importance import IWAE
from pyro_vae.options import declared, flag_of
from pyro_vae.runs import RunDir, check_output_dir

# Flag advice the CLI adds to a library error about data outside a likelihood's support.
SUPPORT_HINTS = {
    "binary": "--binarize dynamic or --binarize static (without --dequantize), or --likelihood "
    "continuous-bernoulli for values in [0, 1] (with --dequantize uniform for pixel levels)",
    "unit_interval": "rescale the data, or --likelihood gaussian for real-valued data",
    "open_unit_interval": "for quantised pixel data, --dequantize uniform with --binarize none; "
    "continuous data must be moved strictly inside (0, 1)",
    "levels": "--binarize none without --dequantize",
    # data outside [0, 1] under a likelihood for binary or [0, 1] data: real-valued data
    "real_valued": "--likelihood gaussian-learned, gaussian or laplace, with --binarize none",
}

# The settings of pyro-vae evaluate outside its "estimation method" group.
SAMPLES_SETTINGS = ("num_samples", "chunk_size")
# The option groups of ``pyro-vae train``: config section -> group title.
TRAIN_GROUPS = {"data": "data", "model": "model", "train": "training"}


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with errors as one :class:`ConfigError` line, no abbreviated options
    (``--epoch`` is not taken for ``--epochs``), and a suggestion for a misspelt option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{message}{self.suggestion(message)} (see {self.prog} --help)")

    def suggestion(self, message: str) -> str:
        """For "unrecognized arguments: --latent_dim 3": "; did you mean --latent-dim?"."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = list(self._option_string_actions)
        if self._subparsers is not None:  # the command's own options
            for command in self._subparsers._group_actions[0].choices.values():
                known += list(command._option_string_actions)
        hints = []
        for word in message.split(":", 1)[1].split():
            if not word.startswith("--"):
                continue
            flag = word.split("=", 1)[0]
            close = difflib.get_close_matches(flag.replace("_", "-"), known, n=1, cutoff=0.8)
            if close:
                hints.append(f"{flag}: did you mean {close[0]}?")
        return f"; {'; '.join(hints)}" if hints else ""


def _add_config_options(parser: argparse.ArgumentParser, defaults: RunConfig) -> None:
    """One flag per declared config field (:mod:`pyro_vae.options`), grouped by section; a flag
    given sets the field (its ``dest``), one not given leaves it unset."""
    for section, title in TRAIN_GROUPS.items():
        group = parser.add_argument_group(title)
        _add_declared(group, SECTIONS[section], getattr(defaults, section))


def _add_declared(
    group, kind, defaults, only: tuple[str, ...] | None = None, *, unset: bool = False
) -> None:
    """A flag for each declared field of ``kind`` (those named in ``only``, when given), with
    its help, its default from ``defaults`` and its parser. With ``unset``, a flag not given
    is None (the default is the chosen estimator's, shown in the help)."""
    fields = kind if isinstance(kind, list) else [f for f, _ in declared(kind)]
    for f in fields:
        opt = f.metadata["option"]
        if not opt.cli or (only is not None and f.name not in only):
            continue
        text = name_options(opt.help, _flag)
        default = f.default if defaults is None else getattr(defaults, f.name)
        if unset:
            extra = {"default": None}
        elif group.argument_default is argparse.SUPPRESS:
            extra = {}
        else:
            extra = {"default": default}
        if f.type == "bool":
            group.add_argument(opt.negate, dest=f.name, action="store_false", help=text, **extra)
            continue
        if opt.names:
            text += ": " + ", ".join(getattr(registry, opt.names))
        if default is not None:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            text += f" (default {shown})"
        base = f.type.removesuffix(" | None")
        kind_of = _parser_of(opt.parse) if opt.parse else {"int": int, "float": float}.get(base)
        group.add_argument(flag_of(f.name), type=kind_of, help=text, metavar=opt.metavar, **extra)


def _parser_of(parse):
    """``parse`` for argparse: its ValueError becomes argparse's one-line message."""

    def parsed(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parsed


# The flag of each option, for errors that name the option by its config path.
FLAGS = {
    f"{section}.{f.name}": opt.negate or flag_of(f.name)
    for section, kind in SECTIONS.items()
    for f, opt in declared(kind)
}


def _flag(path: str) -> str:
    """The flag of a config path, of an estimator's setting (``estimator.widen`` -> ``--widen``)
    or of a job's argument (``args.out`` -> ``--out``)."""
    for prefix in ("args.", "estimator."):
        if path.startswith(prefix):
            return flag_of(path.removeprefix(prefix))
    return FLAGS.get(path, path)


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
    _add_config_options(t, d)
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
    settings = setting_fields()
    _add_declared(e, settings, None, only=SAMPLES_SETTINGS, unset=True)
    e.add_argument("--split", default="test", help="train, val or test (default test)")
    e.add_argument(
        "--first",
        type=int,
        default=None,
        help="evaluate the split's first N datapoints only (a setting of its own)",
        metavar="N",
    )
    e.add_argument(
        "--checkpoint",
        default=None,
        choices=jobs.CHECKPOINTS,
        help="of a run trained with early stopping: its best epoch's checkpoint (the default) or "
        "its last (a setting of its own)",
    )
    e.add_argument("--device", default="auto", help="auto (the run's device), cpu or cuda")
    e.add_argument(
        "--precision",
        default="fp32",
        help="precision of the networks: fp32 (default, the reference) or bf16 (faster "
        "approximation; compare refuses to mix it with fp32)",
    )
    m = e.add_argument_group("estimation method (each setting refused by the methods without it)")
    m.add_argument(
        "--method",
        default=IWAE.name,
        help="; ".join(f"{name}: {e.label}" for name, e in ESTIMATORS.items())
        + f" (default {IWAE.name}, the fastest; {Auto.name} certifies where it can)",
    )
    others = tuple(f.name for f in settings if f.name not in SAMPLES_SETTINGS)
    _add_declared(m, settings, None, only=others, unset=True)
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
    _add_declared(b, AIS.Settings, AIS.Settings())
    _progress_flags(b)

    k = sub.add_parser(
        "check",
        help="workflow checks: prior/posterior predictive checks and simulation-based "
        "calibration of q(z|x); keeps them in RUN_DIR/checks/",
        description="Predictive checks and SBC of a run (both, posterior predictive, when "
        "neither --predictive nor --sbc is given).",
    )
    k.add_argument("run_dir")
    k.add_argument(
        "--predictive",
        choices=("prior", "posterior"),
        default=None,
        help="replicate held-out images from the prior or the posterior predictive and compare "
        "test statistics",
    )
    k.add_argument("--sbc", action="store_true", help="simulation-based calibration of q(z|x)")
    k.add_argument("--split", default="test", help="the predictive check's split (default test)")
    k.add_argument(
        "--num-datapoints",
        type=int,
        default=1000,
        metavar="N",
        help="images of the split checked, the first ones (default 1000; all of them when the "
        "split holds fewer)",
    )
    k.add_argument(
        "--num-draws",
        type=int,
        default=100,
        metavar="S",
        help="replicates of each image (default 100)",
    )
    k.add_argument(
        "--num-simulations",
        type=int,
        default=None,
        metavar="M",
        help="SBC: pairs (z, x) simulated from the model (default 1000)",
    )
    k.add_argument(
        "--sbc-draws",
        type=int,
        default=None,
        metavar="L",
        help="SBC: draws of q(z|x) per simulation (at least 19; default 99)",
    )
    k.add_argument(
        "--sbc-proposals",
        type=int,
        default=None,
        metavar="K",
        help="SBC: draws of q resampled by importance weight, for the ranks under the "
        "self-normalised posterior (0: none; default 1000)",
    )
    k.add_argument("--device", default="auto", help="auto (the run's device), cpu or cuda")
    _progress_flags(k)

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
    _selection_flags(pl, "which evaluation (default: the newest of the current checkpoint)")

    s = sub.add_parser(
        "sample",
        help="draw from the model; writes a PNG of means and samples (for data that are not "
        "images, the draws as samples.npy)",
    )
    s.add_argument("run_dir")
    s.add_argument("--num", type=int, default=64, help="number of draws (default 64)")
    s.add_argument(
        "--out",
        default=None,
        help="PNG path (.png is added when missing; a directory gets samples.png; "
        "default RUN_DIR/samples.png; .npy for data that are not images)",
    )
    s.add_argument("--seed", type=int, default=None, help="seed of the draws (default: the run's)")

    ev = sub.add_parser(
        "evaluations",
        help="list a run's kept evaluations, current or older than its checkpoint; drop some",
    )
    ev.add_argument("run_dir")
    ev.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="SETTING",
        help="remove the evaluation of this setting, e.g. test-K1000-fp32 (repeatable)",
    )
    ev.add_argument(
        "--drop-stale",
        action="store_true",
        help="remove every evaluation made before its checkpoint was trained further",
    )
    return parser


def _version() -> str:
    try:
        return version("pyro_vae")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _selection_flags(
    parser, title: str = "which evaluation (needed when a run holds several)"
) -> None:
    """Which kept evaluation to read, when a run holds several."""
    g = parser.add_argument_group(title)
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


def _settings(args, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names}


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


def add_config_flags(
    parser: argparse.ArgumentParser, defaults: RunConfig, only: Iterable[str]
) -> None:
    """``pyro-vae train``'s flags for the config fields named in ``only`` (``"model.latent_dim"``,
    ...), with their declared help and checks and ``defaults``' values: how a script (the
    experiments) offers part of a config of its own defaults without declaring its flags again.
    Read the config back with :func:`config_from_flags`."""
    wanted = set(only)
    unknown = wanted - {f"{s}.{f.name}" for s, kind in SECTIONS.items() for f, _ in declared(kind)}
    if unknown:
        raise ValueError(f"not config fields: {sorted(unknown)}")
    group = parser.add_argument_group("config (as pyro-vae train's)")
    for section, kind in SECTIONS.items():
        names = tuple(p.split(".", 1)[1] for p in wanted if p.startswith(section + "."))
        if names:
            _add_declared(group, kind, getattr(defaults, section), only=names)


def config_from_flags(args: argparse.Namespace, base: RunConfig) -> RunConfig:
    """``base`` with the config fields that flags of :func:`add_config_flags` (or of
    ``pyro-vae train``) set in ``args``; their values are checked as the config checks them."""
    sections = {
        section: {f.name: getattr(args, f.name) for f, _ in declared(kind) if hasattr(args, f.name)}
        for section, kind in SECTIONS.items()
    }
    return base.replace(**sections)


def train_config(args: argparse.Namespace) -> RunConfig:
    """The run's config: defaults (or, with --resume, the saved config) plus the given options."""
    if getattr(args, "resume", False):
        base = RunDir(args.out).require(checkpoint=False).read_config()
    else:
        base = RunConfig()
    return config_from_flags(args, base)


def _default_out(dataset: str) -> str:
    """A new, empty run directory named after the data set and the time, made here: two runs
    started in the same second get names of their own (``-2``, ``-3``, ... added)."""
    name = Path(dataset).stem if is_path(dataset) else dataset
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_output_dir(base, "--out")
    for n in itertools.count(1):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        except OSError as e:
            raise ConfigError(f"cannot make the run directory {path}: {e.strerror or e}") from None
        return str(path)
    raise AssertionError("unreachable")


def echo(text: str) -> None:
    """Print a line to stdout; once a reader closes the pipe (``| head``), drop the rest
    silently and let the job finish."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# The commands that run on several processes of a torchrun launch.
LAUNCHED = ("train", "evaluate", "bdmc")


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        echo(parser.format_help().rstrip())
        return 0
    if world_from_env().is_distributed and args.command not in LAUNCHED:
        raise ConfigError(
            f"only {', '.join(LAUNCHED[:-1])} and {LAUNCHED[-1]} run on several processes "
            f"(torchrun); run {args.command} with one"
        )
    progress = _show_progress(args)
    if args.command == "train":
        if getattr(args, "resume", False) and not hasattr(args, "out"):
            raise ConfigError("--resume needs --out RUN_DIR, the run to continue")
        config = train_config(args)
        out = getattr(args, "out", None)
        if out is not None:
            if not out.strip():
                raise ConfigError("--out is empty; give the run directory's path")
            check_output_dir(out, "--out")
        world = _join_launch(config.train.device)
        made = None  # the default run directory, made here (removed if no run began in it)
        if out is None and world.is_main:
            out = made = _default_out(config.data.dataset)
        say = lambda text: echo(name_options(text, _flag))  # noqa: E731
        if world.is_distributed:
            out = broadcast_object(out, world)  # rank 0's default name (it holds a time)
            if not world.is_main:
                say, progress = (lambda text: None), "off"
        try:
            with _launch_left(world):
                result = jobs.train(
                    config,
                    out,
                    resume=getattr(args, "resume", False),
                    evaluate_at_end=getattr(args, "evaluate", True),
                    progress=progress,
                    echo=say,
                    world=world,
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
        finally:
            if made is not None and not RunDir(made).exists():
                RunDir(made).remove_if_empty()
        say(f"run directory: {result.run_dir}")
    elif args.command == "evaluate":
        evaluation = _launched(
            jobs.evaluate,
            args.device,
            progress,
            args.run_dir,
            split=args.split,
            device=args.device,
            precision=args.precision,
            first=args.first,
            checkpoint=args.checkpoint,
            method=args.method,
            **_settings(args, tuple(f.name for f in setting_fields())),
        )
        if evaluation is None:  # a rank other than 0 of a launch: rank 0 prints
            return 0
        json_path, nc_path = RunDir(args.run_dir).evaluation_paths(evaluation)
        echo(jobs.format_evaluation(evaluation))
        if args.first is not None and evaluation.first is None:
            echo(
                f"note: --first {args.first} covers the whole {args.split} split "
                f"({evaluation.num_datapoints} datapoints): kept as its evaluation"
            )
        echo(f"wrote {json_path} and {nc_path}")
    elif args.command == "compare":
        for path, option in ((args.markdown, "args.markdown"), (args.csv, "args.csv")):
            if path is not None:
                jobs.check_table_path(path, option)
        rows = jobs.compare(args.run_dirs, mix_methods=args.mix_methods, **_selection(args))
        caveats = jobs.comparison_caveats(rows, _flag)
        settings = sorted({r.setting for r in rows})
        setting = f"evaluations compared: {', '.join(settings)}"
        echo("\n".join([jobs.format_comparison(rows), setting, *caveats]))
        if args.markdown is not None:
            jobs.write_comparison_markdown(rows, [setting, *caveats], args.markdown)
            echo(f"wrote {args.markdown}")
        if args.csv is not None:
            jobs.write_comparison_csv(rows, args.csv)
            echo(f"wrote {args.csv}")
    elif args.command == "bdmc":
        summary = _launched(
            jobs.bdmc,
            args.device,
            progress,
            args.run_dir,
            num_datapoints=args.num_datapoints,
            num_samples=args.num_samples,
            device=args.device,
            **_settings(args, tuple(f.name for f, _ in declared(AIS.Settings))),
        )
        if summary is None:  # a rank other than 0 of a launch: rank 0 prints
            return 0
        echo(jobs.format_bdmc(summary))
        echo(f"wrote {' and '.join(summary['paths'])}")
    elif args.command == "check":
        kinds, sbc = _checks_asked(args)
        jobs.check_split(args.split)  # whichever checks run
        for kind in kinds:
            jobs.check_predictive_settings(kind, args.num_datapoints, args.num_draws)
        if sbc:
            jobs.check_sbc_settings(**sbc)
            jobs.check_sbc_memory(args.run_dir, device=args.device, **sbc)
        for kind in kinds:
            summary = jobs.predictive(
                args.run_dir,
                kind=kind,
                num_datapoints=args.num_datapoints,
                num_draws=args.num_draws,
                split=args.split,
                device=args.device,
                progress=progress,
            )
            echo(jobs.format_predictive(summary))
            echo(f"wrote {', '.join(summary['paths'])}")
        if sbc:
            summary = jobs.sbc(args.run_dir, device=args.device, progress=progress, **sbc)
            echo(jobs.format_sbc(summary))
            echo(f"wrote {', '.join(summary['paths'])}")
    elif args.command == "plot":
        jobs.plots_dir(args.run_dir, args.out)  # refused before any work
        plotted = jobs.plot(args.run_dir, args.out, **_selection(args))
        for path in plotted.paths:
            echo(f"wrote {path}")
        echo(name_options(plotted.note, _flag))
    elif args.command == "sample":
        drawn = jobs.sample(args.run_dir, num=args.num, out=args.out, seed=args.seed)
        echo(drawn.describe())
    elif args.command == "evaluations":
        if args.drop or args.drop_stale:
            dropped = jobs.drop_evaluations(args.run_dir, args.drop, stale=args.drop_stale)
            echo(f"dropped {', '.join(dropped)}" if dropped else "dropped none: none is older")
        echo(jobs.format_kept(args.run_dir, jobs.kept_evaluations(args.run_dir)))
    return 0


# pyro-vae check's SBC flags (given: not None) and their defaults
SBC_FLAGS = {"num_simulations": 1000, "sbc_draws": 99, "sbc_proposals": 1000}


def _checks_asked(args) -> tuple[list[str], dict | None]:
    """The predictive checks (kinds) and the SBC settings (None: no SBC) that ``pyro-vae check``
    was asked for: both the posterior predictive check and SBC when neither was named. SBC
    flags without SBC are refused rather than ignored."""
    given = [name for name in SBC_FLAGS if getattr(args, name) is not None]
    kinds = [args.predictive] if args.predictive else []
    sbc = args.sbc or not kinds
    if given and not sbc:
        raise ConfigError(
            f"{', '.join(flag_of(n) for n in given)} set SBC, which --predictive alone does not "
            "run: add --sbc"
        )
    if not kinds and not args.sbc:
        kinds = ["posterior"]
    if not sbc:
        return kinds, None
    values = {n: d if getattr(args, n) is None else getattr(args, n) for n, d in SBC_FLAGS.items()}
    return kinds, {
        "num_simulations": values["num_simulations"],
        "num_draws": values["sbc_draws"],
        "num_proposals": values["sbc_proposals"],
    }


def advice(error: PyroVAEError) -> str:
    """The command-line fix for a library error, in flags ("" when there is none to add)."""
    if isinstance(error, UnsupportedDataError):
        unit = error.support in ("binary", "unit_interval", "open_unit_interval", "levels")
        if unit and (error.low < 0 or error.high > 1):  # not probabilities: real-valued data
            return SUPPORT_HINTS["real_valued"]
        return SUPPORT_HINTS.get(error.support, "")
    if isinstance(error, NonFiniteError) and error.cause == "model":
        # the data's own fault (unscaled, NaN) is said by the library; no flag changes it
        return "retrain with a smaller --lr, or a larger --scale-floor for a learned scale"
    return ""


def _join_launch(device_name: str) -> World:
    """This process's world: one process, or a rank of a torchrun launch (WORLD_SIZE > 1),
    joined to the others (its CUDA device is its local rank)."""
    world = world_from_env()
    if world.is_distributed:
        device = resolve_device(device_name)  # auto, cpu or cuda: never an indexed device
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        init_process_group(world, device)
    return world


def _launched(job, device_name: str, progress, *args, **kwargs):
    """``job(*args, **kwargs)`` on this process's world (:func:`_join_launch`), with progress on
    rank 0 only, the process group closed after it; None on the other ranks of a launch."""
    world = _join_launch(device_name)
    with _launch_left(world):
        return job(*args, progress=progress if world.is_main else "off", world=world, **kwargs)


@contextlib.contextmanager
def _launch_left(world: World):
    """Run the block, then close the process group of a launch (nothing for one process).

    Reference cycles keep the job's DistributedDataParallel wrapper, and through it the group,
    alive after the job: they are collected first (with the param store's parameters, which its
    gradient hooks hang on). Else the group's communication threads were torn down at
    interpreter exit, and a rank that had finished its work aborted ("terminate called without
    an active exception") in about half of the launches of ten epochs on this 2-core machine,
    failing the launch. After a job that ended normally every rank waits for the others first;
    after an error (a diverged run raises on every rank) this rank closes its end alone, as the
    others may never arrive.
    """
    try:
        yield
    except BaseException:
        _close_group(world, together=False)
        raise
    _close_group(world, together=True)


def _close_group(world: World, together: bool) -> None:
    if not world.is_distributed or not torch.distributed.is_initialized():
        return
    pyro.clear_param_store()
    gc.collect()
    if together:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _is_main_rank() -> bool:
    """False on ranks other than 0 of a launch, which print no errors (rank 0 does)."""
    try:
        return world_from_env().is_main
    except ConfigError:  # a launch's variables are broken: say so
        return True


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except PyroVAEError as e:
        hint = advice(e)
        text = e.render(_flag)
        message = " ".join(text.split())  # one line, whatever the message holds
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
    if not _is_main_rank():
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # nobody is reading stderr any more
        pass


if __name__ == "__main__":
    sys.exit(main())
