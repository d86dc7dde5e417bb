"""The estimation methods on the command line: evaluate --method, compare across methods, bdmc."""

import json

import numpy as np
import pytest

from pyro_vae import arviz_compat
from pyro_vae.cli import main
from tests.helpers import cli_error

TINY = ["--epochs", "2", "--hidden", "32", "--latent-dim", "2", "--eval-samples", "25"]
AIS_FAST = ["--ais-steps", "8", "--ais-chains", "4"]
SMC_FAST = ["--smc-particles", "8", "--smc-replicates", "4"]
REFINE_FAST = ["--num-samples", "30", "--refine-steps", "100"]
# Each method's quick settings (a setting a method does not take is refused).
FAST = {
    "iwae": ["--num-samples", "30", "--no-progress"],
    "refined": [*REFINE_FAST, "--no-progress"],
    "ais": [*AIS_FAST, "--no-progress"],
    "smc": ["--refine-steps", "100", *SMC_FAST, "--no-progress"],
    "auto": [*REFINE_FAST, *SMC_FAST, "--no-progress"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--out", str(out), "--no-eval", "--no-progress"]) == 0
    return out


def _evaluation(run_dir, setting):
    path = run_dir / "evaluations" / f"{setting}.json"
    return json.loads(path.read_text()), arviz_compat.load_netcdf(path.with_suffix(".nc"))


@pytest.mark.parametrize(
    "method, setting",
    [
        ("refined", "test-refined-K30-fp32"),
        ("ais", "test-ais-T8-C4-fp32"),
        ("smc", "test-smc-P8-R4-fp32"),
        ("auto", "test-auto-K30-fp32"),
    ],
)
def test_each_method_is_kept_as_its_own_setting_and_recorded(capsys, run_dir, method, setting):
    argv = ["evaluate", str(run_dir), "--method", method, *FAST[method]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{setting}.json" in out
    ev, idata = _evaluation(run_dir, setting)
    assert ev["method"] == method
    log_px = idata.log_likelihood["log_px"].values[0, 0]
    assert log_px.shape == (359,) and log_px.mean() == pytest.approx(ev["log_px"])
    assert ev["log_px"] >= ev["elbo"] - 0.5  # a lower bound of log p(x) above the guide's ELBO
    if method == "ais":
        assert ev["num_samples"] == 4 and ev["method_settings"]["ais_steps"] == 8
        assert ev["method_settings"] == {"ais_steps": 8, "ais_chains": 4, "ais_leapfrog": 5}
        assert ev["khat_max"] is None and "AIS has no importance weights" in ev["khat_note"]
        assert 0 < ev["acceptance_mean"] < 1 and "bounds_vs_k" not in ev
        assert "AIS with 4 chains x 8 distributions" in out
    elif method == "smc":
        assert ev["num_samples"] == 32 and ev["khat_max"] is None
        assert ev["method_settings"] == {
            "refine_steps": 100,
            "widen": 1.1,
            "smc_particles": 8,
            "smc_replicates": 4,
        }
        assert "over its replicates" in ev["khat_note"] and 0 < ev["acceptance_mean"] < 1
        assert ev["levels_mean"] >= 1 and "SMC with 4 sweeps x 8 particles" in out
    else:
        assert ev["num_samples"] == 30
        assert ("bounds_vs_k" in ev) == (method == "refined")  # auto's weights are of 2 stages
        assert ev["method_settings"]["refine_steps"] == 100
        assert ev["method_settings"]["widen"] == 1.1
    if method == "auto":
        counts = ev["num_per_method"]
        assert sum(counts.values()) == 359 and set(counts) == {"iwae", "refined", "smc"}
        stages = idata.sample_stats["method"].values[0, 0]
        assert [int((stages == i).sum()) for i in range(3)] == list(counts.values())
        assert ev["num_unreliable"] == round(ev["frac_unreliable"] * 359)
        assert "still flagged" in out
        assert ev["method_settings"]["max_samples"] is None  # the default, 16 K
        draws = idata.sample_stats["draws"].values[0, 0]
        refined = stages == 1
        assert bool((draws[stages == 0] == 30).all()) and bool((draws[refined] >= 30).all())
        assert bool((draws[refined] <= 480).all())
        assert ev["num_more_draws"] == int((draws[refined] > 30).sum())


def test_compare_refuses_to_mix_methods_unless_asked(capsys, run_dir, tmp_path):
    for method in ("iwae", "ais"):
        argv = ["evaluate", str(run_dir), "--method", method, *FAST[method]]
        assert main(argv) == 0
    capsys.readouterr()
    # one run, two methods: the selection must name one
    err = cli_error(capsys, "compare", str(run_dir), "--split", "test", "--precision", "fp32")
    assert "--method" in err
    assert main(["compare", str(run_dir), "--method", "ais"]) == 0
    assert "test-ais-T8-C4-fp32" in capsys.readouterr().out
    # two runs evaluated by different methods: refused, then ranked with --mix-methods
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *TINY, "--out", str(a), "--no-eval", "--no-progress"]) == 0
    assert main(["evaluate", str(a), "--method", "ais", *FAST["ais"]]) == 0
    assert main(["train", *TINY, "--seed", "1", "--out", str(b), "--no-progress"]) == 0
    capsys.readouterr()
    err = cli_error(capsys, "compare", str(a), str(b))
    assert "no evaluation of one setting" in err and "--mix-methods" in err
    assert main(["compare", str(a), str(b), "--mix-methods"]) == 0
    out = capsys.readouterr().out
    assert str(a) in out and str(b) in out
    assert "test-K25-fp32" in out and "test-ais-T8-C4-fp32" in out


def test_plot_draws_an_ais_evaluation_without_a_bound_figure(capsys, run_dir, tmp_path):
    assert main(["evaluate", str(run_dir), "--method", "ais", *FAST["ais"]]) == 0
    out = tmp_path / "plots"
    assert main(["plot", str(run_dir), "--method", "ais", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "gap-test-ais-T8-C4-fp32.png" in names and not any(n.startswith("bound") for n in names)


def test_bdmc_keeps_the_simulated_data_and_both_bounds(capsys, run_dir):
    argv = ["bdmc", str(run_dir), "--num-datapoints", "12", "--num-samples", "50", *AIS_FAST]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "upper" in out and "lower" in out and "gap" in out
    folder = run_dir / "bdmc"
    summary = json.loads((folder / "bdmc-T8-C4.json").read_text())
    arrays = np.load(folder / "bdmc-T8-C4.npz")
    assert arrays["x"].shape[0] == 12 and set(np.unique(arrays["x"])) <= {0.0, 1.0}
    assert arrays["latent_z"].shape == (12, 2)
    gap = arrays["upper"] - arrays["lower"]
    assert summary["gap"] == pytest.approx(gap.mean())
    assert summary["upper"] == pytest.approx(arrays["upper"].mean())
    assert summary["iwae"] == pytest.approx(arrays["iwae"].mean())
    assert summary["num_datapoints"] == 12


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "hmc"], "unknown estimation method 'hmc'"),
        (["--method", "ais", "--ais-steps", "0"], "--ais-steps must be an integer from 1 to"),
        (["--method", "ais", "--ais-chains", "0"], "--ais-chains must be an integer from 1 to"),
        (["--method", "refined", "--widen", "0"], "--widen must be a positive number"),
        (["--method", "refined", "--widen", "1e-300"], "--widen must be above 1/sqrt(2)"),
        (["--method", "auto", "--widen", "11"], "--widen must be at most 10"),
        (["--method", "auto", "--max-seconds", "-1"], "--max-seconds must be positive"),
        (
            ["--method", "auto", "--num-samples", "100", "--max-samples", "50"],
            "--max-samples must be at least --num-samples (100)",
        ),
    ],
)
def test_bad_method_settings_are_one_line(capsys, run_dir, argv, message):
    assert message in cli_error(capsys, "evaluate", str(run_dir), *argv)


def test_bdmc_refuses_no_datapoints(capsys, run_dir):
    err = cli_error(capsys, "bdmc", str(run_dir), "--num-datapoints", "0")
    assert "--num-datapoints must be at least 1" in err


def test_compare_refuses_the_same_method_with_other_settings(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run, steps in ((a, "50"), (b, "100")):
        assert main(["train", *TINY, "--out", str(run), "--no-eval", "--no-progress"]) == 0
        argv = ["evaluate", str(run), "--method", "refined", "--num-samples", "30"]
        assert main([*argv, "--refine-steps", steps, "--no-progress"]) == 0
    capsys.readouterr()
    err = cli_error(capsys, "compare", str(a), str(b))
    assert "method_settings" in err and "'refine_steps': 50" in err


def test_a_setting_the_method_does_not_take_is_refused(capsys, run_dir):
    err = cli_error(capsys, "evaluate", str(run_dir), "--widen", "1.2")
    assert "--widen is not a setting of --method iwae" in err and "refined, smc, auto" in err
    assert "iwae takes --num-samples, --chunk-size" in err
    err = cli_error(capsys, "evaluate", str(run_dir), "--method", "ais", "--num-samples", "30")
    assert "--num-samples is not a setting of --method ais" in err


def test_auto_refuses_too_few_samples_for_k_hat(capsys, run_dir):
    err = cli_error(capsys, "evaluate", str(run_dir), "--method", "auto", "--num-samples", "20")
    assert "--num-samples must be at least 21 for --method auto" in err


def test_a_two_layer_run_goes_through_every_command(tmp_path, capsys):
    """Train with a second stochastic layer, then every method, BDMC, plots and samples."""
    out = tmp_path / "two"
    two = ["--top-latent-dim", "2", "--top-hidden", "16", "--latent-dim", "3"]
    assert main(["train", *TINY[:4], *two, "--out", str(out), "--no-eval", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["top_latent_dim"] == 2
    for method in ("iwae", "refined", "ais", "auto"):
        argv = ["evaluate", str(out), "--method", method, *FAST[method]]
        assert main(argv) == 0, method
    capsys.readouterr()
    evaluations = {p.stem: json.loads(p.read_text()) for p in (out / "evaluations").glob("*.json")}
    assert len(evaluations) == 4
    for ev in evaluations.values():
        assert ev["latent_dim"] == 3 and ev["kl_per_dim"] is None  # no marginal p(z) to compare
        assert ev["log_px"] >= ev["elbo"] - 0.5
    ais = ["--ais-steps", "8", "--ais-chains", "4", "--no-progress"]
    assert main(["bdmc", str(out), "--num-datapoints", "10", "--num-samples", "20", *ais]) == 0
    bdmc = json.loads((out / "bdmc" / "bdmc-T8-C4.json").read_text())
    assert bdmc["lower"] <= bdmc["upper"] + 1.0
    assert np.load(out / "bdmc" / "bdmc-T8-C4.npz")["latent_z2"].shape == (10, 2)
    assert main(["plot", str(out), "--method", "iwae", "--out", str(tmp_path / "figs")]) == 0
    assert main(["sample", str(out), "--out", str(tmp_path / "s.png"), "--num", "4"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_evaluate_first_scores_a_prefix_of_the_split_as_a_setting_of_its_own(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "25", "--no-progress"]) == 0
    argv = ["evaluate", str(run_dir), "--num-samples", "25", "--first", "50", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "the first 50 datapoints" in out
    part, idata = _evaluation(run_dir, "test-K25-fp32-first50")
    whole, whole_idata = _evaluation(run_dir, "test-K25-fp32")
    assert part["first"] == 50 and part["num_datapoints"] == 50 and whole["first"] is None
    assert idata.log_likelihood["log_px"].values.shape == (1, 1, 50)
    head = whole_idata.log_likelihood["log_px"].values[0, 0, :50]
    # the same datapoints, other draws (blocks of 50 rows, not 64): equal within the Monte
    # Carlo error of the mean difference
    d = idata.log_likelihood["log_px"].values[0, 0] - head
    assert part["log_px"] == pytest.approx(idata.log_likelihood["log_px"].values.mean())
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(50)
    assert "--first must be at least 1, got 0" in cli_error(
        capsys, "evaluate", str(run_dir), "--first", "0"
    )


def test_train_evaluates_with_the_method_asked_for(capsys, tmp_path):
    out = tmp_path / "r"
    argv = ["train", *TINY, "--eval-method", "auto", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "auto (IWAE, then refined, then SMC where flagged)" in capsys.readouterr().out
    ev, _ = _evaluation(out, "test-auto-K25-fp32")
    assert ev["method"] == "auto" and ev["num_samples"] == 25
    assert not (out / "evaluations" / "test-K25-fp32.json").exists()
    assert json.loads((out / "config.json").read_text())["train"]["eval_method"] == "auto"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval-method", "bogus"], "unknown --eval-method 'bogus'; choose one of iwae, refined"),
        (
            ["--eval-method", "auto", "--eval-samples", "20"],
            "--eval-method auto cannot take --eval-samples 20 (must be at least 21",
        ),
    ],
)
def test_train_refuses_an_evaluation_it_cannot_make_before_training(
    capsys, tmp_path, argv, message
):
    err = cli_error(capsys, "train", *TINY, *argv, "--out", str(tmp_path / "r"))
    assert message in err
    assert not (tmp_path / "r").exists()


def test_the_evaluation_after_training_gives_eval_samples_only_to_methods_taking_k():
    from pyro_vae import registry
    from pyro_vae.config import RunConfig

    def chosen(method):
        config = RunConfig().replace(train={"eval_method": method, "eval_samples": 30})
        registry.check_names(config.model, config.train)  # accepted before training
        return registry.final_evaluation(config.train)

    assert chosen("auto") == {"method": "auto", "num_samples": 30}
    assert chosen("ais") == {"method": "ais", "num_samples": None}  # AIS takes its chains
