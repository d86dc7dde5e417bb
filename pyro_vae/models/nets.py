"""Plain PyTorch networks used by guides and decoders, with their precision declared.

Every network of an encoder or decoder derives from :class:`Network`: its ``compute`` is the
network, and its ``forward`` runs ``compute`` in the precision its ``compute_dtype`` declares
(None: float32, as built). :meth:`pyro_vae.models.VAE.precision` sets that attribute for a block
(:func:`pyro_vae.models.networks_in`); nothing is swapped at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Network(nn.Module):
    """Base of the encoders' and decoders' networks: subclasses implement ``compute``.

    With ``compute_dtype`` set to a reduced precision (``torch.bfloat16``), ``forward`` runs
    ``compute`` under ``torch.autocast`` to it and returns float32: matrix products use that
    precision (accumulating in float32), while the parameters and everything built from the
    output (distributions, draws, log-densities) stay float32.
    """

    compute_dtype: torch.dtype | None = None

    def compute(self, *args, **kwargs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, *args, **kwargs) -> torch.Tensor:
        dtype = self.compute_dtype
        if dtype is None:
            return self.compute(*args, **kwargs)
        device_type = next(self.parameters()).device.type
        if dtype == torch.float32:  # float32 even inside another network's reduced precision
            with torch.autocast(device_type=device_type, enabled=False):
                return self.compute(*args, **kwargs)
        with torch.autocast(device_type=device_type, dtype=dtype):
            out = self.compute(*args, **kwargs)
        return out.float()


class MLP(Network, nn.Sequential):
    """A multilayer perceptron: Linear layers with ``activation`` between them, none after the last.

    Parameters
    ----------
    sizes : sequence of int
        Input width, hidden widths, output width, e.g. ``(784, 512, 512, 100)``.
    activation : type of nn.Module
        Non-linearity between layers.
    """

    compute = nn.Sequential.forward

    def __init__(self, sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU):
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs an input and an output size, got {list(sizes)}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i > 0:
                layers.append(activation())
            layers.append(nn.Linear(n_in, n_out))
        super().__init__(*layers)
        self.in_features = sizes[0]
        self.out_features = sizes[-1]
