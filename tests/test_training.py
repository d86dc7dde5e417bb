import dataclasses
import math

import pyro
import pytest
import torch

from pyro_vae import jobs
from pyro_vae.config import RunConfig
from pyro_vae.data import load_dataset, prepare_split
from pyro_vae.errors import ConfigError, DataError, TrainingDiverged, UnsupportedDataError
from pyro_vae.infer import DeviceTrace_ELBO, importance_log_likelihood
from pyro_vae.runs import RunDir
from pyro_vae.training import VALIDATION_SEED, BetaSchedule, Trainer
from tests.helpers import binary_data, tiny_vae


def test_beta_schedule_warms_up_linearly_and_stays_positive():
    s = BetaSchedule(beta=2.0, warmup_steps=4)
    assert [s(i) for i in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert BetaSchedule(0.7)(0) == 0.7


def test_training_on_digits_lowers_the_loss_and_log_px_bounds_the_elbo():
    data = load_dataset("digits")
    train_x = data.split("train")
    test_x = prepare_split(data.split("test"), "test", "dynamic", seed=0)
    vae = tiny_vae(data_dim=64, latent_dim=4, hidden=(64,))
    trainer = Trainer(
        vae,
        train_x,
        elbo=DeviceTrace_ELBO(max_plate_nesting=1),
        lr=3e-3,
        batch_size=128,
        transform=torch.bernoulli,
        val_x=prepare_split(data.split("val"), "val", "dynamic", seed=0),
        progress=False,
    )
    history = [trainer.train_epoch() for _ in range(15)]
    assert history[-1].train_objective > history[0].train_objective + 5
    assert history[-1].val_elbo > history[0].val_elbo + 5
    assert all(r.val_bound is None for r in history)  # nothing watched a validation L_K
    r = importance_log_likelihood(vae.model, vae.guide, test_x, num_samples=200)
    assert r.log_px.mean() >= r.elbo.mean()
    assert (r.log_px - r.elbo).mean() < 5.0  # a trained guide leaves a modest gap


def _trainer(vae, x, **kwargs):
    return Trainer(
        vae,
        x,
        elbo=DeviceTrace_ELBO(max_plate_nesting=1),
        lr=1e-3,
        batch_size=8,
        progress=False,
        **kwargs,
    )


def test_divergence_is_reported_not_silently_logged():
    vae = tiny_vae()
    with torch.no_grad():
        vae.decoder[-1].bias.fill_(float("nan"))
    trainer = _trainer(vae, binary_data(32), log_every=2)
    with pytest.raises(TrainingDiverged, match="smaller learning rate") as e:
        trainer.train_epoch()
    assert e.value.cause == "model" and "--" not in str(e.value)


def test_divergence_on_unscaled_data_blames_the_data():
    vae = tiny_vae(data_dim=6, likelihood="gaussian-learned")
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)) * 1e30
    trainer = _trainer(vae, x, log_every=1)
    with pytest.raises(TrainingDiverged, match="rescale") as e:
        trainer.train_epoch()
    assert e.value.cause == "data" and e.value.data_abs_max > 1e29
    assert "learning rate" not in str(e.value)


def test_trainer_checks_its_data_against_the_likelihood_at_construction():
    grey = torch.rand(30, 12, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedDataError, match="Bernoulli likelihood needs binary") as e:
        _trainer(tiny_vae(), grey)  # the README's example fed load_digits().data / 16
    assert "the training data" in str(e.value) and "--" not in str(e.value)
    assert e.value.support == "binary" and 0 <= e.value.low <= e.value.high <= 1
    with pytest.raises(UnsupportedDataError, match="the validation data"):
        _trainer(tiny_vae(), binary_data(30), val_x=grey)
    with pytest.raises(DataError, match="shape"):
        _trainer(tiny_vae(), torch.zeros(0, 12))


def test_trainer_checks_the_data_as_transformed_without_moving_the_random_streams():
    grey = torch.rand(30, 12, generator=torch.Generator().manual_seed(0))
    vae = tiny_vae()
    before = torch.get_rng_state()
    _trainer(vae, grey, transform=torch.bernoulli)  # dynamic binarisation: fine
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(UnsupportedDataError):
        _trainer(tiny_vae(), grey, transform=lambda x: x * 2)


def test_trainer_checks_every_training_row_through_the_transform():
    x = torch.bernoulli(torch.full((25_000, 12), 0.5, dtype=torch.float32))
    x[23_456, 3] = 0.5  # beyond the first block of rows
    with pytest.raises(UnsupportedDataError, match="rows 20000-24999 of the training data"):
        _trainer(tiny_vae(), x, transform=lambda b: b)
    x[23_456, 3] = 2.0  # torch.bernoulli refuses it: a clear error, not torch's mid-epoch
    with pytest.raises(DataError, match=r"cannot be transformed .*p_in >= 0") as e:
        _trainer(tiny_vae(), x, transform=torch.bernoulli)
    assert "Could this error message" not in str(e.value)


def _small_config(**train):
    return RunConfig().replace(
        model={"latent_dim": 3, "hidden": (32,)},
        train={"epochs": 2, "batch_size": 256, "eval_samples": 10, "device": "cpu", **train},
    )


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    config = _small_config(warmup_epochs=2)  # the schedule must resume mid-warm-up too
    whole = jobs.train(config, tmp_path / "whole", evaluate_at_end=False, echo=lambda s: None)
    first = config.replace(train={"epochs": 1})
    jobs.train(first, tmp_path / "split", evaluate_at_end=False, echo=lambda s: None)
    resumed = jobs.train(
        config, tmp_path / "split", resume=True, evaluate_at_end=False, echo=lambda s: None
    )
    a = torch.load(RunDir(tmp_path / "whole").checkpoint_path, weights_only=True)
    b = torch.load(RunDir(tmp_path / "split").checkpoint_path, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    _assert_same(a["optim"], b["optim"])
    assert a["optim"]["optimizer"]["state"]  # Adam's moments were saved and compared
    strip = [(r.epoch, r.step, r.beta, r.train_objective, r.val_elbo) for r in whole.history]
    assert strip == [
        (r.epoch, r.step, r.beta, r.train_objective, r.val_elbo) for r in resumed.history
    ]
    assert len(RunDir(tmp_path / "split").read_metrics()) == 2


def _assert_same(a, b, path="optim"):
    """Nested dicts/lists of tensors and numbers, equal exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_resume_refuses_a_changed_model(tmp_path):
    config = _small_config(epochs=1)
    jobs.train(config, tmp_path / "r", evaluate_at_end=False, echo=lambda s: None)
    changed = config.replace(model={"latent_dim": 5}, train={"epochs": 2})
    with pytest.raises(Exception, match="latent_dim"):
        jobs.train(changed, tmp_path / "r", resume=True, echo=lambda s: None)


def test_evaluation_is_reproducible_and_consistent(tmp_path):
    config = _small_config(epochs=1)
    jobs.train(config, tmp_path / "r", evaluate_at_end=False, echo=lambda s: None)
    a = jobs.evaluate(tmp_path / "r", num_samples=50, progress=False)
    again = jobs.evaluate(tmp_path / "r", num_samples=50, progress=False)
    assert again.log_px == a.log_px and again.elbo == a.elbo  # seeded
    # another chunking draws other samples: the same estimate up to Monte Carlo error
    chunked = jobs.evaluate(tmp_path / "r", num_samples=50, chunk_size=7, progress=False)
    assert chunked.log_px == pytest.approx(a.log_px, abs=5 * a.log_px_stderr + 1e-3)
    assert a.gap == pytest.approx(a.log_px - a.elbo)
    assert a.num_datapoints == 359 and a.split == "test" and a.binarize == "dynamic"
    assert a.bits_per_dim == pytest.approx(-a.log_px / (64 * math.log(2)))
    assert [e.setting for e in RunDir(tmp_path / "r").evaluations()] == ["test-K50-fp32"]


def test_library_errors_name_a_jobs_arguments_by_keyword_and_the_cli_by_flag(tmp_path):
    from pyro_vae.cli import _flag

    config = _small_config(epochs=1)
    jobs.train(config, tmp_path / "r", evaluate_at_end=False, echo=lambda s: None)
    with pytest.raises(ConfigError) as e:
        jobs.train(config, tmp_path / "r", evaluate_at_end=False, echo=lambda s: None)
    text = "continue it (the resume argument) or choose another run directory (the out argument)"
    assert text in str(e.value)
    assert "--" not in str(e.value)
    assert "continue it (--resume) or choose another run directory (--out)" in e.value.render(_flag)
    with pytest.raises(ConfigError) as e:
        jobs.bdmc(tmp_path / "r", num_datapoints=0)
    assert str(e.value) == "the num_datapoints argument must be at least 1, got 0"
    assert e.value.render(_flag) == "--num-datapoints must be at least 1, got 0"


def test_early_stopping_counts_epochs_without_a_better_validation_elbo():
    from pyro_vae.training import EarlyStopping

    stopping = EarlyStopping(patience=2)
    for epoch, value in enumerate([-5.0, -4.0, -4.5, -3.9, -4.0], start=1):
        stopping.update(epoch, value)
        assert not stopping.stops_after(epoch)
    assert stopping.update(6, -4.2) is False and stopping.stops_after(6)
    assert (stopping.best, stopping.best_epoch) == (-3.9, 4)
    again = EarlyStopping(patience=2)
    again.load_state_dict(stopping.state_dict())
    assert again.stops_after(6) and not EarlyStopping(0).stops_after(100)


def test_early_stopping_keeps_the_best_epoch_evaluates_it_and_resumes_exactly(tmp_path):
    config = _small_config(epochs=400, patience=2, eval_samples=20, lr=0.01)
    said = []
    whole = jobs.train(config, tmp_path / "whole", echo=said.append)
    stopped = len(whole.history)
    run = RunDir(tmp_path / "whole")
    last = torch.load(run.checkpoint_path, weights_only=True)
    kept = torch.load(run.best_path, weights_only=True)
    best = last["early_stopping"]["best_epoch"]
    assert stopped < 400 and stopped - best == 2  # stopped by itself, 2 epochs after the best
    assert any(f"the best epoch, {best} (val L_10 " in s for s in said)
    # the watched score of every epoch is recorded, and the best epoch is its first maximum
    watched = [r.val_bound for r in whole.history]
    assert all(math.isfinite(v) for v in watched)
    assert watched.index(max(watched)) + 1 == best
    assert max(watched) == last["early_stopping"]["best"]
    assert [r.val_bound for r in run.read_metrics()] == watched
    assert any(" val L_10 " in s for s in said if s.startswith("epoch"))
    assert (last["epoch"], kept["epoch"]) == (stopped, best)
    assert kept["early_stopping"] == {"best": last["early_stopping"]["best"], "best_epoch": best}
    assert any(not torch.equal(v, last["model"][k]) for k, v in kept["model"].items())
    assert whole.evaluation.checkpoint == "best" and whole.evaluation.epochs_trained == best
    assert "(the best epoch's checkpoint)" in jobs.format_evaluation(whole.evaluation)
    # the last checkpoint on demand: another model, kept as a setting of its own
    final = jobs.evaluate(tmp_path / "whole", num_samples=20, checkpoint="last")
    assert final.checkpoint == "last" and final.epochs_trained == stopped
    assert final.log_px != whole.evaluation.log_px
    assert "(the last checkpoint, not the best epoch's)" in jobs.format_evaluation(final)
    kept_settings = sorted(p.name for p in (run.path / "evaluations").glob("*.json"))
    assert kept_settings == ["test-K20-fp32-last.json", "test-K20-fp32.json"]
    # the run's evaluations are its best epoch's unless the last one is asked for
    assert run.find_evaluation(num_samples=20).evaluation.checkpoint == "best"
    assert run.find_evaluation(num_samples=20, checkpoint="last").evaluation.epochs_trained == (
        stopped
    )
    ranked = jobs.compare([tmp_path / "whole"])
    assert ranked[0].epochs_trained == best  # the best epoch's evaluation ...
    assert not any("again" in line for line in jobs.comparison_caveats(ranked))  # ... is current
    again_best = jobs.evaluate(tmp_path / "whole", num_samples=20, checkpoint="best")
    assert again_best.log_px == whole.evaluation.log_px and again_best.epochs_trained == best
    with pytest.raises(ConfigError):
        jobs.evaluate(tmp_path / "whole", num_samples=20, checkpoint="first")
    # interrupted before it stopped, then resumed: the same epochs, the same two checkpoints
    jobs.train(config.replace(train={"epochs": stopped - 1}), tmp_path / "split", echo=said.append)
    jobs.train(config, tmp_path / "split", resume=True, evaluate_at_end=False, echo=said.append)
    split = RunDir(tmp_path / "split")
    for path in ("checkpoint_path", "best_path"):
        a = torch.load(getattr(run, path), weights_only=True)
        b = torch.load(getattr(split, path), weights_only=True)
        assert a["epoch"] == b["epoch"], path
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (path, key)
    said.clear()
    again = jobs.train(config, tmp_path / "whole", resume=True, echo=said.append)
    assert again.history == whole.history  # a stopped run does not train on
    assert "(stopped early; best epoch" in said[0]


def _epochs_of_one_second(monkeypatch):
    """Every epoch takes exactly 1 s by the trainer's clock: a time budget stops at a known
    epoch whatever this machine's speed."""
    train_epoch = Trainer.train_epoch
    monkeypatch.setattr(
        Trainer,
        "train_epoch",
        lambda self: dataclasses.replace(train_epoch(self), seconds=1.0),
    )


def test_a_time_budget_stops_after_the_epoch_that_reaches_it_and_resumes_exactly(
    tmp_path, monkeypatch
):
    _epochs_of_one_second(monkeypatch)
    config = _small_config(epochs=50, max_seconds=2.5)
    said = []
    budget = jobs.train(config, tmp_path / "budget", evaluate_at_end=False, echo=said.append)
    assert [r.epoch for r in budget.history] == [1, 2, 3]  # 3 s >= 2.5 s, after 2 s it was not
    assert [r.seconds for r in RunDir(tmp_path / "budget").read_metrics()] == [1.0, 1.0, 1.0]
    assert said[-1] == "stopped at the time budget of 2.5 s: training took 3.0 s in 3 epochs"
    # a line each time training passes a tenth of the budget (every 5th epoch of 50 without it)
    lines = [s for s in said if s.startswith("epoch")]
    assert [line[:13] for line in lines] == ["epoch    1/50", "epoch    2/50", "epoch    3/50"]
    # a run at its budget does not train on ...
    said.clear()
    again = jobs.train(
        config, tmp_path / "budget", resume=True, evaluate_at_end=False, echo=said.append
    )
    assert again.history == budget.history
    assert "(stopped at its time budget of 2.5 s; a larger budget trains on)" in said[0]
    # ... until the budget grows: the earlier epochs' seconds count, and the run continues
    # exactly as one that was never stopped
    more = config.replace(train={"max_seconds": 4.0})
    longer = jobs.train(
        more, tmp_path / "budget", resume=True, evaluate_at_end=False, echo=said.append
    )
    assert [r.epoch for r in longer.history] == [1, 2, 3, 4]
    whole = jobs.train(
        config.replace(train={"epochs": 4, "max_seconds": None}),
        tmp_path / "whole",
        evaluate_at_end=False,
        echo=said.append,
    )
    a = torch.load(RunDir(tmp_path / "whole").checkpoint_path, weights_only=True)
    b = torch.load(RunDir(tmp_path / "budget").checkpoint_path, weights_only=True)
    assert a["epoch"] == b["epoch"] == 4 and len(whole.history) == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # --epochs ends a run first, or at the same epoch as its budget: no budget is reported
    for epochs in (2, 3):
        said.clear()
        capped = jobs.train(
            config.replace(train={"epochs": epochs}),
            tmp_path / f"capped{epochs}",
            evaluate_at_end=False,
            echo=said.append,
        )
        assert len(capped.history) == epochs and not any("time budget" in s for s in said)
        said.clear()
        jobs.train(
            config.replace(train={"epochs": epochs}),
            tmp_path / f"capped{epochs}",
            resume=True,
            evaluate_at_end=False,
            echo=said.append,
        )
        assert said == [
            f"{tmp_path / f'capped{epochs}'}: already trained for {epochs} epochs of {epochs}"
        ]
    with pytest.raises(ConfigError) as e:
        config.replace(train={"max_seconds": 0.0})
    assert e.value.option == "train.max_seconds"


def test_gradients_are_clipped_to_the_norm_asked_for(monkeypatch):
    from pyro_vae.infer.optim import JointAdam

    original = torch.optim.Adam.step
    seen = []

    def step(self, *args, **kwargs):  # the gradients' total norm as Adam receives them
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    norms = {}
    for clip in (None, 0.01):
        seen.clear()
        pyro.clear_param_store()
        trainer = Trainer(
            tiny_vae(),
            binary_data(32),
            elbo=DeviceTrace_ELBO(max_plate_nesting=1),
            optim=JointAdam({"lr": 1e-3}, clip_norm=clip),
            batch_size=8,
        )
        trainer.train_epoch()
        norms[clip] = list(seen)
    assert len(norms[0.01]) == 4 and min(norms[None]) > 0.01  # larger than the clip
    assert max(norms[0.01]) <= 0.01 * (1 + 1e-4)
    with pytest.raises(ConfigError) as e:
        RunConfig().replace(train={"clip_norm": 0.0})
    assert e.value.option == "train.clip_norm"


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_lr_schedules_resume_exactly(tmp_path, schedule):
    config = _small_config(epochs=30, lr=0.05, lr_schedule=schedule, lr_patience=1)
    whole = jobs.train(config, tmp_path / "whole", evaluate_at_end=False, echo=lambda s: None)
    if schedule == "plateau":
        first = config.replace(train={"epochs": 15})
        jobs.train(first, tmp_path / "split", evaluate_at_end=False, echo=lambda s: None)
    else:  # the cosine schedule is set by the epochs: interrupt the run after 15 of its 30
        _train_epochs_then_stop(config, tmp_path / "split", 15)
    resumed = jobs.train(
        config, tmp_path / "split", resume=True, evaluate_at_end=False, echo=lambda s: None
    )
    a = torch.load(RunDir(tmp_path / "whole").checkpoint_path, weights_only=True)
    b = torch.load(RunDir(tmp_path / "split").checkpoint_path, weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    _assert_same(a["optim"], b["optim"])
    _assert_same(a["lr_schedule"], b["lr_schedule"], "lr_schedule")
    assert [r.val_elbo for r in whole.history] == [r.val_elbo for r in resumed.history]
    rates = [g["lr"] for g in a["optim"]["optimizer"]["param_groups"]]
    if schedule == "cosine":
        assert rates == [pytest.approx(0.0, abs=1e-12)]  # 0.05 -> 0 over the 30 epochs
    else:
        assert rates[0] < 0.05 / 4  # halved more than once


def _train_epochs_then_stop(config, out, epochs):
    """Train ``config`` (its cosine schedule over all of its epochs) for ``epochs`` epochs only,
    as a run interrupted then would have."""
    calls = {"n": 0}
    original = Trainer.train_epoch

    def counted(self):
        if calls["n"] == epochs:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self)

    Trainer.train_epoch = counted
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs.train(config, out, evaluate_at_end=False, echo=lambda s: None)
    finally:
        Trainer.train_epoch = original
    assert torch.load(RunDir(out).checkpoint_path, weights_only=True)["epoch"] == epochs


def test_the_cosine_rate_follows_its_formula_and_plateau_halves_after_its_patience():
    from pyro_vae.infer.optim import JointAdam
    from pyro_vae.training import LRSchedule

    pyro.clear_param_store()
    vae = tiny_vae()
    optim = JointAdam({"lr": 0.1})
    cosine = LRSchedule("cosine", optim, vae, epochs=4)
    rates = []
    for _ in range(4):
        optim.optimizer.step()  # no gradients: nothing moves, but torch sees the order it wants
        cosine.step()
        rates.append(cosine.lr)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(1, 5)]
    assert rates == pytest.approx(expected, abs=1e-12)
    pyro.clear_param_store()
    vae = tiny_vae()
    optim = JointAdam({"lr": 0.1})
    plateau = LRSchedule("plateau", optim, vae, epochs=10, patience=2)
    rates = []
    for score in [-5.0, -4.0, -4.5, -4.2, -4.1, -3.0, -3.5]:
        optim.optimizer.step()
        plateau.step(score)
        rates.append(plateau.lr)
    # -4.0 is the best; two epochs without improvement (-4.5, -4.2), then a third halves it
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])
    with pytest.raises(ValueError, match="lr schedule must be one of"):
        LRSchedule("step", JointAdam({"lr": 0.1}), vae, epochs=3)


def test_a_cosine_run_resumes_only_with_its_own_epochs(tmp_path):
    config = _small_config(epochs=2, lr_schedule="cosine")
    jobs.train(config, tmp_path / "r", evaluate_at_end=False, echo=lambda s: None)
    with pytest.raises(ConfigError, match="cosine schedule runs over the run's"):
        jobs.train(config.replace(train={"epochs": 3}), tmp_path / "r", resume=True)


def test_the_training_options_reach_the_objects_that_use_them(tmp_path, monkeypatch):
    from pyro_vae.build import build

    config = _small_config(epochs=3, patience=5, stop_samples=7, clip_norm=2.5)
    config = config.replace(train={"lr_schedule": "plateau", "lr_patience": 3})
    built = build(config)
    assert built.optim.clip_norm == 2.5
    assert built.schedule.scheduler.patience == 3
    asked = []
    original = Trainer.validation_bound

    def recorded(self, num_samples):
        asked.append(num_samples)
        return original(self, num_samples)

    monkeypatch.setattr(Trainer, "validation_bound", recorded)
    jobs.train(config, tmp_path / "r", evaluate_at_end=False, echo=lambda s: None)
    assert asked == [7, 7, 7]  # once an epoch, K = stop_samples, shared by stopping and schedule


def test_the_watched_validation_score_is_the_validation_l_k():
    pyro.clear_param_store()
    vae = tiny_vae()
    val = binary_data(40, seed=3)
    trainer = Trainer(
        vae,
        binary_data(32),
        elbo=DeviceTrace_ELBO(max_plate_nesting=1),
        lr=1e-3,
        batch_size=8,
        val_x=val,
    )
    pyro.set_rng_seed(5)
    before = torch.get_rng_state()
    score = trainer.validation_bound(20)
    # training's stream is left where it was, and the same draws come at every call
    assert torch.equal(torch.get_rng_state(), before)
    assert trainer.validation_bound(20) == score
    torch.manual_seed(VALIDATION_SEED)
    expected = importance_log_likelihood(
        vae.model, vae.guide, val, num_samples=20, max_plate_nesting=1
    )
    assert score == pytest.approx(float(expected.log_px.mean()), rel=1e-12)
    assert score > float(expected.elbo.mean())  # L_20 sits above the ELBO
