"""Plain PyTorch networks used by guides and decoders."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """A multilayer perceptron: Linear layers with ``activation`` between them, none after the last.

    Parameters
    ----------
    sizes : sequence of int
        Input width, hidden widths, output width, e.g. ``(784, 512, 512, 100)``.
    activation : type of nn.Module
        Non-linearity between layers.
    """

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
