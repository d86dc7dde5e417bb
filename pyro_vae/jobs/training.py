"""Training a run and resuming it, in a claimed run directory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyro_vae import registry
from pyro_vae.build import build
from pyro_vae.config import RunConfig
from pyro_vae.distributed import SINGLE, World, broadcast_object
from pyro_vae.errors import CheckpointError, ConfigError, library_name, name_options
from pyro_vae.jobs.evaluation import check_log_weights_fit, evaluate, format_evaluation
from pyro_vae.jobs.loading import training_identity
from pyro_vae.models.likelihoods import GaussianLikelihood
from pyro_vae.records import Evaluation
from pyro_vae.runs import RunDir, is_temporary, metrics_from_state, metrics_state
from pyro_vae.text import plural
from pyro_vae.training import EarlyStopping, EpochStats, Trainer


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    history: list[EpochStats]
    evaluation: Evaluation | None


def train(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    evaluate_at_end: bool = True,
    progress: bool | str = False,
    echo: Callable[[str], None] | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Fit a VAE as ``config`` says, checkpointing into ``out`` after every epoch.

    With ``resume=True``, continue the run in ``out`` from its last checkpoint; the result equals
    an uninterrupted run with the same seed. Only the options in :data:`RESUMABLE` may differ from
    the run's saved config. The run directory is held exclusively while training runs: a second
    ``train`` into it raises :class:`~pyro_vae.errors.RunInUseError` at once.

    With ``world`` holding several ranks (a torchrun launch, :mod:`pyro_vae.distributed`), every
    rank trains its shard of each minibatch; rank 0 alone holds and checks the run directory,
    writes its files (the same ones, loadable by one process), echoes and evaluates, and sends a
    resumed run's checkpoint to the others. A rank that fails ends the launch (torchrun stops
    the others).
    """
    if echo is None:  # options named in a line ({train.epochs}) by their config paths
        echo = lambda text: print(name_options(text, library_name))  # noqa: E731
    run = RunDir(out)
    registry.check_names(config.model, config.train)
    if not world.is_main:  # rank 0 holds the directory and writes; the others only train
        return _train_claimed(run, config, resume, False, False, lambda text: None, world)
    if resume:
        run.require(checkpoint=False)  # before claiming, which creates the directory
    created = not run.path.exists()
    try:
        with run.claim():
            return _train_claimed(run, config, resume, evaluate_at_end, progress, echo, world)
    except BaseException:
        if created:
            run.remove_if_empty()  # a run that failed before its config was written
        raise


def _train_claimed(
    run: RunDir, config: RunConfig, resume, evaluate_at_end, progress, echo, world=SINGLE
):
    """:func:`train` in a run directory this process holds (:meth:`RunDir.claim`), or, on a
    rank other than 0, beside the rank that holds it (``writes`` False: no file is touched)."""
    writes = world.is_main
    if writes:
        if resume:
            _check_resumable(run.read_config(), config)
        elif run.exists():
            raise ConfigError(
                f"{run.path} already holds a run; continue it ({{args.resume}}) or choose another "
                "run directory ({args.out})"
            )
        else:
            _check_new_run_dir(run)
        run.check_writable()
    built = build(config, world=world)
    note = _fixed_scale_note(built.vae, built.splits["train"]) if not resume else None
    if note:
        echo(note)
    if config.train.elbo == "iwae" and config.train.num_particles == 1 and not resume:
        echo(
            "note: the IWAE bound with 1 particle is the ELBO itself: this run trains the ELBO "
            "(give {train.num_particles} K > 1 for the IWAE bound L_K)"
        )
    dataset = built.dataset
    k = registry.final_evaluation(config.train)["num_samples"]  # None: AIS, no log weights
    if evaluate_at_end and k is not None:  # before training, not after it
        check_log_weights_fit(k, dataset.split("test").shape[0])
    trainer = built.trainer(progress=progress, world=world)
    device = built.device
    meta = {
        "data_dim": dataset.data_dim,
        "image_shape": list(dataset.image_shape),
        "levels": dataset.levels,
    }
    history: list[EpochStats] = []
    stopping = EarlyStopping(config.train.patience)
    val = built.splits.get("val")
    if stopping.active and (val is None or val.shape[0] == 0):
        raise ConfigError(
            "{train.patience} stops on the validation ELBO, and these data have no validation split"
        )
    state = None
    if writes and resume and run.checkpoint_path.is_file():
        where = "cpu" if world.is_distributed else device  # sent to the other ranks from here
        state = run.load_checkpoint(training_identity(config), map_location=where)
    if world.is_distributed:
        state = broadcast_object(state, world)
    schedule = built.schedule
    if state is not None:
        _load_model_state(trainer, state)
        _load_training_state(run, stopping, schedule, state)
        if writes:
            history = _resumed_history(run, state, trainer.epoch)
    elif resume:
        _check_never_trained(run)
        echo(f"{run.path}: no epoch was finished; training from the beginning")

    def seconds_spent() -> float:
        """Training's time so far: the sum of the epochs' seconds, a resumed run's earlier
        ones included (on rank 0, which read them from metrics.csv)."""
        return sum(s.seconds for s in history)

    def out_of_time() -> bool:
        """Whether training's time (:func:`seconds_spent`) has reached ``train.max_seconds``."""
        limit = config.train.max_seconds
        return limit is not None and seconds_spent() >= limit

    def finished() -> bool:
        """Whether training is over: rank 0's decision, which a launch's other ranks receive (a
        collective call, which every rank makes at the same points: once before the first
        epoch and once after each)."""
        over = (
            trainer.epoch >= config.train.epochs
            or stopping.stops_after(trainer.epoch)
            or out_of_time()
        )
        return broadcast_object(over, world) if world.is_distributed else over

    def after_epoch(stats: EpochStats) -> bool:
        """The validation score (rank 0's, on every rank) to the schedule and early stopping,
        when they watch it, and into the epoch's record (appended to the history); whether
        this epoch is the best so far."""
        score = None
        if stopping.active or schedule.needs_score:
            score = trainer.validation_bound(config.train.stop_samples)
            stats = dataclasses.replace(stats, val_bound=score)
        history.append(stats)
        schedule.step(score)
        return stopping.active and stopping.update(trainer.epoch, score)

    if not writes:
        over = finished()
        while not over:
            after_epoch(trainer.train_epoch())
            over = finished()
        if _evaluates_after(world, None):  # with rank 0, in shared blocks
            evaluate(run.path, **registry.final_evaluation(config.train), world=world)
        return TrainResult(run.path, history, None)
    run.write_config(config)
    over = finished()
    if over:
        # the evaluation training would make (its method on the whole test split), of the checkpoint
        # it would score: an evaluation of an earlier epoch is stale, not done
        scored = stopping.best_epoch if stopping.active and run.best_path.is_file() else None
        done = [
            e
            for e in run.select_evaluations(
                split="test",
                precision="fp32",
                **registry.final_evaluation(config.train),
            )
            if e.evaluation.first is None
            and e.evaluation.epochs_trained == (scored or trainer.epoch)
        ]
        trained = f"already trained for {plural(trainer.epoch, 'epoch')} of {config.train.epochs}"
        if stopping.stops_after(trainer.epoch) and trainer.epoch < config.train.epochs:
            trained += f" (stopped early; best epoch {stopping.best_epoch})"
        elif out_of_time() and trainer.epoch < config.train.epochs:
            trained += (
                f" (stopped at its time budget of {config.train.max_seconds:g} s; a larger "
                "budget trains on)"
            )
        if evaluate_at_end and done:
            echo(f"{run.path}: {trained} and evaluated ({done[0].json_path})")
            _evaluates_after(world, False)
            return TrainResult(run.path, history, done[0].evaluation)
        echo(
            f"{run.path}: {trained}"
            + ("; running its missing evaluation" if evaluate_at_end else "")
        )
    report_every = max(1, config.train.epochs // 10)
    # with a time budget, also a line each time training passes another tenth of it
    tick = None if config.train.max_seconds is None else config.train.max_seconds / 10
    identity = training_identity(config)
    while not over:
        best = after_epoch(trainer.train_epoch())
        stats = history[-1]
        state = {
            **trainer.state_dict(),
            "meta": meta,
            "early_stopping": stopping.state_dict(),
            "lr_schedule": schedule.state_dict(),
            "metrics": metrics_state(history),  # metrics.csv's rows, should a crash lose them
        }
        if best:  # written first: a checkpoint names its best epoch only once best.pt holds it
            run.save_checkpoint(state, identity, best=True)
        run.save_checkpoint(state, identity)
        run.write_metrics(history)
        stops = stopping.stops_after(stats.epoch)
        timed_out = not stops and out_of_time() and stats.epoch < config.train.epochs
        final = stats.epoch == config.train.epochs or stops or timed_out
        spent = seconds_spent()
        ticked = tick is not None and spent // tick > (spent - stats.seconds) // tick
        if stats.epoch % report_every == 0 or final or ticked:
            rate = "" if schedule.lr is None else f"  lr {schedule.lr:.3g}"
            watched = (
                f"  val L_{config.train.stop_samples} {stats.val_bound:9.3f}"
                if stats.val_bound is not None
                else ""
            )
            echo(
                f"epoch {stats.epoch:4d}/{config.train.epochs}  train objective "
                f"{stats.train_objective:9.3f}  val ELBO {stats.val_elbo:9.3f} nats{watched}  "
                f"beta {stats.beta:.3g}{rate}  ({stats.seconds:.2f} s)"
            )
        if stops:
            echo(
                f"stopped early: the validation L_{config.train.stop_samples} has not improved "
                f"for {plural(stopping.patience, 'epoch')}; the best epoch, "
                f"{stopping.best_epoch} (val L_{config.train.stop_samples} "
                f"{stopping.best:.3f} nats), is kept in {run.best_path.name}"
            )
        if timed_out:
            echo(
                f"stopped at the time budget of {config.train.max_seconds:g} s: training took "
                f"{spent:.1f} s in {plural(stats.epoch, 'epoch')}"
            )
        over = finished()
    evaluation = None
    if _evaluates_after(world, evaluate_at_end):
        evaluation = evaluate(
            run.path, **registry.final_evaluation(config.train), progress=progress, world=world
        )
        echo(format_evaluation(evaluation))
    return TrainResult(run.path, history, evaluation)


# A fixed Gaussian scale this many times below the data's spread is worth a note.
FIXED_SCALE_RATIO = 5.0


def _fixed_scale_note(vae, x: torch.Tensor) -> str | None:
    """A note when a fixed-scale Gaussian likelihood's scale is far below the data's spread
    (standardised data under the default 0.1): log p(x) then measures reconstruction errors in
    units of that scale, lands hundreds of nats low, and PSIS flags most datapoints, with
    nothing else to say why."""
    likelihood = vae.likelihood
    if not isinstance(likelihood, GaussianLikelihood) or x.shape[0] < 2:
        return None
    spread = x[:10_000].double().std(dim=0).mean().item()
    scale = likelihood.scale.item()
    if not spread > FIXED_SCALE_RATIO * scale:
        return None
    return (
        f"note: the gaussian likelihood's fixed scale ({{model.gaussian_scale}} {scale:g}) is "
        f"small against the data's spread (each feature's sd is {spread:.3g} on average): "
        f"log p(x) counts every reconstruction error in units of {scale:g}, and most importance "
        "estimates will be flagged; {model.likelihood} gaussian-learned learns the scale"
    )


def _evaluates_after(world: World, decision: bool | None) -> bool:
    """Whether the run is evaluated now: rank 0's ``decision``, sent to every rank once rank 0
    has written the last checkpoint (the others read it to evaluate their blocks)."""
    if not world.is_distributed:
        return bool(decision)
    torch.distributed.barrier()
    return bool(broadcast_object(decision, world))


def _check_new_run_dir(run: RunDir) -> None:
    """A new run goes into a new or empty directory, not into another run's."""
    others = [  # a run killed before its config was written leaves temporaries: removed
        p.name for p in run.path.iterdir() if p.name != run.lock_path.name and not is_temporary(p)
    ]
    if others:
        raise ConfigError(
            f"{run.path} is not empty and holds no run ({', '.join(sorted(others)[:3])}"
            f"{', ...' if len(others) > 3 else ''}); choose a new or empty run directory "
            "({args.out})"
        )
    for parent in run.path.absolute().parents:
        if RunDir(parent).exists():
            raise ConfigError(
                f"{run.path} lies inside the run directory {parent}; choose a run directory "
                "({args.out}) outside it"
            )


def _check_resumable(saved: RunConfig, given: RunConfig) -> None:
    if given.train.lr_schedule == "cosine" and saved.train.epochs != given.train.epochs:
        raise ConfigError(
            f"the cosine schedule runs over the run's {{train.epochs}} ({saved.train.epochs}); "
            f"resume with the same {{train.epochs}}, not {given.train.epochs}"
        )
    a, b = training_identity(saved).to_dict(), training_identity(given).to_dict()
    diffs = [
        f"{section}.{key}: run has {a[section][key]!r}, asked for {b[section][key]!r}"
        for section in a
        for key in a[section]
        if a[section][key] != b[section][key]
    ]
    if diffs:
        raise ConfigError("cannot resume with different options: " + "; ".join(diffs))


def _load_training_state(run: RunDir, stopping: EarlyStopping, schedule, state) -> None:
    """Early stopping's and the schedule's state from the checkpoint, refused in one line when
    damaged."""
    try:
        stopping.load_state_dict(state.get("early_stopping"))
    except ValueError as e:
        raise CheckpointError(
            f"{run.checkpoint_path}: its early-stopping state is damaged ({e}); restore it from a "
            "backup or train again into a new run directory"
        ) from None
    try:
        schedule.load_state_dict(state.get("lr_schedule"))
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{run.checkpoint_path}: its learning-rate schedule's state is damaged ({first})"
        ) from None


def _resumed_history(run: RunDir, state: dict[str, Any], epoch: int) -> list[EpochStats]:
    """The records of the epochs up to the checkpoint's, which are written again at once.

    A checkpoint keeps the records with its state, so a crash after writing it and before
    metrics.csv loses no row; a checkpoint of an earlier version keeps none, and metrics.csv's
    rows (a torn tail dropped) are all there is."""
    saved = metrics_from_state(state.get("metrics"), run.checkpoint_path)
    if saved is None:
        rows = run.read_metrics(drop_damaged_tail=True)
        return [row for row in rows if row.epoch <= epoch]
    if len(saved) != epoch:
        raise CheckpointError(
            f"{run.checkpoint_path} holds {plural(len(saved), 'epoch record')} for epoch {epoch}; "
            "restore it from a backup or train again into a new run directory"
        )
    if run.read_metrics(drop_damaged_tail=True) != saved:
        run.write_metrics(saved)
    return saved


def _check_never_trained(run: RunDir) -> None:
    """Refuse to start a run again from the beginning when its files say it had trained: its
    checkpoint is missing, not yet written."""
    rows = run.read_metrics(drop_damaged_tail=True)
    kept = [
        what
        for what, there in (
            (f"metrics.csv records {plural(len(rows), 'epoch')}", rows),
            (f"{run.best_path.name} exists", run.best_path.is_file()),
            ("it holds evaluations", run.evaluations_dir.is_dir() and run.evaluations()),
        )
        if there
    ]
    if kept:
        raise CheckpointError(
            f"{run.path} has no {run.checkpoint_path.name}, but {' and '.join(kept)}: its "
            "checkpoint was deleted or lost. Restore it from a backup, or train again into a new "
            "run directory"
        )


def _load_model_state(trainer: Trainer, state: dict[str, Any]) -> None:
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint does not match its run's model: {first}") from None
