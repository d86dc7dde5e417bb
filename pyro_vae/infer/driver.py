"""The one block driver: every estimate of log p(x) runs here, in seeded blocks of fixed size.

The rows of ``x`` are cut into blocks of the estimator's fixed ``block_rows`` (64 unless it
declares more: the refining estimators, whose per-datapoint optimisation runs a block's rows
together, take 256), and block b draws from a stream of its own, seeded by ``(seed, b)``
(:func:`block_seed`); within a block, an estimator plans its passes from the block's shape alone
(:mod:`pyro_vae.infer.passes`), never from the free memory. A block's estimate is therefore the
same wherever, and with whatever else, it is computed: one process computing every block and W
processes computing every W-th block each (:func:`pyro_vae.distributed.estimate`) agree bit for
bit on the same device, whatever memory is free.

Pyro draws from torch's global random stream, so the driver seeds that stream for each block
(inside ``torch.random.fork_rng``: the caller's streams are left as they were).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from pyro_vae.errors import PyroVAEError, library_name
from pyro_vae.infer.estimator import BlockContext, Estimator, LogZBlock, Settings
from pyro_vae.infer.traces import guess_max_plate_nesting
from pyro_vae.progress import progress_bar

BLOCK_ROWS = 64


def num_blocks(num_rows: int, block_rows: int = BLOCK_ROWS) -> int:
    return -(-num_rows // block_rows)


def block_seed(seed: int, block: int, stream: int = 0) -> int:
    """The seed of block ``block``'s draws in an estimate seeded ``seed`` (NumPy's
    SeedSequence: independent streams), in 0 .. 2**32 - 1. ``stream`` tells apart estimates
    of the same rows that must not share their draws (BDMC's two directions)."""
    entropy = [seed, block, 0x1B10C] + ([stream] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def run_blocks(
    estimator: Estimator,
    settings: Settings,
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    seed: int,
    blocks: Iterable[int] | None = None,
    stream: int = 0,
    max_plate_nesting: int | None = None,
    progress: bool | str | None = False,
) -> dict[int, LogZBlock]:
    """``estimator`` on each of the ``blocks`` of ``x`` (all when None), in blocks of its
    ``block_rows``, each block drawing from the stream :func:`block_seed` gives it; the results
    on the host, by block."""
    size = estimator.block_rows
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, x[:size])
    context = BlockContext(max_plate_nesting, time.perf_counter())

    def one_block(rows: torch.Tensor) -> LogZBlock:
        return estimator.run_block(model, guide, rows, settings, context).on_host()

    return by_blocks(
        one_block,
        x,
        seed=seed,
        blocks=blocks,
        stream=stream,
        progress=progress,
        desc=f"log p(x) {estimator.name}",
        block_rows=size,
    )


def by_blocks(
    function: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    *,
    seed: int,
    blocks: Iterable[int] | None = None,
    stream: int = 0,
    progress: bool | str | None = False,
    desc: str = "blocks",
    block_rows: int = BLOCK_ROWS,
) -> dict[int, object]:
    """``function(rows)`` of each of the ``blocks`` of ``x`` (all when None): block b is rows
    ``b * block_rows`` up to ``(b + 1) * block_rows``, drawing from the stream
    :func:`block_seed` gives it (the caller's streams are left as they were), with progress
    over datapoints. :func:`run_blocks` runs an estimator of the table so; BDMC's two
    directions of AIS run so directly."""
    total = num_blocks(x.shape[0], block_rows)
    wanted = list(range(total) if blocks is None else blocks)
    for b in wanted:
        if not 0 <= b < total:
            raise ValueError(f"block {b} is outside the {total} blocks of the data")
    devices = [x.device] if x.device.type == "cuda" else []
    rows_in_all = sum(min(block_rows, x.shape[0] - b * block_rows) for b in wanted)
    bar = progress_bar(total=rows_in_all, desc=desc, unit="datapoint", progress=progress)
    out = {}
    with bar, torch.random.fork_rng(devices=devices):
        for b in wanted:
            torch.manual_seed(block_seed(seed, b, stream))
            lo = b * block_rows
            rows = x[lo : lo + block_rows]
            try:
                out[b] = function(rows)
            except PyroVAEError as e:
                raise _in_rows(e, lo, lo + rows.shape[0]) from None
            bar.update(rows.shape[0])
    return out


def joined(results: dict[int, LogZBlock]) -> LogZBlock:
    """Every block's estimate joined in block order."""
    parts = [results[b] for b in sorted(results)]
    return type(parts[0]).concat(parts)


def _in_rows(error: PyroVAEError, lo: int, hi: int) -> PyroVAEError:
    """``error`` of the block of rows ``lo .. hi - 1``, its datapoints counted in all of x."""
    if isinstance(getattr(error, "datapoints", None), list):
        error.datapoints = [d + lo for d in error.datapoints]
    error.template = f"in rows {lo}-{hi - 1} (rows below counted from {lo}): {error.template}"
    error.args = (error.render(library_name),)
    return error
