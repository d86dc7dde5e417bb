"""What every swappable piece (prior, likelihood, guide, objective) declares about itself, next
to its class.

A piece declares its hyperparameters once, as a frozen dataclass ``Params`` of options
(:func:`pyro_vae.options.option`), and says how it is built from them with :meth:`Piece.build`::

    class StudentT(Prior):
        @dataclass(frozen=True)
        class Params(PieceParams):
            df: float = option(3.0, "degrees of freedom of the Student-t prior", positive=True)

        def __init__(self, latent_dim: int, df: float = 3.0): ...

The registry (:mod:`pyro_vae.registry`) names the piece; the run config's fields for it (the
model section's for priors, likelihoods and guides, the training section's for objectives), the
``pyro-vae train`` flags, their help and defaults, and the checks of their values are all made
from these declarations. Pieces that declare a hyperparameter of the same name share it (one
field, one flag): their declarations must then agree on type, default and range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from pyro_vae.options import check_options


@dataclass(frozen=True)
class PieceParams:
    """Base of a piece's ``Params``: its fields are options of the config section ``section``
    (the model's for priors, likelihoods and guides; training's for objectives), checked when the
    dataclass is made (a bad value is a :class:`~pyro_vae.errors.ConfigError` naming
    ``SECTION.FIELD``)."""

    section: ClassVar[str] = "model"

    def __post_init__(self) -> None:
        check_options(self.section, self)


@dataclass(frozen=True)
class BuildContext:
    """What a piece is built for, besides its own hyperparameters.

    Attributes
    ----------
    data_dim : int
        Values per (flattened) datapoint.
    latent_dim : int
        Dimension of z.
    hidden : tuple of int
        Hidden widths of the encoder (the decoder's are reversed).
    levels : int, optional
        Quantisation levels of the data (8-bit images: 256); None for continuous data.
    encoder : nn.Module, optional
        The guide's encoder, for priors built from it (VampPrior); set once the guide is built.
    image_shape : tuple of int, optional
        The shape of one datapoint before it is flattened (``(H, W)`` for images), for networks
        that need it (convolutions); None when the data do not say.
    networks : Networks, optional
        The network piece (:class:`~pyro_vae.models.nets.Networks`) the guide and decoder are
        made of; set once it is built (guides without it use MLPs of ``hidden``).
    """

    data_dim: int
    latent_dim: int
    hidden: tuple[int, ...]
    levels: int | None = None
    encoder: nn.Module | None = None
    image_shape: tuple[int, ...] | None = None
    networks: Any = None


class Piece:
    """Mixin of the pieces' base classes: the ``Params`` a piece declares and its ``build``.

    A piece without hyperparameters declares nothing; one with hyperparameters overrides
    ``Params`` and, when its constructor takes other arguments than the base class's
    ``build`` passes, ``build``.
    """

    Params: ClassVar[type[PieceParams]] = PieceParams

    @classmethod
    def build(cls, params: PieceParams, context: BuildContext) -> Any:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def params_from(cls, values: Any) -> PieceParams:
        """This piece's ``Params`` with the values of the same names held by ``values`` (the
        model config, or any object with those attributes)."""
        return params_from(cls.Params, values)


def params_from(params: type[PieceParams], values: Any) -> PieceParams:
    """``params`` made of the values of its fields' names held by ``values`` (a config section,
    or any object with those attributes)."""
    return params(**{f.name: getattr(values, f.name) for f in dataclasses.fields(params)})


def params_dict(params: PieceParams) -> dict[str, Any]:
    """The hyperparameters as keyword arguments."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
