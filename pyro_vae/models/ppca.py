"""Probabilistic PCA: a linear-Gaussian latent-variable model whose answers are known exactly.

z ~ N(0, I_d), x = W z + mu + eps, eps ~ N(0, s^2 I_D). Then p(x) = N(mu, C) with
C = W W^T + s^2 I, and p(z|x) = N(M^-1 W^T (x - mu), s^2 M^-1) with M = W^T W + s^2 I
(Tipping & Bishop 1999). With the exact posterior as the guide every importance weight equals p(x),
so an estimator of log p(x) can be checked to machine precision; with a perturbed guide the IWAE
bounds L_K must rise towards the exact value as K grows.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


class ProbabilisticPCA:
    """A fixed, randomly drawn PPCA model with exact ``log_px`` and ``posterior``.

    Parameters
    ----------
    d, D : int
        Latent and data dimensions.
    s2 : float
        Noise variance s^2.
    seed : int
        Seed of the random loading matrix W and offset mu.
    """

    def __init__(self, d=5, D=20, s2=0.5, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.d, self.D, self.s2 = d, D, s2
        self.W = torch.randn(D, d, generator=g, dtype=dtype)
        self.mu = torch.randn(D, generator=g, dtype=dtype)
        self.dtype = dtype

    def sample_data(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.d, generator=g, dtype=self.dtype)
        eps = torch.randn(n, self.D, generator=g, dtype=self.dtype) * self.s2**0.5
        return z @ self.W.T + self.mu + eps

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint."""
        C = self.W @ self.W.T + self.s2 * torch.eye(self.D, dtype=self.dtype)
        return dist.MultivariateNormal(self.mu, covariance_matrix=C).log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(N, d)`` and covariance ``(d, d)`` of the exact posterior p(z|x)."""
        M = self.W.T @ self.W + self.s2 * torch.eye(self.d, dtype=self.dtype)
        Minv = torch.linalg.inv(M)
        return (x - self.mu) @ (Minv @ self.W.T).T, self.s2 * Minv

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(torch.zeros(self.d, dtype=self.dtype), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.s2**0.5).to_event(1), obs=x)

    def exact_guide(self, x: torch.Tensor) -> None:
        """q(z|x) = p(z|x): every importance weight equals p(x)."""
        loc, cov = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=cov))

    def wrong_guide(self, x: torch.Tensor, shift: float = 1.0, inflate: float = 1.2) -> None:
        """Diagonal Gaussian, mean shifted by ``shift`` posterior sds, scale inflated."""
        loc, cov = self.posterior(x)
        sd = cov.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + shift * sd, inflate * sd).to_event(1))
