"""Running a VAE's networks in reduced precision (bfloat16), everything else in float32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def networks_in(dtype: torch.dtype | None, modules: list[nn.Module]) -> Iterator[None]:
    """Within the block, each module's forward runs under ``torch.autocast`` to ``dtype`` and
    returns float32.

    Matrix products inside the networks use ``dtype`` (accumulating in float32); the
    distributions built from their outputs, the draws and every log-density stay float32. With
    ``dtype`` None or float32 nothing changes. The modules' parameters stay float32, so a model
    trained this way is evaluated exactly (float32) by leaving the block.
    """
    if dtype is None or dtype == torch.float32:
        yield
        return
    patched = []
    try:
        for module in modules:
            if "forward" in vars(module):
                raise RuntimeError(f"{type(module).__name__}.forward is already patched")
            module.forward = _autocast_forward(module.forward, module, dtype)
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def _autocast_forward(forward, module: nn.Module, dtype: torch.dtype):
    def run(*args, **kwargs):
        device_type = next(module.parameters()).device.type
        with torch.autocast(device_type=device_type, dtype=dtype):
            out = forward(*args, **kwargs)
        return out.float()

    return run
