"""Block-seeded importance sampling: each block of datapoints draws from a stream of its own.

:func:`~pyro_vae.infer.importance_log_likelihood` draws every datapoint's particles from one
random stream, in passes sized to the device's free memory, so its numbers depend on that
memory and on how the rows are split. Here the rows are cut into blocks of a fixed
``block_rows``, and block b draws from a stream seeded by ``(seed, b)`` in passes whose size
depends only on the block and K. A block's estimate is then the same wherever, and with
whatever else, it is computed: one process computing every block and W processes computing
every W-th block each (:func:`pyro_vae.distributed.sharded_importance`) agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from pyro_vae.infer.importance import ImportanceResult, importance_log_likelihood

BLOCK_ROWS = 64
# Values (particles x rows x values per row) of one pass of a block: a fixed budget (not the
# free memory), so that the passes, and so the draws, are the same on every machine.
PASS_VALUES = 2**22


def num_blocks(num_rows: int, block_rows: int = BLOCK_ROWS) -> int:
    return -(-num_rows // block_rows)


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block``'s draws in an evaluation seeded ``seed`` (NumPy's
    SeedSequence: independent streams), in 0 .. 2**32 - 1."""
    return int(np.random.SeedSequence([seed, block, 0x1B10C]).generate_state(1)[0])


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
    (all when None): block b is rows ``b * block_rows`` up to ``(b + 1) * block_rows``, drawn
    from the stream :func:`block_seed` gives it. The caller's random streams are left as they
    were."""
    total = num_blocks(x.shape[0], block_rows)
    wanted = range(total) if blocks is None else blocks
    per_point = max(1, x[0].numel())
    chunk = max(1, min(num_samples, PASS_VALUES // (block_rows * per_point)))
    devices = [x.device] if x.device.type == "cuda" else []
    out = {}
    with torch.random.fork_rng(devices=devices):
        for b in wanted:
            if not 0 <= b < total:
                raise ValueError(f"block {b} is outside the {total} blocks of the data")
            torch.manual_seed(block_seed(seed, b))
            rows = x[b * block_rows : (b + 1) * block_rows]
            out[b] = importance_log_likelihood(
                model,
                guide,
                rows,
                num_samples=num_samples,
                chunk_size=chunk,
                batch_size=rows.shape[0],
                max_plate_nesting=max_plate_nesting,
                keep_log_weights=True,
            )
    return out


def joined(results: dict[int, ImportanceResult]) -> ImportanceResult:
    """Every block's estimate, joined in block order."""
    return ImportanceResult.concat([results[b] for b in sorted(results)])
