"""The VAE as a Pyro program: ``model`` declares p(z) p(x|z), ``guide`` declares q(z|x)."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.params.param_store import param_with_module_name
from torch import nn

from pyro_vae.models.guides import Encoder
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.precision import networks_in
from pyro_vae.models.priors import Prior


class Generated(NamedTuple):
    """Draws from the generative model, labelled: ``mean`` is E[x|z] (a "mean image", not a
    sample); ``sample`` is x ~ p(x|z); ``z`` are the latent draws from p(z)."""

    z: torch.Tensor
    mean: torch.Tensor
    sample: torch.Tensor


class VAE(nn.Module):
    """A variational autoencoder whose pieces are objects.

    Parameters
    ----------
    encoder : Encoder
        The amortised guide family, ``encoder(x)`` -> q(z|x).
    decoder : nn.Module
        Maps z to the likelihood's parameters, of width
        ``likelihood.params_per_dim * data_dim``.
    prior : Prior
        ``prior()`` -> p(z).
    likelihood : Likelihood
        ``likelihood(decoder(z))`` -> p(x|z).
    name : str
        Prefix of this VAE's parameters in Pyro's param store.

    Notes
    -----
    Datapoints (rows of ``x``, shape ``(B, D)``) live in ``pyro.plate("data", num_data,
    subsample=index)``: with ``index`` the minibatch's indices into ``num_data`` points,
    the minibatch ELBO is an unbiased estimate of the full-data ELBO. The latent site "z" is scaled
    by ``beta`` in both model and guide (``poutine.scale``), which weights the KL term of the ELBO
    (the seeds' weighted-KL objective); ``beta=1`` is the true ELBO.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        name: str = "vae",
    ):
        super().__init__()
        if encoder.latent_dim != prior.latent_dim:
            raise ValueError(
                f"encoder latent_dim {encoder.latent_dim} != prior latent_dim {prior.latent_dim}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.name = name

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def _plate(self, x: torch.Tensor, index: torch.Tensor | None, num_data: int | None):
        if index is None:
            if num_data is not None and num_data != x.shape[0]:
                raise ValueError("num_data differs from the batch size: pass the batch's index too")
            return pyro.plate("data", x.shape[0], dim=-1)
        if index.shape[0] != x.shape[0]:
            raise ValueError(f"index has {index.shape[0]} entries for a batch of {x.shape[0]}")
        return pyro.plate("data", num_data or x.shape[0], subsample=index, dim=-1)

    @staticmethod
    def _kl_weight(beta: float):
        return contextlib.nullcontext() if beta == 1.0 else poutine.scale(scale=beta)

    def model(
        self,
        x: torch.Tensor,
        *,
        index: torch.Tensor | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """p(z) p(x|z) for a batch ``x`` of shape ``(B, D)``."""
        for name in ("decoder", "prior", "likelihood"):
            pyro.module(f"{self.name}.{name}", getattr(self, name))
        with self._plate(x, index, num_data):
            with self._kl_weight(beta):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def guide(
        self,
        x: torch.Tensor,
        *,
        index: torch.Tensor | None = None,
        num_data: int | None = None,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """q(z|x) for a batch ``x`` of shape ``(B, D)``."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with self._plate(x, index, num_data):
            with self._kl_weight(beta):
                return pyro.sample("z", self.encoder(x))

    def networks(self) -> list[nn.Module]:
        """The networks whose precision :meth:`precision` sets: the encoder's ``net`` and the
        decoder (their :class:`~pyro_vae.models.nets.Network` modules)."""
        net = getattr(self.encoder, "net", None)
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"{type(self.encoder).__name__} has no network '.net' to run in another precision"
            )
        return [net, self.decoder]

    def precision(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        """Context in which the encoder and decoder networks compute in ``dtype`` (e.g.
        ``torch.bfloat16``); distributions, draws and log-densities stay float32.

        ``None`` or ``torch.float32`` changes nothing. See :func:`networks_in`.
        """
        if dtype is None or dtype == torch.float32:
            return contextlib.nullcontext()
        return networks_in(dtype, self.networks())

    def check_param_store(self) -> None:
        """Raise if Pyro's param store holds other tensors under this VAE's parameter names.

        ``pyro.module`` keeps the first tensor registered under a name: a second VAE with the same
        ``name`` in one process would be optimised through stale tensors and never learn.
        """
        store = pyro.get_param_store()
        for part in ("encoder", "decoder", "prior", "likelihood"):
            for pname, param in getattr(self, part).named_parameters():
                full = param_with_module_name(f"{self.name}.{part}", pname)
                if full in store and store.get_param(full) is not param:
                    raise ValueError(
                        f"Pyro's param store already holds '{full}' from another module; call "
                        "pyro.clear_param_store() or give this VAE another name"
                    )

    @torch.no_grad()
    def sample(self, n: int) -> Generated:
        """Draw ``n`` points from the generative model: z ~ p(z), then x ~ p(x|z)."""
        z = self.prior().sample((n,))
        h = self.decoder(z)
        p_x = self.likelihood(h)
        return Generated(z=z, mean=p_x.mean, sample=p_x.sample())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder mean at the guide's mean latent, E[x | z = E_q[z|x]]."""
        return self.likelihood.mean(self.decoder(self.encoder(x).mean))
