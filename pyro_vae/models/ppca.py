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


class TwoLevelPPCA:
    """Two stochastic layers, linear and Gaussian, with exact ``log_px`` and posteriors.

    z2 ~ N(0, I_d2), z1 | z2 ~ N(A z2 + a, t2 I_d1), x | z1 ~ N(W z1 + mu, s2 I_D): the shape of
    Burda et al.'s two-layer VAE, p(z2) p(z1|z2) p(x|z1), with linear maps. Then
    z1 ~ N(a, S1), S1 = A A^T + t2 I, and x ~ N(W a + mu, W S1 W^T + s2 I). The posterior
    factorises as the guide q(z1|x) q(z2|z1) does, since x is independent of z2 given z1:
    p(z1|x) = N(m1, P1) with P1 = (S1^-1 + W^T W / s2)^-1, m1 = P1 (S1^-1 a + W^T (x - mu) / s2),
    and p(z2|z1) = N(P2 A^T (z1 - a) / t2, P2) with P2 = (I + A^T A / t2)^-1.
    """

    def __init__(self, d2=2, d1=4, D=12, t2=0.3, s2=0.5, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.d2, self.d1, self.D, self.t2, self.s2 = d2, d1, D, t2, s2
        self.A = torch.randn(d1, d2, generator=g, dtype=dtype)
        self.a = torch.randn(d1, generator=g, dtype=dtype)
        self.W = torch.randn(D, d1, generator=g, dtype=dtype)
        self.mu = torch.randn(D, generator=g, dtype=dtype)
        self.dtype = dtype

    def _eye(self, n: int) -> torch.Tensor:
        return torch.eye(n, dtype=self.dtype)

    def sample_data(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z2 = torch.randn(n, self.d2, generator=g, dtype=self.dtype)
        z1 = z2 @ self.A.T + self.a
        z1 = z1 + torch.randn(n, self.d1, generator=g, dtype=self.dtype) * self.t2**0.5
        eps = torch.randn(n, self.D, generator=g, dtype=self.dtype) * self.s2**0.5
        return z1 @ self.W.T + self.mu + eps

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint."""
        S1 = self.A @ self.A.T + self.t2 * self._eye(self.d1)
        C = self.W @ S1 @ self.W.T + self.s2 * self._eye(self.D)
        return dist.MultivariateNormal(self.W @ self.a + self.mu, covariance_matrix=C).log_prob(x)

    def posterior_z1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(N, d1)`` and covariance ``(d1, d1)`` of p(z1|x)."""
        S1inv = torch.linalg.inv(self.A @ self.A.T + self.t2 * self._eye(self.d1))
        P1 = torch.linalg.inv(S1inv + self.W.T @ self.W / self.s2)
        m1 = (S1inv @ self.a + (x - self.mu) @ self.W / self.s2) @ P1.T
        return m1, P1

    def posterior_z2(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(..., d2)`` and covariance ``(d2, d2)`` of p(z2|z1) (= p(z2|z1, x))."""
        P2 = torch.linalg.inv(self._eye(self.d2) + self.A.T @ self.A / self.t2)
        return (z1 - self.a) @ (P2 @ self.A.T / self.t2).T, P2

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            top = dist.Normal(torch.zeros(self.d2, dtype=self.dtype), 1.0).to_event(1)
            z2 = pyro.sample("z2", top)
            z1 = pyro.sample("z1", dist.Normal(z2 @ self.A.T + self.a, self.t2**0.5).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.W.T + self.mu, self.s2**0.5).to_event(1), obs=x)

    def exact_guide(self, x: torch.Tensor) -> None:
        """q(z1|x) q(z2|z1) = p(z1|x) p(z2|z1): every importance weight equals p(x)."""
        m1, P1 = self.posterior_z1(x)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.MultivariateNormal(m1, covariance_matrix=P1))
            m2, P2 = self.posterior_z2(z1)
            pyro.sample("z2", dist.MultivariateNormal(m2, covariance_matrix=P2))

    def wrong_guide(self, x: torch.Tensor, shift: float = 0.5, inflate: float = 1.3) -> None:
        """Diagonal Gaussians in both layers, means shifted by ``shift`` posterior sds,
        scales inflated."""
        m1, P1 = self.posterior_z1(x)
        sd1 = P1.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(m1 + shift * sd1, inflate * sd1).to_event(1))
            m2, P2 = self.posterior_z2(z1)
            sd2 = P2.diagonal().sqrt()
            pyro.sample("z2", dist.Normal(m2 - shift * sd2, inflate * sd2).to_event(1))
