"""A guide family that contains the exact posterior closes the ELBO gap on probabilistic PCA."""

import pyro
import pyro.optim

from pyro_vae.infer import DeviceSVI, DeviceTraceMeanField_ELBO, importance_log_likelihood
from pyro_vae.models import FullCovarianceEncoder, ProbabilisticPCA


def test_full_covariance_guide_reaches_the_exact_log_px():
    ppca = ProbabilisticPCA(d=3, D=8, s2=0.5)
    x = ppca.sample_data(400)
    # no hidden layer: the encoder is affine in x, as the exact posterior's mean is
    encoder = FullCovarianceEncoder(data_dim=8, latent_dim=3, hidden=()).double()

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", encoder(x))

    svi = DeviceSVI(
        ppca.model,
        guide,
        pyro.optim.Adam({"lr": 0.02}),
        DeviceTraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
    )
    before = importance_log_likelihood(ppca.model, guide, x, num_samples=200)
    for _ in range(1500):
        svi.step(x)
    after = importance_log_likelihood(ppca.model, guide, x, num_samples=200)
    exact = ppca.log_px(x)
    assert (before.log_px - before.elbo).mean() > 1.0  # an untrained guide leaves a gap
    assert (after.log_px - after.elbo).mean() < 0.02  # the gap (KL to the posterior) closes
    assert (after.log_px - exact).abs().mean() < 0.01
    assert after.ess.mean() > 0.95 * 200
