"""The one pass planner: how many draws of how many datapoints one vectorised pass holds.

Every estimator holds, in one pass, some draws (particles, chains) of some datapoints, each draw
the size of a datapoint or more; the pass's size bounds its memory. The sizes here depend on the
shape of the data, the number of draws and the device's kind alone: never on the free memory,
so that the same seed gives the same draws on every machine (:mod:`pyro_vae.infer.driver` cuts
the data into blocks of fixed size, and the passes of a block depend on the block alone). A
caller that needs less memory gives smaller sizes explicitly.
"""

from __future__ import annotations

import torch

# Values (draws x rows x values per row) of one pass. On a CPU, 2**22 float32 values (16 MB
# tiles) stay near the cache; larger tiles made the importance estimator 1.6x slower
# (benchmarks/). A GPU takes larger passes: 2**26 values, 256 MB of float32.
PASS_VALUES = {"cpu": 2**22, "cuda": 2**26}
# The fewest draws per pass the planner gives where K allows: the guide's encoder runs once per
# pass, so tiny particle chunks over many datapoints would repeat it needlessly.
MIN_DRAWS_PER_PASS = 64


def pass_values(device: torch.device) -> int:
    """The values one pass holds on ``device`` (by its kind: :data:`PASS_VALUES`)."""
    return PASS_VALUES.get(device.type, PASS_VALUES["cpu"])


def plan_passes(
    x: torch.Tensor, num_draws: int, draws: int | None = None, rows: int | None = None
) -> tuple[int, int]:
    """Draws per pass and datapoints per pass for ``num_draws`` draws of each row of ``x``.

    Sizes not given keep a pass within :func:`pass_values` values (each draw of a datapoint
    counted as ``x[0].numel()`` values), drawing at least :data:`MIN_DRAWS_PER_PASS` draws per
    pass where ``num_draws`` allows. With ``draws`` alone, every datapoint is in each pass; with
    ``rows`` alone, the draws fill the budget.
    """
    n = x.shape[0]
    per_point = max(1, x[0].numel())
    budget = pass_values(x.device)
    if rows is None and draws is None:
        floor = max(1, min(MIN_DRAWS_PER_PASS, budget // per_point))  # within budget for 1 point
        k = min(num_draws, max(floor, budget // (n * per_point)))
        rows = max(1, min(n, budget // (k * per_point)))
    elif rows is None:
        rows = n
    if draws is None:
        draws = max(1, min(num_draws, budget // (min(rows, n) * per_point)))
    if draws < 1 or rows < 1:
        raise ValueError(f"draws and rows per pass must be at least 1, got {draws}, {rows}")
    return draws, min(rows, n)


def plan_blocks(x: torch.Tensor, num_draws: int, rows: int | None) -> list[tuple[int, int]]:
    """``(first, stop)`` row ranges of ``x`` for estimators that hold all ``num_draws`` draws
    (chains, particles) of every datapoint of a range at once: ``rows`` rows each, by default as
    many as keep a range within :func:`pass_values`."""
    n = x.shape[0]
    if rows is None:
        per_point = max(1, x[0].numel())
        rows = max(1, min(n, pass_values(x.device) // (num_draws * per_point)))
    if rows < 1:
        raise ValueError(f"batch_size must be at least 1, got {rows}")
    return [(s, min(n, s + rows)) for s in range(0, n, rows)]
