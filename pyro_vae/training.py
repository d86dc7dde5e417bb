"""Fitting a VAE with SVI: the epoch loop around :class:`~pyro_vae.infer.svi.DeviceSVI`.

The training split is one tensor on the training device; minibatches are indexed by a permutation
drawn on that device and, with dynamic binarisation, binarised there. The only host syncs are the
logged numbers (every ``log_every`` steps and once per epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch

from pyro_vae.distributed import (
    SINGLE,
    DistributedSVI,
    World,
    broadcast_permutation,
    check_shards,
    seed_rank,
    shard_bounds,
)
from pyro_vae.errors import DataError, TrainingDiverged
from pyro_vae.infer.importance import importance_log_likelihood
from pyro_vae.infer.optim import JointAdam
from pyro_vae.infer.rng import rng_state, set_rng_state
from pyro_vae.infer.svi import DeviceSVI
from pyro_vae.models.vae import VAE
from pyro_vae.progress import progress_bar

# Data with values beyond this magnitude are treated as unscaled when a loss becomes NaN.
DATA_SCALE_LIMIT = 1e3
# Rows of the training split transformed at once when they are checked against the likelihood.
_CHECKED_ROWS = 10_000
VALIDATION_SEED = 0  # the validation bound's draws, the same at every epoch


@dataclass(frozen=True)
class BetaSchedule:
    """KL weight with linear warm-up: ``beta * min(1, (step + 1) / warmup_steps)``.

    Starts at ``beta / warmup_steps`` (Pyro's scale must be positive) and reaches ``beta``.
    """

    beta: float = 1.0
    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.warmup_steps)


class EarlyStopping:
    """When training stops early: once the watched validation score (the jobs' validation L_K,
    :meth:`Trainer.validation_bound`) has not improved on its best for ``patience`` epochs (0:
    never). Its state goes into the checkpoint, so a resumed run stops where an uninterrupted
    one would."""

    def __init__(self, patience: int = 0):
        if patience < 0:
            raise ValueError(f"patience must be at least 0, got {patience}")
        self.patience = patience
        self.best = -math.inf
        self.best_epoch = 0

    @property
    def active(self) -> bool:
        return self.patience > 0

    def update(self, epoch: int, score: float) -> bool:
        """Record epoch ``epoch``'s validation score; whether it is the best so far."""
        if score > self.best:
            self.best, self.best_epoch = score, epoch
            return True
        return False

    def stops_after(self, epoch: int) -> bool:
        """Whether training stops once epoch ``epoch`` is done."""
        return self.active and epoch - self.best_epoch >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`state_dict`'s record; raises ValueError for one that is not
        such a record (a number where a number belongs, a best epoch of 0 or more)."""
        if state is None:
            return
        if not isinstance(state, dict) or set(state) != {"best", "best_epoch"}:
            raise ValueError(f"expected the keys best and best_epoch, got {state!r:.80}")
        best, epoch = state["best"], state["best_epoch"]
        if not isinstance(best, int | float) or isinstance(best, bool) or math.isnan(best):
            raise ValueError(f"best is {best!r:.40}, not a score")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"best_epoch is {epoch!r:.40}, not an epoch")
        self.best, self.best_epoch = float(best), epoch


class LRSchedule:
    """The learning rate over epochs, through torch's schedulers on the trainer's Adam.

    ``kind`` is ``"none"`` (constant), ``"cosine"`` (``CosineAnnealingLR``: from the
    configured rate to 0 over ``epochs``) or ``"plateau"`` (``ReduceLROnPlateau``: halved once
    the validation score has not improved for ``patience`` epochs). :meth:`step` is called
    after every epoch; the scheduler's state goes into the checkpoint (the rate itself is in
    the optimizer's), so a resumed run follows the same rates.
    """

    KINDS = ("none", "cosine", "plateau")

    def __init__(
        self,
        kind: str,
        optim: JointAdam,
        vae: VAE,
        *,
        epochs: int,
        patience: int = 5,
        factor: float = 0.5,
    ):
        if kind not in self.KINDS:
            raise ValueError(f"lr schedule must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.scheduler = None
        if kind == "none":
            return
        vae.register()  # into Pyro's param store, as model and guide do
        optimizer = optim.bind(vae.parameters())
        if kind == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        else:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=factor, patience=patience
            )

    @property
    def needs_score(self) -> bool:
        """Whether :meth:`step` needs the epoch's validation score."""
        return self.kind == "plateau"

    def step(self, score: float | None = None) -> None:
        if self.kind == "cosine":
            self.scheduler.step()
        elif self.kind == "plateau":
            self.scheduler.step(score)

    @property
    def lr(self) -> float | None:
        """The rate of the next epoch (None without a schedule)."""
        if self.scheduler is None:
            return None
        return float(self.scheduler.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


@dataclass(frozen=True)
class EpochStats:
    """One epoch's record. Objectives are in nats per datapoint."""

    epoch: int
    step: int
    beta: float
    train_objective: float  # mean beta-weighted ELBO of the epoch's minibatches (= ELBO at beta=1)
    val_elbo: float  # single-sample ELBO on the validation split, beta = 1
    seconds: float
    # the validation L_K that early stopping or the plateau schedule watched (None: none did)
    val_bound: float | None = None


class Trainer:
    """Fits a :class:`~pyro_vae.models.VAE` by SVI, one epoch at a time.

    Parameters
    ----------
    vae : VAE
        The model, already on the training device.
    train_x : Tensor
        Training data ``(N, D)`` on the training device, as stored.
    elbo : pyro.infer.ELBO
        The objective, e.g. :class:`~pyro_vae.infer.elbo.DeviceTrace_ELBO`.
    lr : float, optional
        Adam learning rate (for an Adam made here; give ``lr`` or ``optim``).
    optim : pyro.optim.PyroOptim, optional
        The optimiser, e.g. :func:`pyro_vae.build.build`'s (its state is saved and restored by
        :meth:`state_dict`).
    batch_size : int
        Minibatch size; the last minibatch of an epoch may be smaller.
    beta : BetaSchedule
        KL weight per step.
    transform : callable, optional
        Applied to every minibatch on the device before scoring, e.g. ``torch.bernoulli`` for
        dynamic binarisation (see :func:`pyro_vae.data.minibatch_transform`).
    val_x : Tensor, optional
        Validation data as scored (already binarised), on the device.
    log_every : int
        Steps between updates of the progress bar (each is one host sync).
    progress : bool or str
        ``True``/``"bar"``, ``"lines"`` or ``False``/``"off"``: see :mod:`pyro_vae.progress`.
    precision : torch.dtype, optional
        Precision of the networks in training steps (``torch.bfloat16``: mixed precision through
        :meth:`VAE.precision`); parameters, optimizer state and the validation ELBO stay float32.
    world : World, optional
        This process's rank among several (:mod:`pyro_vae.distributed`, after
        :func:`~pyro_vae.distributed.init_process_group`): each minibatch is split among the
        ranks, DistributedDataParallel averages their gradients, and every rank ends each step
        with the same parameters. One process (the default) trains as always.
    seed : int, optional
        With several ranks: the run's seed, from which each rank's noise is seeded at the start
        of every epoch (:func:`~pyro_vae.distributed.rank_seed`).
    """

    def __init__(
        self,
        vae: VAE,
        train_x: torch.Tensor,
        *,
        elbo: pyro.infer.ELBO,
        lr: float | None = None,
        optim: pyro.optim.PyroOptim | None = None,
        batch_size: int,
        beta: BetaSchedule | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        val_x: torch.Tensor | None = None,
        log_every: int = 50,
        progress: bool | str = False,
        precision: torch.dtype | None = None,
        world: World = SINGLE,
        seed: int | None = None,
    ):
        if (lr is None) == (optim is None):
            raise TypeError("give the Trainer either lr (for Adam) or optim")
        vae.check_param_store()
        check_training_data(vae, train_x, transform, val_x)
        self.data_abs_max = float(train_x.abs().max())
        self.precision = precision
        self.vae = vae
        self.train_x = train_x
        self.val_x = val_x
        self.batch_size = batch_size
        self.beta = beta or BetaSchedule()
        self.transform = transform
        self.log_every = log_every
        self.progress = progress
        self.optim = optim if optim is not None else JointAdam({"lr": lr})
        self.world = world
        self.seed = seed
        if world.is_distributed:
            if seed is None:
                raise TypeError("a distributed Trainer needs the run's seed")
            check_shards(train_x.shape[0], batch_size, world)
            self.svi = DistributedSVI(vae, self.optim, elbo, world)
        else:
            self.svi = DeviceSVI(vae.model, vae.guide, self.optim, loss=elbo)
        self.epoch = 0
        self.step = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_x.shape[0] / self.batch_size)

    def train_epoch(self) -> EpochStats:
        """One pass over the training data in a random order, then a validation ELBO."""
        start = time.perf_counter()
        n = self.train_x.shape[0]
        device = self.train_x.device
        if self.world.is_distributed:
            seed_rank(self.seed, self.world, self.epoch)
            perm = broadcast_permutation(n, device, self.world)
        else:
            perm = torch.randperm(n, device=device)
        bar = progress_bar(self.steps_per_epoch, f"epoch {self.epoch + 1}", "step", self.progress)
        with pyro.validation_enabled(False), bar:
            with self.vae.precision(self.precision):
                objective = self._run_steps(n, perm, bar)
            val_elbo = self.validation_elbo()
        self.epoch += 1
        return EpochStats(
            epoch=self.epoch,
            step=self.step,
            beta=self.beta(self.step - 1),
            train_objective=objective,
            val_elbo=val_elbo,
            seconds=time.perf_counter() - start,
        )

    def _run_steps(self, n: int, perm: torch.Tensor, bar) -> float:
        """The epoch's SVI steps; returns its mean training objective per datapoint."""
        total = torch.zeros((), device=perm.device)
        world = self.world
        for i in range(0, n, self.batch_size):
            index = perm[i : i + self.batch_size]
            weight = {}
            if world.is_distributed:  # this rank's shard, its loss weighted by W b_r / B
                lo, hi = shard_bounds(index.shape[0], world)
                weight = {"weight": world.size * (hi - lo) / index.shape[0]}
                index = index[lo:hi]
            xb = self.train_x[index]
            if self.transform is not None:
                xb = self.transform(xb)
            beta = self.beta(self.step)
            loss = self.svi.step(xb, index=index, num_data=n, beta=beta, **weight)
            total = total + loss
            self.step += 1
            bar.update()
            if self.step % self.log_every == 0:
                if world.is_distributed:  # every rank decides on the minibatch's loss
                    loss = loss.clone()
                    torch.distributed.all_reduce(loss)
                    loss = loss / world.size
                value = -float(loss) / n
                self._check_finite(value)
                bar.set_postfix(elbo=f"{value:.2f}", beta=f"{beta:.2f}")
        if world.is_distributed:  # the ranks' mean is the minibatches' loss
            torch.distributed.all_reduce(total)
            total = total / world.size
        objective = -float(total) / (self.steps_per_epoch * n)
        self._check_finite(objective)
        return objective

    def validation_elbo(self) -> float:
        """Mean single-sample ELBO (beta = 1) on the validation split, nats per datapoint."""
        return self._on_validation(1, lambda r: r.elbo.mean())

    def validation_bound(self, num_samples: int) -> float:
        """Mean L_K (the importance-sampled bound with K = ``num_samples``, beta = 1) on the
        validation split, nats per datapoint: what early stopping watches. Its draws are the
        same at every call (:data:`VALIDATION_SEED`), and leave training's stream as it was."""
        if self.val_x is None:
            return math.nan
        # the same draws at every epoch (common random numbers): epochs are compared without
        # the estimate's noise between them
        devices = [self.val_x.device] if self.val_x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(VALIDATION_SEED)
            return self._on_validation(num_samples, lambda r: r.log_px.mean())

    def _on_validation(self, num_samples: int, statistic) -> float:
        """``statistic`` of the importance estimate on the validation split (NaN without one);
        with several ranks, rank 0's value, sent to the others."""
        if self.val_x is None:
            return math.nan
        value = torch.zeros((), dtype=torch.float64, device=self.val_x.device)
        if self.world.is_main:
            result = importance_log_likelihood(
                self.vae.model,
                self.vae.guide,
                self.val_x,
                num_samples=num_samples,
                max_plate_nesting=1,
            )
            value = statistic(result)
        if self.world.is_distributed:
            value = value.to(torch.float64)
            torch.distributed.broadcast(value, src=0)
        return float(value)

    def _check_finite(self, value: float) -> None:
        if math.isfinite(value):
            return
        where = f"the ELBO became {value} at step {self.step} (epoch {self.epoch + 1})"
        if self.data_abs_max > DATA_SCALE_LIMIT:
            raise TrainingDiverged(
                f"{where}: the training data reach |x| = {self.data_abs_max:.3g}, far outside "
                "the scale the networks work in; standardise or rescale the data",
                cause="data",
                data_abs_max=self.data_abs_max,
            )
        raise TrainingDiverged(
            f"{where}; a smaller learning rate, or a larger floor on a learned likelihood "
            "scale, may help",
            cause="model",
            data_abs_max=self.data_abs_max,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: parameters, Adam state, RNG, counters."""
        return {
            "model": self.vae.state_dict(),
            "optim": self.optim.get_state(),
            "rng": rng_state(self.train_x.device),
            "epoch": self.epoch,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["model"])
        self.optim.set_state(state["optim"])
        set_rng_state(state["rng"], self.train_x.device)
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])


def check_training_data(
    vae: VAE,
    train_x: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    val_x: torch.Tensor | None = None,
) -> None:
    """Check the data against the VAE's likelihood once, before any step.

    Every training row is checked as the likelihood will score it: passed through ``transform``
    (e.g. dynamic binarisation) in blocks of rows, on forked random streams so that training
    draws stay as they were. Raises :class:`~pyro_vae.errors.DataError` (its subclass
    :class:`~pyro_vae.errors.UnsupportedDataError` for values outside the likelihood's support),
    also when ``transform`` itself refuses a block (e.g. ``torch.bernoulli`` on values outside
    [0, 1]).
    """
    if train_x.dim() != 2 or train_x.shape[0] == 0:
        raise DataError(
            f"training data must have shape (N, D) with N >= 1, got {tuple(train_x.shape)}"
        )
    if transform is None:
        vae.likelihood.check_data(train_x, "the training data")
    else:
        devices = [train_x.device] if train_x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for start in range(0, train_x.shape[0], _CHECKED_ROWS):
                block = train_x[start : start + _CHECKED_ROWS]
                what = f"rows {start}-{start + block.shape[0] - 1} of the training data"
                try:
                    scored = transform(block)
                except (RuntimeError, ValueError) as e:
                    text = str(e).strip().split("(Could this error message")[0].strip()
                    first = text.splitlines()[0] if text else type(e).__name__
                    lo, hi = float(block.min()), float(block.max())
                    raise DataError(
                        f"{what} (values in [{lo:.3g}, {hi:.3g}]) cannot be transformed as the "
                        f"likelihood needs: {first}"
                    ) from None
                vae.likelihood.check_data(scored, what)
    if val_x is not None:
        vae.likelihood.check_data(val_x, "the validation data")
