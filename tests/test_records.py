"""The typed evaluation record: what evaluate returns, what the run directory keeps, and the
JSON between them."""

import json
import math

import pytest
import torch

from pyro_vae import jobs
from pyro_vae.config import RunConfig
from pyro_vae.errors import CheckpointError
from pyro_vae.records import Evaluation
from pyro_vae.runs import RunDir


@pytest.fixture
def trained_run(tmp_path):
    config = RunConfig().replace(
        model={"latent_dim": 2, "hidden": (16,)},
        train={"epochs": 1, "batch_size": 256, "device": "cpu"},
    )
    jobs.train(config, tmp_path / "r", evaluate_at_end=False, progress=False, echo=lambda s: None)
    return tmp_path / "r"


def test_evaluate_returns_what_the_run_directory_reads_back(trained_run):
    ev = jobs.evaluate(trained_run, num_samples=40, progress=False)
    (stored,) = [e for e in RunDir(trained_run).evaluations() if e.setting == "test-K40-fp32"]
    assert stored.evaluation == ev.replace(per_point=None)
    assert json.loads(stored.json_path.read_text()) == json.loads(json.dumps(ev.to_dict()))
    back = stored.per_point()
    for name in ("log_px", "elbo", "ess", "stderr", "khat"):
        torch.testing.assert_close(getattr(back, name), getattr(ev.per_point, name), equal_nan=True)
    assert ev.log_px == pytest.approx(ev.per_point.log_px.mean().item())
    assert ev.evaluation_id == stored.evaluation.evaluation_id is not None


def test_a_summary_of_an_earlier_version_reads_with_the_values_it_meant():
    ev = Evaluation.from_dict({"split": "test", "num_samples": 50, "log_px": -80.0})
    assert (ev.method, ev.precision, ev.method_settings) == ("iwae", "fp32", {"num_samples": 50})
    assert ev.khat_max is None and math.isnan(ev.gap)


def test_nulls_of_numbers_that_were_not_finite_read_back_as_such():
    ev = Evaluation.from_dict(
        {"split": "test", "num_samples": 5, "log_px": None, "elbo": None, "gap": None}
    )
    assert ev.log_px == ev.elbo == -math.inf and math.isnan(ev.gap)
    assert ev.log_px_stderr is None  # None is its own answer: no error bar


def test_keys_of_a_newer_version_are_kept_and_written_back():
    d = {"split": "val", "num_samples": 5, "log_px": -3.0, "from_the_future": [1, 2]}
    ev = Evaluation.from_dict(d)
    assert ev.extra == {"from_the_future": [1, 2]}
    assert ev.to_dict()["from_the_future"] == [1, 2]
    assert Evaluation.from_dict(ev.to_dict()) == ev


@pytest.mark.parametrize(
    "d, message",
    [
        ([1, 2], "is not an evaluation summary"),
        ({"split": "test", "log_px": 1.0}, "is not an evaluation summary"),
        ({"split": "test", "num_samples": "many", "log_px": 1.0}, "num_samples = 'many'"),
        ({"split": 3, "num_samples": 5, "log_px": 1.0}, "split = 3"),
        ({"split": "test", "num_samples": 5, "log_px": 1.0, "bounds_vs_k": 2}, "bounds_vs_k"),
    ],
)
def test_a_summary_of_the_wrong_shape_is_refused(d, message):
    with pytest.raises(CheckpointError, match=message):
        Evaluation.from_dict(d, where="x.json")


def test_optional_fields_stay_out_of_the_json_until_set():
    ev = Evaluation(log_px=-1.0, split="test", num_samples=5)
    d = ev.to_dict()
    assert "khat_note" not in d and "bits_per_dim" not in d and "kl_per_dim" in d
    assert "bits_per_dim" in ev.replace(bits_per_dim=0.5).to_dict()


def test_numbers_written_as_null_inside_a_summary_come_back_as_what_they_were():
    ev = Evaluation(
        log_px=-math.inf,
        split="test",
        num_samples=5,
        elbo=-math.inf,
        bits_per_dim=math.inf,
        bounds_vs_k={"1": -math.inf, "5": -2.0},
        kl_per_dim=[math.nan, 0.5],
    )
    from pyro_vae.runs import json_safe

    back = Evaluation.from_dict(json.loads(json.dumps(json_safe(ev.to_dict()), allow_nan=False)))
    assert back.log_px == back.elbo == -math.inf and back.bits_per_dim == math.inf
    assert back.bounds_vs_k == {"1": -math.inf, "5": -2.0}
    assert math.isnan(back.kl_per_dim[0]) and back.kl_per_dim[1] == 0.5
    text = jobs.format_evaluation(back.replace(num_datapoints=2, dataset="d", epochs_trained=1))
    assert "L_1 -inf" in text and "bits/dim         inf" in text
    assert math.isnan(Evaluation.from_dict({"split": "t", "num_samples": 2, "log_px": 1.0}).elbo)
