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

    # The modules the model and the guide register with Pyro (``pyro.module``), by attribute.
    MODEL_PARTS: tuple[str, ...] = ("decoder", "prior", "likelihood")
    GUIDE_PARTS: tuple[str, ...] = ("encoder",)

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        name: str = "vae",
        *,
        top: Encoder | None = None,
    ):
        super().__init__()
        drawn = encoder if top is None else top  # the guide's module drawing the prior's latent
        if drawn.latent_dim != prior.latent_dim:
            raise ValueError(
                f"{'encoder' if top is None else 'q(z2|z)'} latent_dim {drawn.latent_dim} "
                f"!= prior latent_dim {prior.latent_dim}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.name = name

    @property
    def parts(self) -> tuple[str, ...]:
        """Every module the model and guide register with Pyro."""
        return self.GUIDE_PARTS + self.MODEL_PARTS

    def register(self, parts: tuple[str, ...] | None = None) -> None:
        """``pyro.module`` of ``parts`` (all by default), under this VAE's name, as the model
        and the guide do."""
        for part in self.parts if parts is None else parts:
            pyro.module(f"{self.name}.{part}", getattr(self, part))

    @property
    def latent_dim(self) -> int:
        """Dimension of z, the latent the encoder gives and the decoder reads."""
        return self.encoder.latent_dim

    @property
    def marginal_prior(self) -> Prior | None:
        """p(z) of the encoder's latent, when the model has one (not with a layer above)."""
        return self.prior

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
        self.register(self.MODEL_PARTS)
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
        self.register(self.GUIDE_PARTS)
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
        """Raise if Pyro's param store holds, or would hold, other tensors than this VAE's
        parameters under their names.

        ``pyro.module`` keeps the first tensor registered under a name: a second VAE with the same
        ``name`` in one process would be optimised through stale tensors and never learn. And the
        store keeps a contiguous copy of a parameter that is not contiguous (a convolution's
        weight in ``channels_last`` format): the optimiser would step the copy while the network
        computes with its own tensor, which would never learn either.
        """
        store = pyro.get_param_store()
        for part in self.parts:
            for pname, param in getattr(self, part).named_parameters():
                full = param_with_module_name(f"{self.name}.{part}", pname)
                if param.requires_grad and not param.is_contiguous():  # pyro.module skips frozen
                    raise ValueError(
                        f"parameter '{full}' is not contiguous (strides {param.stride()}): Pyro's "
                        "param store would train a contiguous copy of it, not the network's "
                        "tensor; keep parameters in the default memory format (activations may "
                        "be channels_last)"
                    )
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


class TwoLayerVAE(VAE):
    """Two stochastic layers (Burda et al. 2016's two-layer architecture):
    p(z2) p(z|z2) p(x|z) with q(z|x) q(z2|z).

    The pieces are those of :class:`VAE`, the prior now over the upper latent z2, plus two
    conditional Gaussians: ``transition``, p(z|z2), and ``upper``, q(z2|z) (each an
    :class:`~pyro_vae.models.guides.Encoder` of its input). The latent sites are "z2" and "z"
    (z is the layer the encoder gives and the decoder reads, as in the one-layer model), both
    in the data plate and both weighted by ``beta``.
    """

    MODEL_PARTS = ("decoder", "prior", "likelihood", "transition")
    GUIDE_PARTS = ("encoder", "upper")

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        transition: Encoder,
        upper: Encoder,
        name: str = "vae",
    ):
        super().__init__(encoder, decoder, prior, likelihood, name, top=upper)
        if transition.latent_dim != encoder.latent_dim:
            raise ValueError(
                f"p(z|z2) gives {transition.latent_dim} values, for a z of {encoder.latent_dim}"
            )
        self.transition = transition
        self.upper = upper

    @property
    def top_latent_dim(self) -> int:
        return self.prior.latent_dim

    @property
    def marginal_prior(self) -> None:
        return None

    def model(self, x, *, index=None, num_data=None, beta: float = 1.0) -> torch.Tensor:
        """p(z2) p(z|z2) p(x|z) for a batch ``x`` of shape ``(B, D)``."""
        self.register(self.MODEL_PARTS)
        with self._plate(x, index, num_data):
            with self._kl_weight(beta):
                z2 = pyro.sample("z2", self.prior())
                z = pyro.sample("z", self.transition(z2))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def guide(self, x, *, index=None, num_data=None, beta: float = 1.0) -> torch.Tensor:
        """q(z|x) q(z2|z) for a batch ``x`` of shape ``(B, D)``."""
        self.register(self.GUIDE_PARTS)
        with self._plate(x, index, num_data):
            with self._kl_weight(beta):
                z = pyro.sample("z", self.encoder(x))
                pyro.sample("z2", self.upper(z))
        return z

    def networks(self) -> list[nn.Module]:
        return super().networks() + [self.transition.net, self.upper.net]

    @torch.no_grad()
    def sample(self, n: int) -> Generated:
        """``n`` draws: z2 ~ p(z2), z ~ p(z|z2), x ~ p(x|z); ``z`` holds the lower latent."""
        z2 = self.prior().sample((n,))
        z = self.transition(z2).sample()
        p_x = self.likelihood(self.decoder(z))
        return Generated(z=z, mean=p_x.mean, sample=p_x.sample())
