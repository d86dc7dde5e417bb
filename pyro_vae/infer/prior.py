"""Importance sampling from the prior: the simplest estimator of log p(x), a sanity baseline.

With z_1..z_K ~ p(z), the weights are p(x, z_k) / p(z_k) = p(x | z_k), and

.. math:: \\log \\frac{1}{K} \\sum_{k=1}^K p(x \\mid z_k)

is a stochastic lower bound of log p(x) like any importance estimate, unbiased in p(x) but, for
a posterior much narrower than the prior (any real image model), with weights so heavy-tailed
that its k-hat is far above 0.7: it shows what the guide buys. The whole estimator is this
module and one line in :data:`pyro_vae.infer.estimators.ESTIMATORS` (docs/adding-a-piece.md).
"""

from __future__ import annotations

import time

import torch

from pyro_vae.infer.estimator import Estimator, ImportanceSettings, LogZBlock, from_weights
from pyro_vae.infer.importance import LogWeightAccumulator, guide_elbo
from pyro_vae.infer.latent import LatentSpace, check_data
from pyro_vae.infer.nonfinite import raise_if_not_finite
from pyro_vae.infer.passes import plan_passes


class Prior(Estimator):
    name = "prior"
    label = "importance sampling from the prior p(z), a sanity baseline"
    Settings = ImportanceSettings

    def run_block(self, model, guide, x, settings, context) -> LogZBlock:
        start = time.perf_counter()
        check_data(model, guide, x, context.max_plate_nesting)
        space = LatentSpace(model, guide, x, max_plate_nesting=context.max_plate_nesting)
        draws, _ = plan_passes(x, settings.num_samples, rows=x.shape[0])
        accumulator, kept = LogWeightAccumulator(), []
        with torch.no_grad():
            for first in range(0, settings.num_samples, draws):
                u = space.sample_prior(min(draws, settings.num_samples - first))
                log_w = space.joint(u).log_lik.double()  # log p(x | z) = log p(x, z) - log p(z)
                accumulator.update(log_w)
                kept.append(log_w)
        result = accumulator.result(torch.cat(kept))
        raise_if_not_finite(
            result.log_px,
            x,
            model=model,
            guide=guide,
            max_plate_nesting=context.max_plate_nesting,
            what="the prior's importance estimate of log p(x)",
        )
        elbo = guide_elbo(model, guide, x, context.max_plate_nesting)
        return from_weights(result, self.name, elbo=elbo, seconds=time.perf_counter() - start)
