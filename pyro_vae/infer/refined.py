"""Refined importance sampling for Pyro programs (see :mod:`pyro_vae.infer.refine`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_vae.infer.importance import ImportanceResult, guess_max_plate_nesting, pass_budget
from pyro_vae.infer.latent import LatentSpace, check_data
from pyro_vae.infer.refine import GaussianProposal, proposal_log_likelihood, refine_gaussian
from pyro_vae.progress import progress_bar


def refined_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    widen: float = 1.1,
    init_samples: int = 256,
    num_particles: int = 16,
    lr: float = 0.02,
    max_steps: int = 1000,
    check_every: int = 50,
    patience: int = 3,
    objective: str = "elbo",
    batch_size: int | None = None,
    max_plate_nesting: int | None = None,
    keep_log_weights: bool = False,
    progress: bool | str | None = False,
) -> ImportanceResult:
    """Importance-sampled log p(x) per datapoint from a proposal refined for each datapoint.

    For a Pyro model/guide pair (as for :func:`~pyro_vae.infer.importance_log_likelihood`), each
    datapoint's latents are flattened to an unconstrained vector u
    (:class:`~pyro_vae.infer.latent.LatentSpace`). A full-covariance Gaussian is fitted to
    ``init_samples`` draws of the guide (:meth:`GaussianProposal.from_samples`: it works for any
    guide, and starts from the guide's mean and covariance), refined for the datapoint on its
    own by :func:`refine_gaussian`, widened by ``widen`` (heavier tails relative to the
    posterior: a prototype on Fashion-MNIST found 1.05-1.1 took the share of k-hat > 0.7 from
    1.8% to 0.0-0.2%), and used for K = ``num_samples`` fresh importance draws
    (:func:`proposal_log_likelihood`). The weights use the refined proposal's exact density in
    u-space and the target's log-Jacobian, so the estimate is a stochastic lower bound of
    log p(x), like the guide's own L_K.

    Parameters
    ----------
    num_samples : int
        K, importance draws per datapoint from the refined proposal.
    widen : float
        Factor on the refined proposal's scale (1: as refined).
    init_samples : int
        Guide draws per datapoint that set the initial proposal.
    num_particles, lr, max_steps, check_every, patience, objective
        Settings of :func:`refine_gaussian`.
    batch_size : int, optional
        Datapoints refined together; by default as many as keep ``num_particles`` draws of each
        within the importance estimator's pass budget.
    max_plate_nesting : int, optional
        Found from one trace when not given.
    keep_log_weights : bool
        Also return the final log weights ``(K, N)``.
    progress : bool, str or None
        Progress over blocks of datapoints (see :mod:`pyro_vae.progress`).

    Returns
    -------
    ImportanceResult
        As :func:`~pyro_vae.infer.importance_log_likelihood`'s, for the refined proposal
        (``elbo`` is the refined proposal's mean log weight).
    """
    if x.shape[0] < 1:
        raise ValueError("x holds no datapoints")
    if not widen > 0:
        raise ValueError(f"widen must be positive, got {widen}")
    if init_samples < 2:
        raise ValueError(f"init_samples must be at least 2, got {init_samples}")
    n = x.shape[0]
    if batch_size is None:
        per_point = max(1, x[0].numel())
        batch_size = max(1, min(n, pass_budget(x.device) // (num_particles * per_point)))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    blocks = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    bar = progress_bar(total=n, desc="refined log p(x)", unit="datapoint", progress=progress)
    parts = []
    with bar:
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(model, guide, x[: blocks[0][1]])
        for first, stop in blocks:
            xb = x[first:stop]
            check_data(model, guide, xb, max_plate_nesting, (first, n))
            space = LatentSpace(model, guide, xb, max_plate_nesting=max_plate_nesting)
            init = GaussianProposal.from_samples(space.sample_guide(init_samples))
            refined = refine_gaussian(
                space.log_target,
                init,
                num_particles=num_particles,
                lr=lr,
                max_steps=max_steps,
                check_every=check_every,
                patience=patience,
                objective=objective,
            )
            proposal = refined.proposal if widen == 1.0 else refined.proposal.widened(widen)
            parts.append(
                proposal_log_likelihood(
                    space.log_target, proposal, num_samples, keep_log_weights=keep_log_weights
                )
            )
            bar.update(stop - first)
    return ImportanceResult.concat(parts)
