"""The training objectives the registry names, each with its declared hyperparameters.

An objective is a Pyro ELBO class (:mod:`pyro_vae.infer`) with the options it takes from the
training section of the run config (:class:`Particles`, declared once here); the registry maps a
name to an :class:`Objective`, and ``pyro-vae train``'s flags for these options are made from
the declarations as for any piece (:mod:`pyro_vae.pieces`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.infer

from pyro_vae.infer.elbo import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO
from pyro_vae.infer.iwae_elbo import IWAE_ELBO
from pyro_vae.options import option
from pyro_vae.pieces import PieceParams, params_dict, params_from


@dataclass(frozen=True)
class Samples(PieceParams):
    """The number of particles: what every objective takes."""

    section = "train"

    num_particles: int = option(
        1, "samples of z per datapoint per step", low=1, high=100_000, metavar="K"
    )


@dataclass(frozen=True)
class Particles(Samples):
    """... and how Pyro's ELBOs draw them."""

    vectorize_particles: bool = option(
        True, "draw particles in a Python loop", negate="--no-vectorize-particles"
    )


@dataclass(frozen=True)
class Objective:
    """A registered objective: the ELBO class and the hyperparameters it is built with.

    ``make(**params, max_plate_nesting=1)`` is the ELBO; the VAE's datapoints sit in one plate.
    """

    make: Callable[..., pyro.infer.ELBO]
    Params: type[PieceParams]

    def build(self, params: PieceParams) -> pyro.infer.ELBO:
        return self.make(**params_dict(params), max_plate_nesting=1)

    def params_from(self, values) -> PieceParams:
        return params_from(self.Params, values)


TRACE = Objective(DeviceTrace_ELBO, Particles)
MEANFIELD = Objective(DeviceTraceMeanField_ELBO, Particles)
IWAE = Objective(IWAE_ELBO, Samples)
