"""Running a VAE's networks in reduced precision (bfloat16), everything else in float32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pyro_vae.models.nets import Network


@contextlib.contextmanager
def networks_in(dtype: torch.dtype | None, modules: list[nn.Module]) -> Iterator[None]:
    """Within the block, each of ``modules`` and the :class:`~pyro_vae.models.nets.Network`
    modules inside them compute in ``dtype`` and return float32 (their ``compute_dtype``).
    Every module given must itself be a ``Network`` (e.g. an ``MLP``): a plain module would run
    only its inner networks in ``dtype`` and the rest of its layers in float32.

    Matrix products inside the networks use ``dtype`` (accumulating in float32); the
    distributions built from their outputs, the draws and every log-density stay float32. With
    ``dtype`` None or float32 nothing changes. The modules' parameters stay float32, so a model
    trained this way is evaluated exactly (float32) by leaving the block, which restores each
    network's earlier precision (blocks nest).
    """
    if dtype is None or dtype == torch.float32:
        yield
        return
    networks = []
    for module in modules:
        if not isinstance(module, Network):
            raise TypeError(
                f"{type(module).__name__} is not a pyro_vae Network (pyro_vae.models.nets): "
                "derive it from Network (or build it as an MLP) to run it in another precision"
            )
        networks += [m for m in module.modules() if isinstance(m, Network)]
    before = [net.compute_dtype for net in networks]
    try:
        for net in networks:
            net.compute_dtype = dtype
        yield
    finally:
        for net, old in zip(networks, before, strict=True):
            net.compute_dtype = old
