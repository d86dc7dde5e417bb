"""Diagnostics of an importance estimate and of the latent space, in torch (no files, no ArviZ).

* :func:`bounds_vs_k`: L_K for several K from ONE set of K_max draws, averaging L_K over the
  K_max // K disjoint blocks of K draws (Burda et al. 2016): the bound's rise with K in one pass.
* :func:`active_units`: a latent dimension is active when Cov_x(E_q[z_i | x]) > 0.01 (Burda et
  al. 2016): the guide's mean moves with the data. Collapsed dimensions carry no information.
* :func:`kl_per_dimension`: E_x KL(q(z_i|x) || p(z_i)) per dimension, for a factorised Gaussian
  guide and a standard normal prior (where it is defined in closed form).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pyro.distributions as dist
import torch

from pyro_vae.models.priors import StandardNormal

ACTIVE_UNIT_THRESHOLD = 0.01


def bounds_vs_k(log_weights: torch.Tensor, ks: Iterable[int]) -> dict[int, torch.Tensor]:
    """Per-datapoint L_K for each K in ``ks`` (at most K_max) from log weights (K_max, N)."""
    k_max, n = log_weights.shape
    out = {}
    for k in sorted(set(ks)):
        if not 1 <= k <= k_max:
            continue
        blocks = k_max // k
        lw = log_weights[: blocks * k].reshape(blocks, k, n)
        out[k] = (torch.logsumexp(lw, dim=1) - math.log(k)).mean(0)
    return out


def guide_means(q: dist.Distribution, num_samples: int = 64) -> torch.Tensor:
    """E_q[z | x] for each datapoint: exact where the family knows it, else a sample mean."""
    try:
        return q.mean
    except NotImplementedError:
        return q.sample((num_samples,)).mean(0)


def active_units(means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD):
    """(number of active dimensions, per-dimension variance across datapoints of E_q[z|x])."""
    variances = means.var(dim=0)
    return int((variances > threshold).sum()), variances


def kl_per_dimension(q: dist.Distribution, prior) -> torch.Tensor | None:
    """Mean over datapoints of KL(q(z_i|x) || N(0, 1)) per dimension, or None where undefined."""
    base = q.base_dist if isinstance(q, dist.Independent) else None
    if not isinstance(base, dist.Normal) or not isinstance(prior, StandardNormal):
        return None
    mu, var = base.loc, base.scale**2
    return (0.5 * (var + mu**2 - 1.0 - torch.log(var))).mean(0)
