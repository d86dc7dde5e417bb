"""Plain PyTorch networks used by guides and decoders, with their precision declared, and the
network pieces that make them (``--net mlp``, ``--net conv``).

Every network of an encoder or decoder derives from :class:`Network`: its ``compute`` is the
network, and its ``forward`` runs ``compute`` in the precision its ``compute_dtype`` declares
(None: float32, as built). :meth:`pyro_vae.models.VAE.precision` sets that attribute for a block
(:func:`pyro_vae.models.networks_in`); nothing is swapped at run time.

A network piece (:class:`Networks`: :class:`MLPNetworks`, :class:`ConvNetworks`) is registered
like a prior or a guide (:mod:`pyro_vae.registry`'s ``NETWORKS``). It makes the guide's encoder
network (flattened data in, the guide's parameters out) and the decoder (z in, the likelihood's
parameters out, ``params_per_dim * data_dim`` of them in the likelihood's layout), so every
guide and likelihood works with every network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.options import option, parse_widths
from pyro_vae.pieces import BuildContext, Piece, PieceParams


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


# Every convolution halves the image (kernel 4, stride 2, padding 1: H -> floor(H / 2)); every
# transposed convolution doubles it back, one row or column added where H was odd.
KERNEL, STRIDE, PADDING = 4, 2, 1


def _chw(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image shape ``(H, W)`` or ``(C, H, W)``."""
    shape = tuple(image_shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ConfigError(
        f"{{model.net}} conv needs images, datapoints of shape (H, W) or (C, H, W); these have "
        f"shape {shape}: use {{model.net}} mlp"
    )


def conv_sizes(height: int, width: int, layers: int) -> list[tuple[int, int]]:
    """The image's ``(H, W)`` before each of ``layers`` halving convolutions, and after the last.

    Refused (:class:`~pyro_vae.errors.ConfigError`) when the image is too small for them."""
    sizes = [(height, width)]
    for _ in range(layers):
        h, w = sizes[-1]
        if h < 2 or w < 2:
            raise ConfigError(
                f"{layers} convolutions, each halving the image, do not fit {height}x{width} "
                f"images: give fewer {{model.channels}}",
                option="model.channels",
            )
        sizes.append((h // 2, w // 2))
    return sizes


class ConvEncoderNet(Network):
    """Flattened images ``(..., C*H*W)`` through convolutions that each halve the image (ReLU
    after each), then an MLP to ``out_features``.

    Parameters
    ----------
    image_shape : (H, W) or (C, H, W)
        The shape of one datapoint.
    channels : sequence of int
        Output channels of the convolutions, in order.
    hidden : sequence of int
        Hidden widths of the MLP after them.
    out_features : int
        Width of the output.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        hidden: Sequence[int],
        out_features: int,
    ):
        super().__init__()
        self.image_shape = _chw(image_shape)
        c, h, w = self.image_shape
        sizes = conv_sizes(h, w, len(channels))
        layers: list[nn.Module] = []
        for c_in, c_out in zip((c, *channels[:-1]), channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.dense = MLP([channels[-1] * math.prod(sizes[-1]), *hidden, out_features])
        self.in_features = c * h * w
        self.out_features = out_features

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = self.convs(x.reshape(-1, *self.image_shape))
        return self.dense(h.flatten(1)).reshape(*lead, self.out_features)


class ConvDecoderNet(Network):
    """z ``(..., latent_dim)`` through an MLP and transposed convolutions that each double the
    image back (the mirror of :class:`ConvEncoderNet`), to ``params_per_dim`` values per pixel
    and channel, flattened as the likelihood reads them: ``(..., params_per_dim * C*H*W)``, each
    parameter's image after the other.

    On a CPU the transposed convolutions run on ``channels_last`` activations, oneDNN's faster
    kernels there (``channels_last_on_cpu``; ``benchmarks/bench.py`` turns it off to measure
    the difference).
    """

    channels_last_on_cpu: bool = True

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        channels: Sequence[int],
        hidden: Sequence[int],
        params_per_dim: int,
    ):
        super().__init__()
        c, h, w = _chw(image_shape)
        sizes = conv_sizes(h, w, len(channels))
        self.start = (channels[-1], *sizes[-1])
        self.dense = MLP([latent_dim, *reversed(hidden), math.prod(self.start)])
        widths = (*reversed(channels), params_per_dim * c)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            extra = (h_out - STRIDE * h_in, w_out - STRIDE * w_in)
            layers += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, KERNEL, STRIDE, PADDING, extra)]
        self.deconvs = nn.Sequential(*layers)
        self.in_features = latent_dim
        self.out_features = params_per_dim * c * h * w

    def compute(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.dense(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)
        if self.channels_last_on_cpu and h.device.type == "cpu":
            # channels_last activations (docs/speed.md; not measured on a GPU, so not used
            # there): the same values, float sums in another order. The weights keep the default
            # layout: Pyro's param store would train a contiguous copy of one that is not
            # (VAE.check_param_store).
            h = h.contiguous(memory_format=torch.channels_last)
        return self.deconvs(h).reshape(*lead, self.out_features)


class Networks(Piece):
    """Base of the network pieces: what the guide's encoder and the decoder are made of.

    ``encoder(out_features)`` maps flattened datapoints ``(..., data_dim)`` to ``out_features``
    (the guide's parameters); ``decoder(out_features)`` maps z ``(..., latent_dim)`` to
    ``out_features = params_per_dim * data_dim`` (the likelihood's, in its layout). Both are
    :class:`Network` modules, made when asked (the guide asks first, the decoder last, the order
    that fixes their initial weights).
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int]):
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden = tuple(hidden)

    def params_per_dim(self, out_features: int) -> int:
        if out_features % self.data_dim:
            raise ValueError(
                f"a decoder of {out_features} outputs is not a whole number of parameters per "
                f"value of {self.data_dim}-value datapoints"
            )
        return out_features // self.data_dim

    def encoder(self, out_features: int) -> Network:  # pragma: no cover - abstract
        raise NotImplementedError

    def decoder(self, out_features: int) -> Network:  # pragma: no cover - abstract
        raise NotImplementedError


class MLPNetworks(Networks):
    """Multilayer perceptrons: the encoder ``data_dim -> hidden -> out``, the decoder
    ``latent_dim -> reversed(hidden) -> out``, with ReLU between layers."""

    @classmethod
    def build(cls, params: PieceParams, context: BuildContext) -> MLPNetworks:
        return cls(context.data_dim, context.latent_dim, context.hidden)

    def encoder(self, out_features: int) -> Network:
        return MLP([self.data_dim, *self.hidden, out_features])

    def decoder(self, out_features: int) -> Network:
        return MLP([self.latent_dim, *reversed(self.hidden), out_features])


class ConvNetworks(Networks):
    """Convolutional networks for images: the encoder halves the image with each of
    ``channels`` convolutions (kernel 4, stride 2, ReLU), then an MLP of widths ``hidden``; the
    decoder mirrors it (an MLP of the reversed widths, then transposed convolutions doubling
    the image back), the architecture of the DCGAN-style VAEs of pythae and Ghosh et al.'s
    benchmarks, without batch normalisation (it would make a datapoint's density depend on the
    others in its batch)."""

    @dataclass(frozen=True)
    class Params(PieceParams):
        channels: tuple[int, ...] = option(
            (32, 64),
            "output channels of the convolutions, each halving the image",
            parse=parse_widths,
            metavar="C,C",
        )

        def __post_init__(self) -> None:
            super().__post_init__()
            if not (len(self.channels) >= 1 and all(1 <= c <= 4096 for c in self.channels)):
                raise ConfigError(
                    f"must be one or more widths in 1..4096, got {self.channels}",
                    option="model.channels",
                )

    @classmethod
    def build(cls, params: Params, context: BuildContext) -> ConvNetworks:
        if context.image_shape is None:
            raise ConfigError(
                "{model.net} conv needs the data's image shape, which these data do not give"
            )
        return cls(context.image_shape, context.latent_dim, context.hidden, params.channels)

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int],
        channels: Sequence[int] = (32, 64),
    ):
        chw = _chw(image_shape)
        super().__init__(math.prod(chw), latent_dim, hidden)
        conv_sizes(chw[1], chw[2], len(channels))  # the image fits the convolutions
        self.image_shape = tuple(image_shape)
        self.channels = tuple(channels)

    def encoder(self, out_features: int) -> Network:
        return ConvEncoderNet(self.image_shape, self.channels, self.hidden, out_features)

    def decoder(self, out_features: int) -> Network:
        return ConvDecoderNet(
            self.latent_dim,
            self.image_shape,
            self.channels,
            self.hidden,
            self.params_per_dim(out_features),
        )
