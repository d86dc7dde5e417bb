"""The pieces' declarations: each hyperparameter declared once by its piece, collected by the
registry into the model config, the CLI and old runs' configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pyro_vae import registry
from pyro_vae.cli import build_parser
from pyro_vae.config import ModelConfig, RunConfig
from pyro_vae.errors import ConfigError
from pyro_vae.models import Prior, StandardNormal
from pyro_vae.options import declared, option
from pyro_vae.pieces import PieceParams


def test_every_declared_hyperparameter_is_a_model_field_with_its_default():
    fields = {f.name: f for f, _ in declared(ModelConfig)}
    for kind, table in registry.PIECES.items():
        for name, cls in table.items():
            for f in dataclasses.fields(cls.Params):
                assert fields[f.name].default == f.default, (kind, name, f.name)


def test_shared_hyperparameters_are_one_option_naming_every_user():
    options = {p.name: p for p in registry.piece_options()}
    assert options["num_components"].users == (("prior", "mog"), ("prior", "vamp"))
    assert options["flows"].users == (("prior", "flow"), ("guide", "iaf"))
    help_text = options["flows"].option.help
    assert "prior's flow" in help_text and "guide's flow" in help_text
    assert help_text.endswith("(for {model.prior} flow; {model.guide} iaf)")


def test_a_shared_hyperparameter_declared_differently_is_refused(monkeypatch):
    class Wide(Prior):
        @dataclasses.dataclass(frozen=True)
        class Params(PieceParams):
            num_components: int = option(50, "components", low=1, high=10_000)

    monkeypatch.setitem(registry.PRIORS, "wide", Wide)
    with pytest.raises(TypeError, match="'num_components' unlike prior mog and prior vamp"):
        registry.piece_options()


def test_a_new_pieces_hyperparameter_reaches_the_config_checks_and_the_built_piece(monkeypatch):
    class Scaled(StandardNormal):
        @dataclasses.dataclass(frozen=True)
        class Params(PieceParams):
            num_components: int = option(
                10, "number of components or pseudo-inputs", low=1, high=10_000, metavar="K"
            )

        def __init__(self, latent_dim, num_components=10):
            super().__init__(latent_dim)
            self.seen = num_components

    monkeypatch.setitem(registry.PRIORS, "scaled", Scaled)
    cfg = ModelConfig(prior="scaled", num_components=7)
    vae = registry.build_vae(cfg, data_dim=4)
    assert vae.prior.seen == 7
    with pytest.raises(ConfigError) as e:
        Scaled.params_from(dataclasses.replace(cfg, num_components=0))
    assert e.value.option == "model.num_components"


def test_the_train_flags_of_the_pieces_come_from_their_declarations():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for p in registry.piece_options():
        assert "--" + p.name.replace("_", "-") in text


def test_a_config_written_before_a_hyperparameter_was_declared_reads_with_its_default(tmp_path):
    d = RunConfig().to_dict()
    for p in registry.piece_options():
        del d["model"][p.name]
    config = RunConfig.from_json(json.dumps(d))
    assert config == RunConfig()
    d["model"].pop("latent_dim")  # the model's own fields are still required
    with pytest.raises(ConfigError, match=r"missing \['latent_dim'\]"):
        RunConfig.from_json(json.dumps(d))


def test_a_bad_value_in_a_pieces_constructor_is_a_config_error_naming_the_piece(monkeypatch):
    class Fussy(StandardNormal):
        def __init__(self, latent_dim):
            raise ValueError("needs an even latent_dim")

    monkeypatch.setitem(registry.PRIORS, "fussy", Fussy)
    with pytest.raises(ConfigError, match="needs an even latent_dim") as e:
        registry.build_vae(ModelConfig(prior="fussy"), data_dim=4)
    assert str(e.value).startswith("model.prior fussy:")


def test_the_objectives_declare_their_particles_as_training_options():
    from pyro_vae.config import TrainConfig
    from pyro_vae.infer.iwae_elbo import IWAE_ELBO

    options = {p.name: p for p in registry.piece_options("train")}
    assert options["num_particles"].users == (
        ("elbo", "trace"),
        ("elbo", "meanfield"),
        ("elbo", "iwae"),
    )
    assert options["vectorize_particles"].users == (("elbo", "trace"), ("elbo", "meanfield"))
    assert {f.name for f, _ in declared(TrainConfig)} >= set(options)
    elbo = registry.build_elbo(TrainConfig(elbo="iwae", num_particles=7))
    assert isinstance(elbo, IWAE_ELBO) and elbo.num_particles == 7
    with pytest.raises(ConfigError) as e:
        RunConfig(train=TrainConfig(num_particles=0))
    assert e.value.option == "train.num_particles"


def test_a_piece_registered_after_the_config_was_made_is_refused_clearly(monkeypatch):
    class Late(StandardNormal):
        @dataclasses.dataclass(frozen=True)
        class Params(PieceParams):
            late_scale: float = option(1.0, "scale", positive=True)

    monkeypatch.setitem(registry.PRIORS, "late", Late)
    with pytest.raises(TypeError, match=r"declares \['late_scale'\], which the model config lacks"):
        registry.build_vae(ModelConfig(prior="late"), data_dim=4)


def test_a_declared_type_config_json_cannot_hold_is_refused(monkeypatch):
    class Odd(StandardNormal):
        @dataclasses.dataclass(frozen=True)
        class Params(PieceParams):
            odd: int | None = option(None, "an optional count")

    monkeypatch.setitem(registry.PRIORS, "odd", Odd)
    with pytest.raises(TypeError, match="type 'int | None' is not one of"):
        registry.piece_options()


def test_config_fields_keep_the_order_of_earlier_versions():
    from pyro_vae.config import TrainConfig

    assert [f.name for f in dataclasses.fields(TrainConfig)][:4] == [
        "elbo",
        "num_particles",
        "vectorize_particles",
        "epochs",
    ]
    assert [f.name for f in dataclasses.fields(ModelConfig)][:6] == [
        "latent_dim",
        "hidden",
        "prior",
        "likelihood",
        "guide",
        "num_components",
    ]
