import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.errors import DataError
from pyro_vae.models import (
    BernoulliLikelihood,
    DiagonalNormalEncoder,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
)
from tests.helpers import binary_data, tiny_vae


def test_guide_scale_is_exp_half_log_var_of_the_encoder():
    """Catches the seeds' bug, exp(0.5 ** log_var) instead of exp(0.5 * log_var)."""
    vae = tiny_vae()
    x = binary_data()
    loc, log_var = vae.encoder.params(x)
    trace = poutine.trace(vae.guide).get_trace(x)
    q = trace.nodes["z"]["fn"]
    torch.testing.assert_close(q.base_dist.scale, torch.exp(0.5 * log_var))
    torch.testing.assert_close(q.base_dist.loc, loc)
    assert not torch.allclose(torch.exp(0.5 * log_var), torch.exp(0.5**log_var))


def test_encoder_output_shapes():
    enc = DiagonalNormalEncoder(data_dim=12, latent_dim=3, hidden=(8, 8))
    q = enc(torch.rand(5, 12))
    assert q.batch_shape == (5,) and q.event_shape == (3,)


def test_model_and_guide_traces_have_matching_sites_in_the_data_plate():
    vae = tiny_vae()
    x = binary_data(7)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, guide_trace)).get_trace(x)
    assert model_trace.nodes["x"]["is_observed"]
    assert model_trace.nodes["z"]["value"] is guide_trace.nodes["z"]["value"]
    for site in ("x", "z"):
        frames = model_trace.nodes[site]["cond_indep_stack"]
        assert [f.name for f in frames] == ["data"] and frames[0].dim == -1
    model_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape == (7,)


def test_subsampled_plate_scales_a_minibatch_to_the_full_data_set():
    vae = tiny_vae()
    x = binary_data(5)
    index = torch.arange(5)
    trace = poutine.trace(vae.model).get_trace(x, index=index, num_data=50, beta=0.25)
    assert trace.nodes["x"]["scale"] == pytest.approx(10.0)
    assert trace.nodes["z"]["scale"] == pytest.approx(10.0 * 0.25)  # beta scales only z
    guide_trace = poutine.trace(vae.guide).get_trace(x, index=index, num_data=50, beta=0.25)
    assert guide_trace.nodes["z"]["scale"] == pytest.approx(2.5)


def test_num_data_without_index_is_an_error():
    with pytest.raises(ValueError, match="index"):
        tiny_vae().model(binary_data(5), num_data=50)


def test_sample_returns_labelled_means_and_samples():
    vae = tiny_vae()
    drawn = vae.sample(9)
    assert drawn.z.shape == (9, 3) and drawn.mean.shape == (9, 12)
    assert ((drawn.sample == 0) | (drawn.sample == 1)).all()  # a Bernoulli sample is binary
    assert ((drawn.mean > 0) & (drawn.mean < 1)).all()  # its mean is a probability, not a sample


def test_bernoulli_rejects_grey_values_with_a_hint():
    with pytest.raises(DataError, match="binarise the data"):
        BernoulliLikelihood().check_data(torch.tensor([[0.0, 0.5, 1.0]]))
    BernoulliLikelihood().check_data(torch.tensor([[0.0, 1.0]]))


def test_likelihoods_reject_nan():
    for lik in (BernoulliLikelihood(), GaussianLikelihood(0.1), LearnedGaussianLikelihood(0.01)):
        with pytest.raises(DataError, match="NaN"):
            lik.check_data(torch.tensor([[0.0, float("nan")]]))


def test_gaussian_log_prob_keeps_the_normalising_constant():
    lik = GaussianLikelihood(0.5)
    x = torch.zeros(1, 4)
    expected = -0.5 * 4 * torch.log(torch.tensor(2 * torch.pi * 0.25))
    torch.testing.assert_close(lik(torch.zeros(1, 4)).log_prob(x), expected.reshape(1))


def test_learned_gaussian_scale_never_falls_below_the_floor():
    lik = LearnedGaussianLikelihood(floor=0.05)
    h = torch.cat([torch.zeros(2, 3), torch.full((2, 3), -1e4)], dim=-1)
    p = lik(h)
    assert p.event_shape == (3,)
    assert (p.base_dist.scale >= 0.05).all()
    torch.testing.assert_close(p.base_dist.scale, torch.full((2, 3), 0.05))


def test_two_vaes_with_one_name_are_caught():
    first = tiny_vae()
    first.guide(binary_data())
    with pytest.raises(ValueError, match="param store"):
        tiny_vae().check_param_store()
    pyro.clear_param_store()
    tiny_vae().check_param_store()
