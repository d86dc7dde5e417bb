"""The table of estimators is the only dispatch: an estimator registered in it (here a toy, from
a test) is taken by evaluate --method, named in the setting, read back from its record, ranked by
compare and asked for by the docs check, without another module knowing its name."""

import json

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.infer import ESTIMATORS, Estimator, estimate, importance_log_likelihood
from pyro_vae.infer.estimator import ImportanceSettings, from_weights
from pyro_vae.records import Evaluation
from pyro_vae.runs import RunDir
from tests.test_readme import methods_missing_from_the_cli_reference

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-eval", "--no-progress"]


class Toy(Estimator):
    """IWAE from the guide under another name, with a summary field of its own."""

    name = "toy"
    label = "a toy registered by a test"
    Settings = ImportanceSettings
    summary_keys = ("toy_points",)

    def run_block(self, model, guide, x, settings, context):
        r = importance_log_likelihood(
            model,
            guide,
            x,
            num_samples=settings.num_samples,
            batch_size=x.shape[0],
            max_plate_nesting=context.max_plate_nesting,
            keep_log_weights=True,
        )
        return from_weights(r, self.name)

    def summary(self, block, settings):
        return {"toy_points": block.num_points}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(ESTIMATORS, Toy.name, Toy())


def test_a_registered_estimator_goes_through_the_whole_workflow(toy, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--method", "toy", "--num-samples", "30"]) == 0
    out = capsys.readouterr().out
    assert "a toy registered by a test" in out and "k-hat" in out
    path = run / "evaluations" / "test-toy-K30-fp32.json"
    written = json.loads(path.read_text())
    assert written["method"] == "toy" and written["method_settings"] == {"num_samples": 30}
    assert written["toy_points"] == 359  # the method's own summary field, at the top level
    (stored,) = RunDir(run).select_evaluations(method="toy")
    assert stored.evaluation.method_summary == {"toy_points": 359}  # read back as its own
    assert Evaluation.from_dict(stored.evaluation.to_dict()) == stored.evaluation
    assert main(["compare", str(run), "--method", "toy"]) == 0
    assert "test-toy-K30-fp32" in capsys.readouterr().out
    assert methods_missing_from_the_cli_reference() == ["toy"]  # the docs check reads the table


def test_a_registered_estimator_is_bit_for_bit_its_blocks(toy):
    from tests.helpers import tiny_vae

    vae = tiny_vae()
    x = torch.bernoulli(torch.full((150, 12), 0.5))
    whole = estimate(vae.model, vae.guide, x, "toy", seed=4, num_samples=25)
    iwae = estimate(vae.model, vae.guide, x, "iwae", seed=4, num_samples=25)
    assert torch.equal(whole.log_px, iwae.log_px)  # the same draws as IWAE's, from the driver
    assert whole.estimator == ("toy",) * 150 and whole.log_weights.shape == (25, 150)


QUICK = {
    "iwae": {"num_samples": 30},
    "refined": {"num_samples": 30, "refine_steps": 20},
    "ais": {"ais_steps": 4, "ais_chains": 4, "ais_leapfrog": 2},
    "smc": {"refine_steps": 20, "smc_particles": 8, "smc_replicates": 2},
    "auto": {"num_samples": 30, "refine_steps": 20, "smc_particles": 8, "smc_replicates": 2},
    "prior": {"num_samples": 30},
}


def test_the_quick_settings_cover_the_table():
    assert set(QUICK) == set(ESTIMATORS)


@pytest.mark.parametrize("method", sorted(QUICK))
def test_the_numbers_do_not_depend_on_the_free_memory(tmp_path_factory, monkeypatch, method):
    """Every method, one process: an evaluation with little free memory (1 MB, enough for
    what the jobs refuse) equals, bit for bit, one with plenty (1 TB)."""
    from pyro_vae import jobs, memory
    from pyro_vae.jobs import evaluation

    run = tmp_path_factory.mktemp("memory") / "r"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    results = []
    for free in (10**6, 10**12):
        for module in (memory, evaluation):
            monkeypatch.setattr(module, "free_memory_bytes", lambda device, free=free: free)
        results.append(jobs.evaluate(run, method=method, first=100, **QUICK[method]).per_point)
    for name in ("log_px", "stderr", "ess", "elbo"):
        assert torch.equal(getattr(results[0], name), getattr(results[1], name)), name


def test_estimate_refuses_bad_input_in_one_line():
    from pyro_vae.errors import ConfigError
    from tests.helpers import tiny_vae

    vae = tiny_vae()
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    with pytest.raises(ValueError, match="x holds no datapoints"):
        estimate(vae.model, vae.guide, x[:0], "iwae", seed=0, num_samples=5)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        estimate(vae.model, vae.guide, x, "iwae", seed=-1, num_samples=5)
    with pytest.raises(ConfigError, match="unknown estimation method 'nested'; choose one of iwae"):
        estimate(vae.model, vae.guide, x, "nested", seed=0)
    with pytest.raises(ConfigError, match="num_sampels is not a setting of"):
        estimate(vae.model, vae.guide, x, "iwae", seed=0, num_sampels=5)
