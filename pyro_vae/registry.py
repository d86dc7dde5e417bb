"""The one place where names (from the command line and config.json) become objects.

To add a prior, likelihood, guide or network: write its class (with its ``Params``, see
:mod:`pyro_vae.pieces`), then add one entry here. Its hyperparameters become fields of the
run config's model section and flags of ``pyro-vae train`` (:func:`piece_options`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyro.infer
import torch

from pyro_vae import objectives
from pyro_vae.errors import ConfigError
from pyro_vae.models import VAE, Likelihood, TwoLayerVAE, guides, likelihoods, nets, priors
from pyro_vae.options import Option
from pyro_vae.pieces import BuildContext, Piece

if TYPE_CHECKING:  # the config is made from this module's tables, so it is not imported here
    from pyro_vae.config import ModelConfig, TrainConfig

PRIORS: dict[str, type[Piece]] = {
    "normal": priors.StandardNormal,
    "mog": priors.MixtureOfGaussians,
    "vamp": priors.VampPrior,
    "flow": priors.FlowPrior,
    "student-t": priors.StudentT,
}

LIKELIHOODS: dict[str, type[Piece]] = {
    "bernoulli": likelihoods.BernoulliLikelihood,
    "continuous-bernoulli": likelihoods.ContinuousBernoulliLikelihood,
    "gaussian": likelihoods.GaussianLikelihood,
    "gaussian-learned": likelihoods.LearnedGaussianLikelihood,
    "laplace": likelihoods.LearnedLaplaceLikelihood,
    "beta": likelihoods.BetaLikelihood,
    "discretized-logistic": likelihoods.DiscretizedLogisticLikelihood,
}

GUIDES: dict[str, type[Piece]] = {
    "diagonal": guides.DiagonalNormalEncoder,
    "full": guides.FullCovarianceEncoder,
    "lowrank": guides.LowRankEncoder,
    "iaf": guides.IAFEncoder,
}

# What the guide's encoder and the decoder are made of (pyro_vae.models.nets.Networks).
NETWORKS: dict[str, type[Piece]] = {
    "mlp": nets.MLPNetworks,
    "conv": nets.ConvNetworks,
}

# The model config's option naming each kind of piece, and the kind's table.
PIECES: dict[str, dict[str, type[Piece]]] = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "guide": GUIDES,
    "net": NETWORKS,
}

# Precision of the encoder and decoder networks (VAE.precision); log-densities stay float32.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

# The training objectives (pyro_vae.objectives: an ELBO class and its declared options).
ELBOS: dict[str, objectives.Objective] = {
    "trace": objectives.TRACE,
    "meanfield": objectives.MEANFIELD,
    "iwae": objectives.IWAE,
}

# The pieces of each config section, by the option that names them: their declared
# hyperparameters are fields of that section.
SECTION_PIECES: dict[str, dict[str, dict[str, type[Piece]]]] = {
    "model": PIECES,
    "train": {"elbo": ELBOS},
}


@dataclass(frozen=True)
class PieceOption:
    """One hyperparameter of the model section, as the pieces declaring it declare it.

    ``users`` are ``(kind, name)`` pairs (``("prior", "mog")``) of the pieces that take it,
    ``helps`` their distinct help texts.
    """

    name: str
    type: str
    default: object
    option: Option
    users: tuple[tuple[str, str], ...]
    helps: tuple[str, ...] = ()


# The field types a piece may declare: those config.json can hold (config._JSON_TYPES).
PIECE_TYPES = ("int", "float", "str", "str | None", "bool", "tuple[int, ...]")


def piece_options(section: str = "model") -> list[PieceOption]:
    """The hyperparameters the registered pieces of a config section declare (the model's:
    priors, likelihoods, guides; training's: objectives), each once, in table order.

    Pieces declaring the same name share one option; their declarations must agree on everything
    but the help, whose distinct texts are joined. The help ends with the pieces that use it.
    """
    found: dict[str, PieceOption] = {}
    for kind, table in SECTION_PIECES[section].items():
        for name, cls in table.items():
            for f in dataclasses.fields(cls.Params):
                opt = f.metadata["option"]
                if not isinstance(f.type, str):
                    raise TypeError(
                        f"{cls.__name__}.Params: declare it in a module with "
                        "'from __future__ import annotations' (its field types are read as text)"
                    )
                if f.type not in PIECE_TYPES:
                    raise TypeError(
                        f"{cls.__name__}.Params.{f.name}: type {f.type!r} is not one of "
                        f"{', '.join(PIECE_TYPES)}"
                    )
                seen = found.get(f.name)
                if seen is None:
                    found[f.name] = PieceOption(
                        f.name, f.type, f.default, opt, ((kind, name),), (opt.help,)
                    )
                    continue
                same = dataclasses.replace(opt, help=seen.option.help)
                if (f.type, f.default, same) != (seen.type, seen.default, seen.option):
                    raise TypeError(
                        f"{kind} {name} declares '{f.name}' unlike "
                        f"{' and '.join(' '.join(u) for u in seen.users)}: a shared "
                        "hyperparameter must agree on type, default and range"
                    )
                found[f.name] = dataclasses.replace(
                    seen,
                    users=seen.users + ((kind, name),),
                    helps=seen.helps + ((opt.help,) if opt.help not in seen.helps else ()),
                )
    return [
        dataclasses.replace(p, option=dataclasses.replace(p.option, help=_with_users(p, section)))
        for p in found.values()
    ]


def _with_users(p: PieceOption, section: str) -> str:
    by_kind: dict[str, list[str]] = {}
    for kind, name in p.users:
        by_kind.setdefault(kind, []).append(name)
    users = "; ".join(f"{{{section}.{kind}}} {', '.join(names)}" for kind, names in by_kind.items())
    return f"{'; '.join(p.helps)} (for {users})"


def lookup(table: dict, name: str, option: str):
    """``table[name]``; an unknown name is a :class:`ConfigError` naming the option (its config
    path, e.g. ``model.prior``) and the names it may take."""
    try:
        return table[name]
    except KeyError:
        raise ConfigError(
            f"unknown {{{option}}} '{name}'; choose one of {', '.join(table)}"
        ) from None


def piece_class(cfg: ModelConfig, kind: str) -> type[Piece]:
    """The class of the config's piece of ``kind`` (``"prior"``, ``"likelihood"``, ``"guide"``,
    ``"net"``)."""
    return lookup(PIECES[kind], getattr(cfg, kind), f"model.{kind}")


def build_piece(cfg: ModelConfig, kind: str, context: BuildContext):
    """The config's piece of ``kind``, built with its hyperparameters from the config."""
    cls = piece_class(cfg, kind)
    missing = [f.name for f in dataclasses.fields(cls.Params) if not hasattr(cfg, f.name)]
    if missing:
        raise TypeError(
            f"{kind} {getattr(cfg, kind)} declares {missing}, which the model config lacks: "
            "register a piece in pyro_vae/registry.py's tables, which the config is made from "
            "when pyro_vae.config is first imported, not afterwards"
        )
    try:
        return cls.build(cls.params_from(cfg), context)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{{model.{kind}}} {getattr(cfg, kind)}: {e}") from None


def build_likelihood(cfg: ModelConfig, data_dim: int, levels: int | None = None) -> Likelihood:
    """The likelihood alone, as :func:`build_vae` builds it (the data checks need it before
    there is a model)."""
    context = BuildContext(data_dim, cfg.latent_dim, tuple(cfg.hidden), levels)
    return build_piece(cfg, "likelihood", context)


def build_vae(
    cfg: ModelConfig,
    data_dim: int,
    levels: int | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> VAE:
    """A VAE for ``data_dim``-dimensional datapoints as the model config describes it.

    ``levels`` is the number of quantisation levels of the data (for discrete likelihoods);
    ``image_shape`` the shape of one datapoint before it is flattened (``(H, W)``: convolutional
    networks need it).
    """
    if image_shape is not None and math.prod(image_shape) != data_dim:
        raise ValueError(f"image shape {tuple(image_shape)} does not hold {data_dim} values")
    context = BuildContext(
        data_dim,
        cfg.latent_dim,
        tuple(cfg.hidden),
        levels,
        image_shape=None if image_shape is None else tuple(image_shape),
    )
    context = dataclasses.replace(context, networks=build_piece(cfg, "net", context))
    likelihood = build_piece(cfg, "likelihood", context)
    encoder = build_piece(cfg, "guide", context)
    top = cfg.top_latent_dim
    if top is None:
        prior = build_piece(cfg, "prior", dataclasses.replace(context, encoder=encoder))
        decoder = context.networks.decoder(likelihood.params_per_dim * data_dim)
        return VAE(encoder, decoder, prior, likelihood)
    if cfg.prior == "vamp":
        raise ConfigError(
            "{model.prior} vamp is built from q(z|x), but with {model.top_latent_dim} the prior "
            "is over z2: choose another prior, or one layer"
        )
    prior = build_piece(cfg, "prior", dataclasses.replace(context, latent_dim=top))
    widths = tuple(cfg.top_hidden)
    transition = guides.DiagonalNormalEncoder(top, cfg.latent_dim, widths)  # p(z | z2)
    upper = guides.DiagonalNormalEncoder(cfg.latent_dim, top, widths)  # q(z2 | z)
    decoder = context.networks.decoder(likelihood.params_per_dim * data_dim)
    return TwoLayerVAE(encoder, decoder, prior, likelihood, transition, upper)


def build_elbo(cfg: TrainConfig) -> pyro.infer.ELBO:
    """The config's objective, built with its declared hyperparameters from the config."""
    objective = lookup(ELBOS, cfg.elbo, "train.elbo")
    return objective.build(objective.params_from(cfg))


def build_precision(name: str) -> torch.dtype:
    return lookup(PRECISIONS, name, "train.precision")


def check_names(model: ModelConfig, train: TrainConfig) -> None:
    """Fail early, before any data are loaded, on a name no table knows, or on a guide whose
    hyperparameters do not fit the latent dimension (:meth:`guides.Encoder.check_fit`)."""
    for kind in PIECES:
        piece_class(model, kind)
    lookup(ELBOS, train.elbo, "train.elbo")
    lookup(PRECISIONS, train.precision, "train.precision")
    _check_eval_method(train)
    guide = piece_class(model, "guide")
    guide.check_fit(guide.params_from(model), model.latent_dim)


def final_evaluation(train: TrainConfig) -> dict:
    """The method and K of the evaluation after training, as :func:`pyro_vae.jobs.evaluate`
    takes them: ``train.eval_samples`` only for a method that takes importance samples (AIS
    takes its own chains)."""
    from pyro_vae.infer import estimators

    estimator = lookup(estimators.ESTIMATORS, train.eval_method, "train.eval_method")
    takes_k = "num_samples" in {f.name for f in dataclasses.fields(estimator.Settings)}
    return {"method": train.eval_method, "num_samples": train.eval_samples if takes_k else None}


def _check_eval_method(train: TrainConfig) -> None:
    """The evaluation after training: a method the estimators' table knows, which takes
    ``train.eval_samples`` importance samples (auto needs K >= 21 for its k-hat)."""
    from pyro_vae.infer import estimators

    chosen = final_evaluation(train)
    try:
        estimators.settings_for(**chosen)
    except ConfigError as e:
        raise ConfigError(
            f"{{train.eval_method}} {train.eval_method} cannot take {{train.eval_samples}} "
            f"{train.eval_samples} ({e.template}); raise {{train.eval_samples}} or choose "
            "another {train.eval_method} (iwae takes any K)"
        ) from None
