"""Every experiment script runs end to end with tiny arguments (in a subprocess)."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(name, tmp_path, *args):
    """Run experiments/NAME with --out tmp_path and ``args``; return the rows of its table.csv."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / name), "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines()))


def test_ppca_bound_smoke(tmp_path):
    rows = _run("ppca_bound.py", tmp_path, "--ks", "1,10,100", "--points", "20", "--repeats", "2")
    assert len(rows) == 6
    wrong = [float(row["L_K"]) for row in rows if row["guide"] == "wrong"]
    assert wrong == sorted(wrong)  # the bound rises with K
    exact = [float(row["gap_to_exact"]) for row in rows if row["guide"] == "exact"]
    assert max(abs(g) for g in exact) < 1e-8
    assert (tmp_path / "bound_vs_k.png").stat().st_size > 1000
    assert "| guide | K |" in (tmp_path / "table.md").read_text()


def _run_script(name, tmp_path, *extra):
    """A training experiment, shrunk to one epoch of a 2-d latent space."""
    return _run(name, tmp_path, "--epochs", "1", "--eval-samples", "8", "--latent-dim", "2", *extra)


def test_swap_priors_smoke(tmp_path):
    rows = _run_script("swap_priors.py", tmp_path)
    assert [r["variant"] for r in rows] == ["normal", "mog", "vamp", "flow"]
    assert all(float(r["log_px"]) >= float(r["elbo"]) for r in rows)
    assert (tmp_path / "priors.png").stat().st_size > 1000


def test_swap_likelihoods_smoke(tmp_path):
    rows = _run_script("swap_likelihoods.py", tmp_path)
    assert len(rows) == 7
    assert all(float(r["bits_per_dim"]) > 0 for r in rows)  # every row gets bits/dim
    assert (tmp_path / "likelihoods.png").stat().st_size > 1000


def test_elbo_vs_iwae_smoke(tmp_path):
    rows = _run_script("elbo_vs_iwae.py", tmp_path, "--repeats", "5")
    assert [r["variant"] for r in rows] == ["Trace_ELBO", "TraceMeanField_ELBO"]
    grads = list(csv.DictReader((tmp_path / "gradients.csv").read_text().splitlines()))
    assert {g["objective"] for g in grads} == {"trace", "meanfield"}
    assert all(float(g["total_variance"]) > 0 for g in grads)
    assert "L_1" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "bound_vs_k.png").stat().st_size > 1000


def test_iwae_training_smoke(tmp_path):
    rows = _run_script("iwae_training.py", tmp_path, "--ks", "3")
    assert [r["variant"] for r in rows] == ["ELBO (K=1)", "IWAE (K=3)"]
    configs = [
        __import__("json").loads((tmp_path / "runs" / r["variant"] / "config.json").read_text())
        for r in rows
    ]
    assert [c["train"]["elbo"] for c in configs] == ["trace", "iwae"]
    assert configs[1]["train"]["num_particles"] == 3


def test_burda_table_smoke(tmp_path):
    import json
    import math

    flags = ["--ks", "2", "--objectives", "iwae", "--layers", "1,2", "--nets", "conv"]
    flags += ["--threads", "3"]  # not the default on any runner: torch's is the cores or OMP's
    fast = ["--eval-samples", "21", "--hidden", "16", "--auto", "--smc-particles", "8"]
    rows = _run(
        "burda_table.py",
        tmp_path,
        "--epochs",
        "1",
        "--latent-dim",
        "2",
        *flags,
        *fast,
        "--refine-steps",
        "10",
        "--test-points",
        "40",
    )
    assert [(r["objective"], r["layers"], r["net"]) for r in rows] == [
        ("iwae", "1", "conv"),
        ("iwae", "2", "conv"),
    ]
    assert all(math.isfinite(float(r["log_px_auto"])) for r in rows)
    assert all(0 <= float(r["frac_unreliable_auto"]) <= 1 for r in rows)
    config = json.loads((tmp_path / "runs" / "iwae-k2-L2-conv" / "config.json").read_text())
    assert config["model"]["top_latent_dim"] == 1 and config["model"]["net"] == "conv"
    assert config["train"]["elbo"] == "iwae" and config["train"]["num_particles"] == 2
    assert "| IWAE, k=2 | 2 | conv |" in (tmp_path / "table.md").read_text()
    assert "test split (first 40)" in (tmp_path / "table.md").read_text()
    assert "K=21, 3 CPU threads" in (tmp_path / "table.md").read_text()  # --threads reached torch
    kept = json.loads(
        (
            tmp_path / "runs" / "iwae-k2-L2-conv" / "evaluations" / "test-K21-fp32-first40.json"
        ).read_text()
    )
    assert kept["num_datapoints"] == 40
    assert (tmp_path / "burda_table.png").stat().st_size > 1000
    # --resume adds a row (k=1) and reuses the run and evaluations already there (k=2)
    reused = tmp_path / "runs" / "iwae-k2-L1-conv"
    kept_files = [reused / "checkpoint.pt", reused / "metrics.csv", *reused.glob("*/*.json")]
    before = {p.name: p.stat().st_mtime_ns for p in kept_files}
    again = ["--epochs", "1", "--latent-dim", "2", *fast, "--refine-steps", "10"]
    again += ["--test-points", "40", "--objectives", "iwae", "--layers", "1", "--nets", "conv"]
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "burda_table.py"), "--out", str(tmp_path)]
        + [*again, "--ks", "1,2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "exists: choose another --out, or reuse its runs with --resume" in r.stderr
    assert not (tmp_path / "runs" / "iwae-k1-L1-conv").exists()  # refused before training
    assert list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines())) == rows
    resumed = _run("burda_table.py", tmp_path, *again, "--ks", "1,2", "--resume")
    assert [r["k"] for r in resumed] == ["1", "2"]
    assert resumed[1] == rows[0]  # read back, not trained or evaluated again
    assert {p.name: p.stat().st_mtime_ns for p in kept_files} == before
    assert len(before) == 4  # the IWAE and auto evaluations among them
    assert (tmp_path / "runs" / "iwae-k1-L1-conv" / "checkpoint.pt").is_file()
    # without --auto, the auto evaluation already kept is shown, and nothing is computed
    no_auto = [a for a in again if a != "--auto"]
    assert _run("burda_table.py", tmp_path, *no_auto, "--ks", "1,2", "--resume") == resumed
    assert {p.name: p.stat().st_mtime_ns for p in kept_files} == before
    # trained on (--epochs 2): its kept evaluations are of the older checkpoint, not reused
    longer = [a if a != "1" else "2" for a in again[:2]] + again[2:]
    on = _run("burda_table.py", tmp_path, *longer, "--ks", "2", "--resume")
    assert on[0]["log_px"] != rows[0]["log_px"] and on[0]["log_px_auto"] != rows[0]["log_px_auto"]
    kept = json.loads((reused / "evaluations" / "test-K21-fp32-first40.json").read_text())
    assert kept["epochs_trained"] == 2


def test_an_experiments_thread_count_must_be_positive(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "burda_table.py"), "--threads", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "--threads: must be at least 1, got 0" in r.stderr
    assert list(tmp_path.iterdir()) == []


def _timeless(stats):
    import dataclasses

    return dataclasses.replace(stats, seconds=0.0)


def test_early_stopping_smoke(tmp_path):
    import json

    from pyro_vae.runs import RunDir

    rows = _run(
        "early_stopping.py",
        tmp_path,
        *("--epochs", "12", "--patiences", "1,3", "--seeds", "0", "--eval-samples", "8"),
        *("--latent-dim", "2", "--hidden", "16", "--lr", "0.03"),  # a rate at which both stop
    )
    assert [r["patience"] for r in rows] == ["none", "1", "3"]
    assert [r["stopped"] for r in rows] == ["False", "True", "True"]
    runs = tmp_path / "runs"
    reference = RunDir(runs / "seed0-reference").read_metrics()
    assert len(reference) == 12 and all(math.isfinite(r.val_bound) for r in reference)
    kept = {}
    for row in rows:
        name = "reference" if row["patience"] == "none" else f"P{row['patience']}"
        history = RunDir(runs / f"seed0-{name}").read_metrics()
        # early stopping cuts training short only
        assert [_timeless(r) for r in history] == [_timeless(r) for r in reference[: len(history)]]
        trained, best = int(row["epochs_trained"]), int(row["best_epoch"])
        watched = [r.val_bound for r in history]
        assert best == watched.index(max(watched)) + 1 and trained == len(history)
        if row["stopped"] == "True":
            assert trained - best == int(row["patience"])
        else:
            assert trained == 12
        for which, suffix in (("best", ""), ("last", "-last")):
            path = runs / f"seed0-{name}" / "evaluations" / f"test-K8-fp32{suffix}.json"
            kept[name, which] = json.loads(path.read_text())
            assert float(row[f"log_px_{which}"]) == kept[name, which]["log_px"]
        assert kept[name, "best"]["epochs_trained"] == best
        assert kept[name, "last"]["epochs_trained"] == trained
        if best == trained:  # the best checkpoint is the last
            assert float(row["best_minus_last"]) == 0.0 and float(row["best_minus_last_se"]) == 0
        else:  # the mean of paired differences is the difference of the means
            gap = kept[name, "best"]["log_px"] - kept[name, "last"]["log_px"]
            assert float(row["best_minus_last"]) == pytest.approx(gap, abs=1e-9)
            assert float(row["best_minus_last_se"]) > 0
        gap = kept[name, "best"]["log_px"] - kept["reference", "last"]["log_px"]
        assert float(row["best_minus_reference"]) == pytest.approx(gap, abs=1e-9)
    assert (tmp_path / "early_stopping.png").stat().st_size > 1000
    assert "| 0 | none | 12 |" in (tmp_path / "table.md").read_text()


def test_seed_recipe_smoke(tmp_path):
    rows = _run_script("seed_recipe.py", tmp_path, "--lambdas", "0.01,0.1")
    assert len(rows) == 2 and all(row["data"] == "dequantised" for row in rows)
    assert (tmp_path / "samples.png").stat().st_size > 1000


def test_seed_recipe_is_lambda_times_the_gaussian_elbo():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        from seed_recipe import gradient_check
    finally:
        sys.path.pop(0)
    for lam in (0.003, 0.1):
        c = gradient_check(lam)
        assert c["value_difference"] < 1e-9
        assert c["max_gradient_difference"] < 1e-9 * c["gradient_norm"]


def test_run_all_collects_tables(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "run_all.py"),
            "--out",
            str(tmp_path),
            "--scripts",
            "ppca_bound.py,swap_priors.py",
            "--extra",
            "--epochs 1 --eval-samples 8 --latent-dim 2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    results = (tmp_path / "results.md").read_text()
    assert "## ppca_bound.py" in results and "## swap_priors.py" in results
    assert results.count("| guide | K |") == 1 and "| variant |" in results


def test_precision_experiment_measures_a_small_nonzero_difference(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import precision
    finally:
        sys.path.pop(0)
    assert precision.main(["--out", str(tmp_path), "--epochs", "2", "--eval-samples", "50"]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    r = precision.compare_precisions(tmp_path / "run", 50)
    assert 0 < r["max_abs_diff"] < 0.1  # bf16 networks really differ, by little
    assert abs(r["mean_diff"]) <= r["max_abs_diff"]
    assert r["log_px_bf16"] - r["log_px_fp32"] == pytest.approx(r["mean_diff"], abs=1e-9)
    assert "| bf16 |" in (tmp_path / "table.md").read_text()


def test_estimators_smoke(tmp_path):
    rows = _run(
        "estimators.py",
        tmp_path,
        *("--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--points", "12"),
        *("--iwae-ks", "1,25", "--refined-k", "25", "--ais-steps", "3,6", "--ais-points", "4"),
        *("--auto-smc-particles", "8", "--bdmc-points", "4", "--bdmc-steps", "3"),
    )
    methods = {(r["model"], r["data"], r["method"]) for r in rows}
    for model in ("ELBO", "IWAE"):
        for method in ("iwae", "refined", "ais", "auto"):
            assert (model, "test", method) in methods
        assert (model, "simulated", "bdmc upper (reverse AIS)") in methods
    assert all(float(r["seconds_per_1000"]) > 0 for r in rows)
    refined = [r for r in rows if r["method"] == "refined" and r["data"] == "test"]
    assert all(0 <= float(r["frac_khat_above_0.7"]) <= 1 for r in refined)
    assert (tmp_path / "estimators.png").read_bytes()[:4] == b"\x89PNG"
    assert "| model | data | method |" in (tmp_path / "table.md").read_text()


def test_workflow_checks_smoke(tmp_path):
    small = ["--num-datapoints", "30", "--num-draws", "10", "--num-simulations", "40"]
    sbc = ["--sbc-draws", "19", "--sbc-proposals", "20", "--iwae-k", "2"]
    rows = _run_script("workflow_checks.py", tmp_path, *small, *sbc)
    assert [r["variant"] for r in rows] == [
        "bernoulli-trace",
        "gaussian-learned-trace",
        "bernoulli-iwae2",
    ]
    assert [r["objective"] for r in rows] == ["trace", "trace", "iwae"]
    for r in rows:
        assert 0 <= float(r["p_log_lik"]) <= 1 and int(r["coordinates"]) == 2
        assert 0 < float(r["ess_median"]) <= 20
    assert (tmp_path / "sbc_coverage.png").stat().st_size > 1000
    assert (tmp_path / "bernoulli-iwae2-sbc-ecdf.png").stat().st_size > 1000
    assert "| bernoulli-trace |" in (tmp_path / "table.md").read_text()


def test_equal_time_smoke(tmp_path):
    from pyro_vae.runs import RunDir

    flags = ["--seconds", "1.5", "--latent-dim", "2", "--hidden", "16", "--conv-hidden", "8"]
    flags += ["--conv-channels", "4,8", "2,4", "--eval-samples", "8", "--test-points", "40"]
    rows = _run("equal_time.py", tmp_path, *flags, "--threads", "1")
    assert [(r["variant"], r["channels"], r["hidden"]) for r in rows] == [
        ("mlp", "", "16"),
        ("conv-4-8", "4,8", "8"),
        ("conv-2-4", "2,4", "8"),
    ]
    for row in rows:
        run = RunDir(tmp_path / "runs" / row["variant"])
        seconds = [r.seconds for r in run.read_metrics()]
        # each trained until the epoch whose time reached the budget, and no longer
        assert sum(seconds[:-1]) < 1.5 <= sum(seconds) == pytest.approx(float(row["train_seconds"]))
        assert int(row["epochs"]) == len(seconds) and run.read_config().model.net == row["net"]
        (kept,) = run.select_evaluations(num_samples=8)
        assert kept.evaluation.num_datapoints == 40
        assert float(row["log_px"]) == kept.evaluation.log_px
    assert float(rows[0]["log_px_minus_first"]) == 0.0 == float(rows[0]["log_px_minus_first_se"])
    for row in rows[1:]:  # the difference of the means, its error above the Monte Carlo errors
        diff = float(row["log_px"]) - float(rows[0]["log_px"])
        assert float(row["log_px_minus_first"]) == pytest.approx(diff, abs=1e-9)
        assert float(row["log_px_minus_first_se"]) > float(row["log_px_stderr"])
    # at the shortest run's time its own last epoch, the other's between two of its epochs
    shortest = min(rows, key=lambda r: float(r["train_seconds"]))
    assert float(shortest["val_elbo_at_common_time"]) == pytest.approx(float(shortest["val_elbo"]))
    for row in rows:  # no value only for a run whose first epoch ended after that time
        first = RunDir(tmp_path / "runs" / row["variant"]).read_metrics()[0].seconds
        at = float(row["val_elbo_at_common_time"])
        assert math.isnan(at) == (first > float(shortest["train_seconds"]))
    assert RunDir(tmp_path / "runs" / "conv-2-4").read_config().model.channels == (2, 4)
    assert "| conv-4-8 | 4,8; 8 |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "equal_time.png").stat().st_size > 1000
    refused = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "equal_time.py"), "--seconds", "1"]
        + ["--nets", "mlp,mlp", "--out", str(tmp_path / "again")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "--nets" in refused.stderr
    assert not (tmp_path / "again").exists()
