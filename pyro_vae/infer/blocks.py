"""Block-seeded importance sampling: each block of datapoints draws from a stream of its own.

:func:`~pyro_vae.infer.importance_log_likelihood` draws every datapoint's particles from one
random stream, in passes sized to the device's free memory, so its numbers depend on that
memory and on how the rows are split. Here the rows are cut into blocks of a fixed
``block_rows``, and block b draws from a stream seeded by ``(seed, b)`` in passes whose size
depends only on the block and K. A block's estimate is then the same wherever, and with
whatever else, it is computed: one process computing every block and W processes computing
every W-th block each (:func:`pyro_vae.distributed.sharded`) agree bit for bit.

Every estimator of :mod:`pyro_vae.infer` has a per-block form here: IWAE
(:func:`importance_estimator`), refined IWAE (:func:`refined_estimator`), AIS
(:func:`ais_estimator`), reverse AIS from known latents (:func:`reverse_ais_estimator`, BDMC's
upper bound) and the escalating estimator (:func:`auto_estimator`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
import torch

from pyro_vae.errors import PyroVAEError, library_name
from pyro_vae.infer.ais import (
    AISResult,
    ais_log_likelihood,
    latent_rows,
    reverse_ais_log_likelihood,
)
from pyro_vae.infer.escalate import AutoResult, auto_log_likelihood
from pyro_vae.infer.importance import ImportanceResult, importance_log_likelihood
from pyro_vae.infer.latent import LatentSpace
from pyro_vae.infer.refine import refined_log_likelihood

R = TypeVar("R", ImportanceResult, AISResult, AutoResult)

BLOCK_ROWS = 64
# Values (particles x rows x values per row) of one pass of a block: a fixed budget (not the
# free memory), so that the passes, and so the draws, are the same on every machine.
PASS_VALUES = 2**22


def num_blocks(num_rows: int, block_rows: int = BLOCK_ROWS) -> int:
    return -(-num_rows // block_rows)


def block_seed(seed: int, block: int, stream: int = 0) -> int:
    """The seed of block ``block``'s draws in an evaluation seeded ``seed`` (NumPy's
    SeedSequence: independent streams), in 0 .. 2**32 - 1. ``stream`` tells apart estimates
    of the same rows that must not share their draws (BDMC's two directions)."""
    entropy = [seed, block, 0x1B10C] + ([stream] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def by_blocks(
    estimator: Callable[[torch.Tensor], R],
    x: torch.Tensor,
    *,
    seed: int,
    blocks: Iterable[int] | None = None,
    block_rows: int = BLOCK_ROWS,
    stream: int = 0,
) -> dict[int, R]:
    """``estimator(rows)`` of each of the ``blocks`` of ``x`` (all when None): block b is rows
    ``b * block_rows`` up to ``(b + 1) * block_rows``, its draws from the stream
    :func:`block_seed` gives it. ``estimator`` must size its passes from its rows alone (not
    from free memory). The caller's random streams are left as they were."""
    total = num_blocks(x.shape[0], block_rows)
    wanted = range(total) if blocks is None else blocks
    devices = [x.device] if x.device.type == "cuda" else []
    out = {}
    with torch.random.fork_rng(devices=devices):
        for b in wanted:
            if not 0 <= b < total:
                raise ValueError(f"block {b} is outside the {total} blocks of the data")
            torch.manual_seed(block_seed(seed, b, stream))
            lo = b * block_rows
            rows = x[lo : lo + block_rows]
            try:
                out[b] = estimator(rows)
            except PyroVAEError as e:
                raise _in_rows(e, lo, lo + rows.shape[0]) from None
    return out


def _in_rows(error: PyroVAEError, lo: int, hi: int) -> PyroVAEError:
    """``error`` of the block of rows ``lo .. hi - 1``, its datapoints counted in all of x."""
    if isinstance(getattr(error, "datapoints", None), list):
        error.datapoints = [d + lo for d in error.datapoints]
    error.template = f"in rows {lo}-{hi - 1} (rows below counted from {lo}): {error.template}"
    error.args = (error.render(library_name),)
    return error


def importance_estimator(
    model: Callable, guide: Callable, *, num_samples: int, block_rows: int = BLOCK_ROWS, **kw
) -> Callable[[torch.Tensor], ImportanceResult]:
    """IWAE on one block, in passes sized by the block and K alone, log weights kept."""

    def estimator(rows: torch.Tensor) -> ImportanceResult:
        return importance_log_likelihood(
            model,
            guide,
            rows,
            num_samples=num_samples,
            chunk_size=_pass_draws(rows, num_samples, block_rows),
            batch_size=rows.shape[0],
            keep_log_weights=True,
            **kw,
        )

    return estimator


def _pass_draws(rows: torch.Tensor, num_samples: int, block_rows: int) -> int:
    """Draws per datapoint of one pass over a block: :data:`PASS_VALUES` values in all."""
    per_point = max(1, rows[0].numel())
    return max(1, min(num_samples, PASS_VALUES // (block_rows * per_point)))


def refined_estimator(
    model: Callable,
    guide: Callable,
    *,
    num_samples: int,
    max_plate_nesting: int | None = None,
    **settings,
) -> Callable[[torch.Tensor], ImportanceResult]:
    """Refined IWAE on one block (:func:`~pyro_vae.infer.refine.refined_log_likelihood`, its
    ``settings``): the block's rows refined together, log weights kept."""

    def estimator(rows: torch.Tensor) -> ImportanceResult:
        return refined_log_likelihood(
            model,
            guide,
            rows,
            num_samples=num_samples,
            keep_log_weights=True,
            max_plate_nesting=max_plate_nesting,
            **{**settings, "batch_size": rows.shape[0]},
        )

    return estimator


def auto_estimator(
    model: Callable,
    guide: Callable,
    *,
    num_samples: int,
    refine: dict | None = None,
    ais: dict | None = None,
    max_seconds: float | None = None,
    block_rows: int = BLOCK_ROWS,
    **kw,
) -> Callable[[torch.Tensor], AutoResult]:
    """The escalating estimator on one block
    (:func:`~pyro_vae.infer.escalate.auto_log_likelihood`, its ``kw``), each stage on the whole
    block at once. ``max_seconds`` counts from the estimator's making: a block starts its AIS
    stage only while some of it is left (the blocks' stages 1 and 2 always run)."""
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds

    def estimator(rows: torch.Tensor) -> AutoResult:
        n = rows.shape[0]
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
        return auto_log_likelihood(
            model,
            guide,
            rows,
            num_samples=num_samples,
            chunk_size=_pass_draws(rows, num_samples, block_rows),
            batch_size=n,
            refine={**(refine or {}), "batch_size": n},
            ais={**(ais or {}), "batch_size": n},
            max_seconds=left,
            **kw,
        )

    return estimator


def ais_estimator(
    model: Callable, guide: Callable, **settings
) -> Callable[[torch.Tensor], AISResult]:
    """AIS on one block, all of its rows in one batch."""

    def estimator(rows: torch.Tensor) -> AISResult:
        return ais_log_likelihood(model, guide, rows, batch_size=rows.shape[0], **settings)

    return estimator


def reverse_ais_estimator(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    latents: dict[str, torch.Tensor],
    *,
    max_plate_nesting: int | None = None,
    **settings,
) -> Callable[[torch.Tensor], AISResult]:
    """Reverse AIS (:func:`~pyro_vae.infer.ais.reverse_ais_log_likelihood`) on one block of
    ``x`` from its rows of ``latents``, all in one batch. It is called with the block's row
    indices (run it by blocks of ``torch.arange(len(x))``), since it needs the latents of the
    same rows."""

    def estimator(index: torch.Tensor) -> AISResult:
        first, stop = int(index[0]), int(index[-1]) + 1
        rows = x[first:stop]
        space = LatentSpace(model, guide, rows, max_plate_nesting=max_plate_nesting)
        return reverse_ais_log_likelihood(
            model,
            guide,
            rows,
            latent_rows(latents, space, first, stop, x.shape[0]),
            batch_size=stop - first,
            max_plate_nesting=space.max_plate_nesting,
            **settings,
        )

    return estimator


def block_importance(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_samples: int,
    seed: int,
    blocks: Iterable[int] | None = None,
    block_rows: int = BLOCK_ROWS,
    max_plate_nesting: int | None = None,
) -> dict[int, ImportanceResult]:
    """The importance-sampled estimates (with their log weights) of the ``blocks`` of ``x``
    (all when None), each drawn from its own stream (:func:`by_blocks`)."""
    estimator = importance_estimator(
        model,
        guide,
        num_samples=num_samples,
        block_rows=block_rows,
        max_plate_nesting=max_plate_nesting,
    )
    return by_blocks(estimator, x, seed=seed, blocks=blocks, block_rows=block_rows)


def joined(results: dict[int, R]) -> R:
    """Every block's estimate (ImportanceResult, AISResult or AutoResult), joined in block
    order."""
    parts = [results[b] for b in sorted(results)]
    return type(parts[0]).concat(parts)
