"""The quadrature oracle for log p(x) with a 2-D latent, checked, then used to check IWAE.

The oracle (``tests/infer/quadrature.py``) is checked against probabilistic PCA's closed form,
including datapoints far in the tails and a sharply peaked posterior, and against its own
refinement on a trained VAE; the IWAE estimate of :func:`importance_log_likelihood` is then
checked against it: unbiased at large K within its error bar, below log p(x) and rising in K
at small K.
"""

import functools

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.infer import importance_log_likelihood
from pyro_vae.models.ppca import ProbabilisticPCA
from tests.infer.quadrature import (
    log_joint_from_model,
    quadrature,
    trained_2d_vae,
    trained_2d_vae_quadrature,
)

ACCURACY = 1e-4  # nats per datapoint, the oracle's claim


def _ppca_data_with_tails(ppca: ProbabilisticPCA) -> torch.Tensor:
    """Typical datapoints, then ones far in the tails: along the loadings (z far out, one
    outside the first box [-12, 12]^2), off them (a residual 8 sqrt(D) noise sds long), and both."""
    D = ppca.D
    g = torch.Generator().manual_seed(5)
    noise = ppca.s2**0.5 * torch.randn(4, D, generator=g, dtype=torch.float64)
    off = torch.randn(D, generator=g, dtype=torch.float64)
    off = off - ppca.W @ torch.linalg.lstsq(ppca.W, off[:, None]).solution[:, 0]  # orthogonal
    off = 8 * ppca.s2**0.5 * D**0.5 * off / off.norm()
    far = torch.tensor([[6.0, -7.0], [15.0, 3.0], [0.0, 0.0], [-5.0, 5.0]], dtype=torch.float64)
    tails = far @ ppca.W.T + ppca.mu + noise
    tails[2:] += off
    return torch.cat([ppca.sample_data(6, seed=2), tails])


@pytest.mark.parametrize(
    "D, s2",
    [(5, 0.5), (6, 1e-4), (3, 2.0)],
    ids=["moderate", "sharply-peaked", "prior-dominated"],
)
def test_quadrature_matches_ppca_closed_form(D, s2):
    ppca = ProbabilisticPCA(d=2, D=D, s2=s2, seed=3)
    x = _ppca_data_with_tails(ppca)
    exact = ppca.log_px(x)
    result = quadrature(log_joint_from_model(ppca.model, x), x.shape[0])
    assert result.log_px.dtype == torch.float64 and result.log_px.shape == (x.shape[0],)
    assert (result.log_px - exact).abs().max() < ACCURACY, (result.log_px - exact).tolist()
    assert (result.error < ACCURACY).all(), result.error.tolist()
    # the grid's posterior moments are the exact posterior's
    loc, cov = ppca.posterior(x)
    sd = cov.diagonal().sqrt()
    assert ((result.mean - loc).abs() / sd).max() < 1e-4
    assert ((result.cov - cov).abs() / sd.outer(sd)).max() < 1e-3
    if s2 == 1e-4:
        assert sd.max() < 0.01  # the posterior is sharply peaked, and it was resolved


def test_quadrature_is_not_fooled_by_a_coarse_grid():
    """Sanity of the error estimate: a grid too coarse for the posterior reports a larger error
    than its actual one, and the default grid beats it."""
    ppca = ProbabilisticPCA(d=2, D=6, s2=1e-4, seed=3)
    x = ppca.sample_data(4, seed=2)
    exact = ppca.log_px(x)
    lj = log_joint_from_model(ppca.model, x)
    coarse = quadrature(lj, x.shape[0], points=17, radius=20.0)
    actual = (coarse.log_px - exact).abs()
    assert actual.max() > 10 * ACCURACY  # the coarse rule is visibly off...
    assert (coarse.error >= actual).all()  # ...and says so


def test_log_joint_from_model_is_log_prior_plus_log_likelihood_without_scales():
    vae, x = trained_2d_vae()
    z = torch.randn(7, x.shape[0], 2, dtype=torch.float64)
    expected = vae.prior().log_prob(z) + vae.likelihood(vae.decoder(z)).log_prob(x)
    for beta in (1.0, 0.3):  # poutine.scale (the KL weight) is not part of log p(x, z)
        model = functools.partial(vae.model, beta=beta)
        got = log_joint_from_model(model, x)(z)
        assert got.shape == (7, x.shape[0]) and got.dtype == torch.float64
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    ppca = ProbabilisticPCA(d=2, D=4, s2=0.3)
    xp = ppca.sample_data(5)
    zp = torch.randn(3, 5, 2, dtype=torch.float64)
    expected = dist.Normal(0.0, 1.0).log_prob(zp).sum(-1)
    expected = expected + dist.Normal(zp @ ppca.W.T + ppca.mu, 0.3**0.5).log_prob(xp).sum(-1)
    assert torch.allclose(log_joint_from_model(ppca.model, xp)(zp), expected, atol=1e-12)


def test_grid_refinement_changes_the_trained_vae_answer_by_less_than_the_accuracy():
    vae, x = trained_2d_vae()
    reference = trained_2d_vae_quadrature()
    assert (reference.error < ACCURACY).all(), reference.error.tolist()
    # half the grid spacing, on a box placed and sized otherwise, for the least certain points
    rows = reference.error.argsort(descending=True)[:3]
    finer = quadrature(
        log_joint_from_model(vae.model, x[rows]), len(rows), points=1025, radius=10.0
    )
    change = (finer.log_px - reference.log_px[rows]).abs()
    assert change.max() < ACCURACY, change.tolist()
    assert (change <= reference.error[rows]).all()  # the error estimate bounds the change


def test_iwae_at_large_k_agrees_with_quadrature_within_its_error_bar():
    vae, x = trained_2d_vae()
    exact = trained_2d_vae_quadrature().log_px
    result = importance_log_likelihood(vae.model, vae.guide, x, num_samples=20000)
    diff = result.log_px - exact
    assert (diff.abs() <= 4 * result.stderr + 0.005).all(), (diff / result.stderr).tolist()
    n = x.shape[0]
    mean_stderr = result.stderr.pow(2).sum().sqrt() / n
    assert diff.mean().abs() <= 4 * mean_stderr + 0.002, (diff.mean(), mean_stderr)
    assert result.stderr.max() < 0.05  # a meaningful check: the error bars are small


def test_iwae_at_small_k_sits_below_quadrature_and_rises_with_k():
    vae, x = trained_2d_vae()
    exact = trained_2d_vae_quadrature().log_px
    repeats = 400
    gaps, errors = [], []
    for k in (1, 3, 10):
        result = importance_log_likelihood(
            vae.model, vae.guide, x.repeat(repeats, 1), num_samples=k
        )
        per_point = result.log_px.reshape(repeats, -1) - exact  # L_K - log p(x)
        if k == 1:
            assert torch.equal(result.log_px, result.elbo)  # L_1 is the single-sample ELBO
        # per datapoint, E[L_K] <= log p(x)
        point_se = per_point.std(0) / repeats**0.5
        assert (per_point.mean(0) <= 3 * point_se + 1e-3).all(), k
        gaps.append(per_point.mean())
        errors.append(per_point.mean(1).std() / repeats**0.5)  # over repeats of all datapoints
    gaps, errors = torch.stack(gaps), torch.stack(errors)
    assert (gaps < -3 * errors).all(), (gaps, errors)  # strictly below, on average
    assert gaps[0] < -0.1  # the guide is visibly wrong: a gap IWAE must close
    rises = gaps[1:] - gaps[:-1]
    assert (rises > 3 * (errors[1:] ** 2 + errors[:-1] ** 2).sqrt()).all(), (gaps, errors)
