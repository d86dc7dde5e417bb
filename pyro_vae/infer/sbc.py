"""Simulation-based calibration (SBC) of an amortised posterior q(z|x).

Talts, Betancourt, Simpson, Vehtari & Gelman (2018): for pairs simulated from the model,
z* ~ p(z), x ~ p(x|z*), z* is an exact draw from p(z|x). If q(z|x) = p(z|x), the rank of each
coordinate of z* among L independent draws from q(z|x),

.. math:: r = \\sum_{l=1}^{L} 1[z_l < z^*], \\qquad z_l \\sim q(z \\mid x),

is uniform on {0, ..., L}, whatever the model. A q too narrow (over-confident) puts z* in its
tails: ranks pile up at 0 and L, and central intervals of q cover z* less often than their level.
A q too wide (under-confident) puts z* in its middle: ranks pile up around L/2, intervals cover
too often. A q shifted away from the posterior skews the ranks. Averaged over x ~ p(x), this
checks q where the model puts its data, independently of log p(x).

With ``num_proposals`` K, the ranks are also taken among L draws resampled from K draws of q in
proportion to their importance weights p(x, z) / q(z|x) (sampling-importance-resampling, the
self-normalised posterior that the IWAE estimate of log p(x) uses); its draws approach p(z|x) as
K grows, when q covers the posterior. Its ranks say whether importance sampling from q repairs q's
miscalibration; a low effective sample size (``ess``) makes them over-confident (few distinct
draws).

Ranks are taken coordinate by coordinate in the unconstrained space of
:class:`~pyro_vae.infer.latent.LatentSpace` (every latent site of the model, flattened per
datapoint): ranks do not change under the monotone maps from constrained coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyro_vae.infer.latent import LatentSpace, simulate
from pyro_vae.infer.predictive import BLOCK_ELEMENTS
from pyro_vae.infer.traces import guess_max_plate_nesting
from pyro_vae.progress import progress_bar

LEVELS = (0.5, 0.9)  # central intervals whose coverage is reported
Z_LIMIT = 3.0  # a coverage or mean rank this many standard errors from its nominal is flagged


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the simulated latents among draws of q (and of the resampled posterior).

    Attributes
    ----------
    ranks : Tensor
        ``(N, D)`` integers in 0..L: the rank of each coordinate of each simulated latent among
        the L draws of q(z|x).
    num_draws : int
        L.
    names : tuple of str
        The D coordinates, ``"site[i]"``.
    resampled_ranks : Tensor or None
        ``(N, D)``: ranks among L draws resampled by importance weight from ``num_proposals``
        draws of q (None without resampling).
    num_proposals : int
        K of the resampling (0 without it).
    ess : Tensor or None
        ``(N,)``: the effective sample size ``1 / sum w^2`` of each row's K normalised weights.
    x : Tensor
        The simulated data.
    """

    ranks: torch.Tensor
    num_draws: int
    names: tuple[str, ...]
    resampled_ranks: torch.Tensor | None
    num_proposals: int
    ess: torch.Tensor | None
    x: torch.Tensor

    @property
    def num_simulations(self) -> int:
        return self.ranks.shape[0]


def coordinate_name(site: str, index: int) -> str:
    """How a latent coordinate is named wherever it is shown: ``z[8]``, the 9th of site z."""
    return f"{site}[{index}]"


def fractional_ranks(ranks: torch.Tensor, num_draws: int) -> torch.Tensor:
    """``(r + 1) / (L + 1)``: uniform on {1, ..., L+1} / (L+1) for calibrated ranks, so that the
    ECDF at k / (L+1) is k / (L+1) in expectation."""
    return (ranks.double() + 1.0) / (num_draws + 1)


def _inside(ranks: torch.Tensor, num_draws: int, level: float) -> torch.Tensor:
    mid = (ranks.double() + 0.5) / (num_draws + 1)
    return (mid - 0.5).abs() <= level / 2 + 1e-12


def coverage(ranks: torch.Tensor, num_draws: int, level: float) -> torch.Tensor:
    """``(D,)``: the share of simulations whose latent lies inside q's central ``level``
    interval, judged from the rank: the mid-rank ``(r + 1/2) / (L + 1)`` within ``level / 2`` of
    1/2. For calibrated ranks its expectation is :func:`nominal_coverage`, which equals
    ``level`` only when ``level (L + 1)`` and ``L + 1`` have the same parity (L = 99: 0.5 and
    0.9 exactly)."""
    return _inside(ranks, num_draws, level).double().mean(0)


def nominal_coverage(num_draws: int, level: float) -> float:
    """The expected :func:`coverage` of calibrated ranks (uniform on 0..L): the share of the
    L + 1 rank values inside the interval."""
    values = torch.arange(num_draws + 1)
    return _inside(values, num_draws, level).double().mean().item()


def chi2_uniformity(ranks: torch.Tensor, num_draws: int, num_bins: int = 20) -> torch.Tensor:
    """``(D,)`` p-values of Pearson's chi-square test that the ranks are uniform on 0..L, with
    the L+1 values in ``num_bins`` bins of consecutive ranks (Talts et al. 2018's histogram);
    each bin's expected count follows from the number of rank values it holds."""
    values = num_draws + 1
    bins = min(num_bins, values)
    which = torch.div(torch.arange(values) * bins, values, rounding_mode="floor")
    share = torch.bincount(which, minlength=bins).double() / values  # (B,)
    n = ranks.shape[0]
    bin_of = which.to(ranks.device)[ranks]  # (N, D)
    counts = torch.stack(
        [torch.bincount(bin_of[:, j], minlength=bins) for j in range(ranks.shape[1])], dim=1
    ).double()  # (B, D)
    expected = (share * n).unsqueeze(1).to(counts.device)
    stat = ((counts - expected) ** 2 / expected).sum(0)
    dof = torch.tensor((bins - 1) / 2.0, dtype=torch.float64)
    return torch.special.gammaincc(dof, stat.cpu() / 2.0)


def verdicts(ranks: torch.Tensor, num_draws: int, alpha: float = 0.01) -> list[str]:
    """A verdict per coordinate: what applies of

    - ``biased high`` / ``biased low``: the mean fractional rank lies :data:`Z_LIMIT` standard
      errors below / above 1/2 (q's draws mostly above / below the latent);
    - ``over-confident``: the central 90% interval covers the latent less often than its
      :func:`nominal_coverage` (0.9 when L + 1 is a multiple of 20) by more than
      :data:`Z_LIMIT` binomial standard errors (q too narrow, or shifted);
    - ``under-confident``: it covers more often by as much (q too wide);

    joined by ", " (a shifted q is biased and, its intervals missing, over-confident too); else
    ``miscalibrated`` when the chi-square test rejects uniformity at ``alpha`` divided by the
    number of coordinates (Bonferroni); else ``calibrated``.
    """
    n, d = ranks.shape
    cov = coverage(ranks, num_draws, 0.9)
    nominal = nominal_coverage(num_draws, 0.9)
    z_cov = (cov - nominal) / math.sqrt(max(nominal * (1 - nominal), 1e-12) / n)
    mid = (ranks.double() + 0.5) / (num_draws + 1)
    z_mean = (mid.mean(0).cpu() - 0.5) / math.sqrt((1.0 - 1.0 / (num_draws + 1) ** 2) / 12.0 / n)
    p = chi2_uniformity(ranks, num_draws)
    out = []
    for j in range(d):
        words = []
        if z_mean[j] < -Z_LIMIT:
            words.append("biased high")
        elif z_mean[j] > Z_LIMIT:
            words.append("biased low")
        if z_cov[j] < -Z_LIMIT:
            words.append("over-confident")
        elif z_cov[j] > Z_LIMIT:
            words.append("under-confident")
        if not words:
            words.append("miscalibrated" if p[j] < alpha / d else "calibrated")
        out.append(", ".join(words))
    return out


def simulation_based_calibration(
    model: Callable,
    guide: Callable,
    x_like: torch.Tensor,
    *,
    num_draws: int = 99,
    num_proposals: int = 0,
    max_plate_nesting: int | None = None,
    batch_size: int | None = None,
    progress: bool | str | None = False,
) -> SBCResult:
    """SBC ranks of ``x_like.shape[0]`` simulated latents among draws of ``guide``.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(x)`` and ``guide(x)``; every sample site in the data plate
        and one observed site (:func:`~pyro_vae.infer.latent.simulate`).
    x_like : Tensor
        Gives the number N of simulations and the data's shape, device and dtype (its values are
        ignored).
    num_draws : int
        L, draws of q per simulation (L + 1 rank values; 99 gives ranks in 100 equal steps).
    num_proposals : int
        K of the importance resampling (0: no resampling). K >> L is needed for the resampled
        draws to be nearly independent.
    batch_size : int, optional
        Simulations ranked at once (by default max(L, K) x rows x D within
        :data:`~pyro_vae.infer.predictive.BLOCK_ELEMENTS`, whatever the free memory, so that
        the same seed gives the same ranks on any machine).
    progress : bool, str or None
        Progress over the blocks of simulations (:mod:`pyro_vae.progress`).
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be at least 1, got {num_draws}")
    if num_proposals < 0:
        raise ValueError(f"num_proposals must be at least 0, got {num_proposals}")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, x_like)
    x, latents = simulate(model, x_like, max_plate_nesting=max_plate_nesting)
    space = LatentSpace(model, guide, x, max_plate_nesting=max_plate_nesting)
    truth = space.unconstrain({s.name: latents[s.name].unsqueeze(0) for s in space.sites})[0]
    names = tuple(coordinate_name(s.name, i) for s in space.sites for i in range(s.size))
    n = x.shape[0]
    per_row = max(num_draws, num_proposals) * max(1, x[0].numel())
    rows_at_once = batch_size or max(1, BLOCK_ELEMENTS // per_row)
    starts = range(0, n, rows_at_once)
    ranks, resampled, ess = [], [], []
    bar = progress_bar(len(starts), "SBC", "block", progress)
    with torch.no_grad(), bar:
        for start in starts:
            rows = torch.arange(start, min(n, start + rows_at_once), device=x.device)
            true_u = truth[rows]
            draws = space.sample_guide(num_draws, rows)  # (L, n, D)
            ranks.append((draws < true_u).sum(0).cpu())
            if num_proposals:
                r, e = _resampled_ranks(space, rows, true_u, num_draws, num_proposals)
                resampled.append(r)
                ess.append(e)
            bar.update()
    return SBCResult(
        ranks=torch.cat(ranks),
        num_draws=num_draws,
        names=names,
        resampled_ranks=torch.cat(resampled) if resampled else None,
        num_proposals=num_proposals,
        ess=torch.cat(ess) if ess else None,
        x=x,
    )


def _resampled_ranks(space: LatentSpace, rows, true_u, num_draws: int, num_proposals: int):
    """Ranks of ``true_u`` ``(n, D)`` among ``num_draws`` draws resampled (with replacement) by
    normalised importance weight from ``num_proposals`` draws of the guide; and the ESS."""
    proposals = space.sample_guide(num_proposals, rows)  # (K, n, D)
    joint = space.joint(proposals, rows, guide=True)
    log_w = joint.log_prior + joint.log_lik - joint.log_guide  # (K, n); the log|dz/du| cancel
    # a weight of zero (log -inf) is fine; NaN, +inf or no weight at all in a row are not
    bad = torch.isnan(log_w).any(0) | (log_w == math.inf).any(0) | (log_w == -math.inf).all(0)
    if bad.any():
        shown = rows[bad][:5].tolist()
        raise ValueError(
            f"simulations {shown} have importance weights that are NaN, infinite or all zero: "
            "their posterior cannot be resampled"
        )
    w = torch.softmax(log_w.double(), dim=0).T  # (n, K)
    ess = 1.0 / w.pow(2).sum(1)
    pick = torch.multinomial(w, num_draws, replacement=True)  # (n, L)
    chosen = proposals.gather(0, pick.T.unsqueeze(-1).expand(-1, -1, proposals.shape[-1]))
    return (chosen < true_u).sum(0).cpu(), ess.cpu()
