"""Whether observed data lie in the support of their likelihood, checked before any estimate,
with a message that names the site, the rows and the fix."""

from __future__ import annotations

import math

import torch
from pyro.distributions import ExpandedDistribution, MaskedDistribution
from torch.distributions import Independent, constraints

from pyro_vae.errors import SUPPORT_ADVICE, UnsupportedDataError
from pyro_vae.infer.plates import data_plate
from pyro_vae.text import plural

_ROWS_SHOWN = 5  # datapoint indices listed in an error message


def rows_text(rows: list[int]) -> str:
    """``"row 3"``, ``"rows 3, 7"``, or ``"rows 3, 7, 9, 12, 15 and 40 more"``."""
    shown = ", ".join(str(r) for r in rows[:_ROWS_SHOWN])
    more = f" and {len(rows) - _ROWS_SHOWN} more" if len(rows) > _ROWS_SHOWN else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {shown}{more}"


def support_name(constraint: constraints.Constraint) -> str:
    """The name of a torch constraint in :class:`~pyro_vae.errors.UnsupportedDataError`:
    ``"binary"`` (boolean), ``"unit_interval"`` (interval(0, 1)), ``"open_unit_interval"`` (an
    open interval (0, 1)), ``"positive"`` (greater than 0), ``"real"``, or ``str(constraint)``
    for others. Independent constraints (from ``.to_event()``) are named by their base."""
    c = _base_constraint(constraint)
    if type(c) is type(constraints.boolean):
        return "binary"
    if type(c) is type(constraints.real):
        return "real"
    low, high = getattr(c, "lower_bound", None), getattr(c, "upper_bound", None)
    if type(c) is constraints.interval and _equals(low, 0) and _equals(high, 1):
        return "unit_interval"
    if type(c).__name__ == "_OpenInterval" and _equals(low, 0) and _equals(high, 1):
        return "open_unit_interval"
    if type(c) is constraints.greater_than and _equals(low, 0):
        return "positive"
    return str(c)


def _base_constraint(c: constraints.Constraint) -> constraints.Constraint:
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c


def _equals(bound, number: float) -> bool:
    try:
        return float(bound) == number
    except (TypeError, ValueError, RuntimeError):  # None, or a tensor of many bounds
        return False


def _distribution_name(fn) -> str:
    """``"Bernoulli"`` for ``Bernoulli(...).to_event(1)``, expanded or masked."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return type(fn).__name__


def check_observed_support(model_trace, rows: tuple[int, int] = (0, 0)) -> None:
    """Raise :class:`~pyro_vae.errors.UnsupportedDataError` if the value of an observed sample
    site of ``model_trace`` lies outside the support of its distribution.

    Each value is checked against the support's base constraint (elementwise for the usual
    ``.to_event()`` likelihoods), masked values included, with one host sync per observed site.
    Nothing is drawn and Pyro's validation is not involved. ``rows`` is ``(start, num_data)``:
    the row of the full data at which the traced block starts, and the number of rows in all,
    for the message.
    """
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        fn = site["fn"]
        try:
            support = fn.support
        except NotImplementedError:
            continue
        base = _base_constraint(support)
        if constraints.is_dependent(base):
            continue
        value = site["value"]
        ok = base.check(value)
        if bool(ok.all()):
            continue
        try:
            plate = data_plate(model_trace)
        except ValueError:  # the message then names no rows
            plate = None
        _raise_unsupported(name, site, base, ok, rows, plate)


def _raise_unsupported(
    name: str, site: dict, base, ok: torch.Tensor, rows: tuple[int, int], plate: str | None
):
    fn, value = site["fn"], site["value"]
    invalid = ~ok
    while invalid.dim() > value.dim() - base.event_dim:  # bounds with more batch dims than value
        invalid = invalid.any(0)
    count = int(invalid.sum())
    start, num_data = rows
    block = None
    frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
    if frame is not None:
        axis = value.dim() - fn.event_dim + frame.dim
        if 0 <= axis < invalid.dim():
            per_row = invalid.movedim(axis, 0).reshape(invalid.shape[axis], -1).any(1)
            block = (start, start + per_row.shape[0], (per_row.nonzero().flatten() + start))
    numbers = value.detach().double()
    nan = int(torch.isnan(numbers).sum())
    numbers = numbers[~torch.isnan(numbers)]
    low = float(numbers.min()) if numbers.numel() else math.nan
    high = float(numbers.max()) if numbers.numel() else math.nan
    key = support_name(base)
    words, fix = SUPPORT_ADVICE.get(
        key,
        (str(base), "transform the data into it or choose a likelihood whose support covers them"),
    )
    distribution = _distribution_name(fn)
    data, where, later = "the data", "", ""
    if block is not None:
        first, stop, bad_rows = block
        where = f" in {plural(len(bad_rows), 'datapoint')} ({rows_text(bad_rows.tolist())})"
        if first > 0 or stop < num_data:
            data = f"rows {first}-{stop - 1} of the data"
            later = " (later rows are not checked yet)" if stop < num_data else ""
    nans = ""
    if nan:
        data += " other than NaN"
        if key != "real":
            nans = f" ({nan} of them NaN)"
            fix = "remove or impute the NaN values" + (f"; {fix}" if count > nan else "")
    message = (
        f"the observed site '{name}' has a {distribution} distribution, whose support is {words}, "
        f"but {data} lie in [{low:.4g}, {high:.4g}], with {plural(count, 'value')}{nans}{where} "
        f"outside it{later}; {fix}"
    )
    raise UnsupportedDataError(
        message,
        what=f"the data observed at site '{name}'",
        distribution=distribution,
        support=key,
        low=low,
        high=high,
        num_invalid=count,
    )
