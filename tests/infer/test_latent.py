"""The per-datapoint latent space: supports that ``biject_to`` cannot map as they are."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import biject_to, constraints

from pyro_vae.infer.latent import LatentSpace, bijectable


def positive_mixture(batch_shape=(), event: bool = True) -> dist.MixtureSameFamily:
    """A mixture of three log-normals over R+^2 (``event``) or R+."""
    shape = (*batch_shape, 3, 2) if event else (*batch_shape, 3)
    components = dist.LogNormal(torch.zeros(shape), torch.ones(shape))
    if event:
        components = components.to_event(1)
    return dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(*batch_shape, 3)), components)


@pytest.mark.parametrize("event", [True, False], ids=["vector", "scalar"])
def test_a_mixture_support_maps_as_its_components_do(event):
    support = positive_mixture(event=event).support
    assert isinstance(support, constraints.MixtureSameFamilyConstraint)
    with pytest.raises(NotImplementedError):
        biject_to(support)
    unwrapped = bijectable(support)
    assert unwrapped.event_dim == support.event_dim == int(event)
    transform = biject_to(unwrapped)
    u = torch.randn(5, 2)
    torch.testing.assert_close(transform(u), u.exp())
    log_det = transform.log_abs_det_jacobian(u, u.exp())
    torch.testing.assert_close(log_det, u.sum(-1) if event else u)


def test_independent_constraints_keep_their_event_dims_around_an_unwrapped_base():
    wrapped = constraints.independent(positive_mixture(event=False).support, 1)
    unwrapped = bijectable(wrapped)
    assert isinstance(unwrapped, constraints.independent)
    assert unwrapped.reinterpreted_batch_ndims == 1 and unwrapped.event_dim == 1
    plain = constraints.independent(constraints.positive, 1)
    assert bijectable(plain) is plain


def test_a_positive_mixture_latent_is_mapped_through_exp_with_its_jacobian():
    """Constrained values are positive and log p(x, z) + log|dz/du| is the model's density
    at z plus sum(u)."""
    x = torch.randn(4, 2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", positive_mixture((x.shape[0],)))
            pyro.sample("x", dist.Normal(z.log(), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    space = LatentSpace(model, guide, x)
    u = torch.randn(3, 4, 2)
    values, log_det = space.constrain(u)
    torch.testing.assert_close(values["z"], u.exp())
    torch.testing.assert_close(log_det, u.sum(-1))
    joint = space.joint(u)
    z = u.exp()
    expected_prior = positive_mixture((4,)).log_prob(z)
    expected_lik = dist.Normal(u, 1.0).to_event(1).log_prob(x)
    torch.testing.assert_close(joint.log_prior, expected_prior)
    torch.testing.assert_close(joint.log_lik, expected_lik)
