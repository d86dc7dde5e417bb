"""The command line at its edges (issue 10): K = 1 and small K, seeds and non-finite numbers,
closed pipes, output paths, progress in logs, caveats, help and version, and the small messages."""

import json
import math
import os
import subprocess

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.jobs import Comparison, comparison_caveats
from tests.helpers import cli_command, cli_env, cli_error, evaluation_file

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", *TINY, "--out", str(out), "--no-eval"]) == 0
    return out


# item 5: K = 1 and small K
def test_k1_evaluation_is_the_elbo_and_says_k_hat_is_undefined(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "K=1 is the ELBO" in out and "1 importance sample," in out
    ev = _strict_json(evaluation_file(run_dir, 1))
    assert ev["khat_max"] is None and ev["log_px_stderr"] is None
    assert ev["log_px"] == pytest.approx(ev["elbo"])


def test_train_with_one_evaluation_sample(capsys, tmp_path):
    assert main(["train", *TINY, "--eval-samples", "1", "--out", str(tmp_path / "r")]) == 0
    assert "K=1 is the ELBO" in capsys.readouterr().out


def test_small_k_says_it_is_too_small_for_psis_and_writes_valid_json(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "too small for PSIS" in out and "unreliable" not in out
    ev = _strict_json(evaluation_file(run_dir, 5))
    assert ev["num_khat_above_threshold"] is None and "too small" in ev["khat_note"]


def test_k_hat_is_computed_from_21_samples(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    ev = _strict_json(evaluation_file(run_dir, 21))
    assert ev["khat_max"] is not None and 0 <= ev["num_khat_above_threshold"] <= 359
    assert "khat_note" not in ev


def test_a_k_whose_log_weights_cannot_fit_is_refused(capsys, run_dir):
    err = cli_error(capsys, "evaluate", str(run_dir), "--num-samples", "100000000")
    assert "free memory" in err


# item 7: seeds and non-finite numbers
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed must be an integer from 0"),
        (["--seed", "99999999999999999999999"], "--seed must be an integer from 0"),
        (["--binarize-seed", "99999999999999999999999"], "--binarize-seed must be"),
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--lr", "nan"], "--lr must be a finite number"),
        (["--beta", "inf"], "--beta must be a finite number"),
        (["--gaussian-scale", "inf"], "--gaussian-scale must be a finite number"),
        (["--scale-floor", "inf"], "--scale-floor must be a finite number"),
    ],
    ids=[
        "seed-negative",
        "seed-huge",
        "binarize-seed-huge",
        "lr-inf",
        "lr-nan",
        "beta-inf",
        "gaussian-scale-inf",
        "scale-floor-inf",
    ],
)
def test_out_of_range_numbers_are_refused(capsys, tmp_path, argv, message):
    assert message in cli_error(capsys, "train", *TINY, "--out", str(tmp_path / "r"), *argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num", "99999999999999999999999"], "--num must be between 1 and"),
        (["--num", "0"], "--num must be between 1 and"),
        (["--seed", "-3"], "--seed must be an integer from 0"),
    ],
    ids=["num-huge", "num-zero", "seed-negative"],
)
def test_sample_refuses_out_of_range_numbers(capsys, run_dir, argv, message):
    assert message in cli_error(capsys, "sample", str(run_dir), *argv)


# item 8: a closed pipe
def test_evaluate_into_a_closed_pipe_has_no_traceback(run_dir):
    with subprocess.Popen(
        cli_command("evaluate", run_dir, "--num-samples", 30),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    ) as proc:
        first = proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does
        err = proc.stderr.read().decode()
        proc.wait(timeout=300)
    assert first.startswith(b"digits (test split")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 0
    assert evaluation_file(run_dir, 30, suffix=".nc").is_file()


# item 9: output paths of the wrong kind
def test_output_paths_of_the_wrong_kind_are_refused(capsys, run_dir, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    assert main(["evaluate", str(run_dir), "--num-samples", "30", "--no-progress"]) == 0
    capsys.readouterr()
    err = cli_error(capsys, "compare", str(run_dir), "--markdown", str(tmp_path))
    assert "--markdown" in err and "is a directory" in err
    assert "is a directory" in cli_error(capsys, "compare", str(run_dir), "--csv", str(tmp_path))
    assert "lies under" in cli_error(
        capsys, "compare", str(run_dir), "--csv", str(a_file / "t.csv")
    )
    assert "is a file" in cli_error(capsys, "plot", str(run_dir), "--out", str(a_file))
    assert "lies under" in cli_error(capsys, "plot", str(run_dir), "--out", str(a_file / "plots"))
    assert "is a file" in cli_error(capsys, "train", *TINY, "--out", str(a_file))
    assert "lies under" in cli_error(capsys, "train", *TINY, "--out", str(a_file / "run"))
    assert "lies under" in cli_error(capsys, "sample", str(run_dir), "--out", str(a_file / "s.png"))
    assert "PNG" in cli_error(capsys, "sample", str(run_dir), "--out", str(tmp_path / "s.jpg"))
    assert a_file.read_text() == "not a directory"


# item 10: progress in a log
def test_long_work_prints_plain_progress_lines_when_stderr_is_not_a_terminal(run_dir):
    r = subprocess.run(
        cli_command("evaluate", run_dir, "--num-samples", 200, "--chunk-size", 10),
        capture_output=True,
        text=True,
        env=cli_env(PYRO_VAE_PROGRESS_SECONDS="0"),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all(line.startswith("log p(x) iwae: ") for line in lines), r.stderr
    assert "datapoints (" in lines[0] and "s left" in lines[0]  # by blocks of 64 datapoints
    assert lines[-1].startswith("log p(x) iwae: 359/359 datapoints, done in")
    assert "\r" not in r.stderr  # no bar redrawn in place


# item 11: compare's caveat
def _row(run, share):
    return Comparison(run, -1.0, 0.01, -1.1, 0.1, 0.9, share, 0.0, 0.0, "m")


def test_compare_caveat_names_the_share_of_unreliable_points():
    lines = comparison_caveats([_row("a", 0.64), _row("b", 0.0), _row("c", 0.05)])
    assert len(lines) == 2
    assert "a: 64.0% of its datapoints have k-hat > 0.7" in lines[0] and "most" in lines[0]
    assert "c: 5.0%" in lines[1] and "some" in lines[1]
    assert "not computed" in comparison_caveats([_row("d", math.nan)])[0]


def test_compare_prints_the_caveat(capsys, run_dir, tmp_path):
    assert main(["evaluate", str(run_dir), "--num-samples", "5", "--no-progress"]) == 0
    capsys.readouterr()
    md = tmp_path / "t.md"
    assert main(["compare", str(run_dir), "--markdown", str(md), "--num-samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "caveat:" in out and "k-hat was not computed" in out
    assert "caveat:" in md.read_text()


# item 12: help, version and small messages
def test_no_arguments_print_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pyro-vae") and "train" in out and "evaluate" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"pyro-vae {version('pyro_vae')}"


def test_sample_seed_and_the_real_path(capsys, run_dir, tmp_path):
    paths = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert (
            main(
                [
                    "sample",
                    str(run_dir),
                    "--num",
                    "4",
                    "--seed",
                    seed,
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
        said = capsys.readouterr().out.strip()
        assert said == f"wrote {tmp_path / name}.png"
        paths[name] = (tmp_path / f"{name}.png").read_bytes()
    assert not (tmp_path / "a").exists()
    assert paths["a"] == paths["b"] != paths["c"]
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["sample", str(run_dir), "--num", "4", "--out", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {folder / 'samples.png'}"
    assert (folder / "samples.png").is_file()
    new_folder = tmp_path / "new"
    assert main(["sample", str(run_dir), "--num", "4", "--out", f"{new_folder}/"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {new_folder / 'samples.png'}"


def test_evaluate_names_both_files_it_wrote(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "30", "--no-progress"]) == 0
    out = capsys.readouterr().out
    json_path, nc_path = evaluation_file(run_dir, 30), evaluation_file(run_dir, 30, suffix=".nc")
    assert f"wrote {json_path} and {nc_path}" in out


def test_one_epoch_is_singular(capsys, run_dir):
    assert main(["evaluate", str(run_dir), "--num-samples", "30", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 epoch:" in out and "1 epochs" not in out
    assert main(["train", *TINY, "--out", str(run_dir), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already trained for 1 epoch " in out


# items 1 and 4 at the command line: the library's facts plus the flag to change
def test_grey_data_for_a_bernoulli_get_the_flag_hint(capsys, tmp_path):
    np.savez(tmp_path / "grey.npz", x=np.random.default_rng(0).random((40, 6)))
    err = cli_error(
        capsys,
        "train",
        *TINY,
        "--dataset",
        str(tmp_path / "grey.npz"),
        "--binarize",
        "none",
        "--out",
        str(tmp_path / "r"),
    )
    assert "Bernoulli likelihood needs binary data" in err and "[0, 1]" in err
    assert err.endswith(
        "(--binarize dynamic or --binarize static (without --dequantize), or --likelihood "
        "continuous-bernoulli for values in [0, 1] (with --dequantize uniform for pixel levels))"
    )


def test_divergence_on_unscaled_data_does_not_advise_a_smaller_lr(capsys, tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 6)) * 1e30
    np.savez(tmp_path / "huge.npz", x=x)
    err = cli_error(
        capsys,
        "train",
        *TINY,
        "--dataset",
        str(tmp_path / "huge.npz"),
        "--binarize",
        "none",
        "--likelihood",
        "gaussian-learned",
        "--out",
        str(tmp_path / "r"),
        "--log-every",
        "1",
    )
    assert "rescale" in err and "--lr" not in err, err


# item 5: numbers that are not finite in the written JSON, and their readers
def test_json_safe_writes_every_non_finite_number_as_null():
    from pyro_vae.runs import json_safe

    value = {"a": math.nan, "b": [math.inf, 1.0, (2, -math.inf)], "c": {"d": -math.inf}, "e": "x"}
    assert json_safe(value) == {"a": None, "b": [None, 1.0, [2, None]], "c": {"d": None}, "e": "x"}
    json.dumps(json_safe(value), allow_nan=False)  # strict JSON


def test_a_minus_inf_estimate_ranks_last_and_is_shown(capsys, run_dir, tmp_path):
    import shutil

    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    path = evaluation_file(other, 21)
    summary = json.loads(path.read_text())
    summary.update(log_px=None, elbo=None, log_px_stderr=None)  # how -inf is written
    path.write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["compare", str(other), str(run_dir), "--num-samples", "21"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert str(run_dir) in table[1] and str(other) in table[2] and "-inf" in table[2]


def test_an_unbounded_stderr_is_not_called_one_sample():
    from pyro_vae.jobs import format_evaluation
    from pyro_vae.records import Evaluation

    summary = {
        "dataset": "d",
        "split": "test",
        "binarize": "none",
        "num_datapoints": 3,
        "num_samples": 50,
        "epochs_trained": 2,
        "log_px": None,
        "log_px_stderr": None,
        "elbo": None,
        "gap": None,
        "ess_mean": 0.0,
        "ess_min": 0.0,
    }
    text = format_evaluation(Evaluation.from_dict(summary))
    assert "-inf nats" in text and "unbounded" in text and "one sample" not in text


@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_train_into_a_closed_pipe_finishes_the_run(tmp_path, stderr_too):
    out = tmp_path / "r"
    argv = ["train", "--epochs", "3", "--hidden", "16", "--latent-dim", "2", "--out", str(out)]
    with subprocess.Popen(
        cli_command(*argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE,
        env=cli_env(PYRO_VAE_PROGRESS_SECONDS="0"),
    ) as proc:
        proc.stdout.readline()
        proc.stdout.close()  # `| head -1`, of stdout or of `2>&1`
        err = b"" if stderr_too else proc.stderr.read()
        proc.wait(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    from pyro_vae.runs import RunDir

    assert RunDir(out).read_metrics()[-1].epoch == 3
    assert [e.setting for e in RunDir(out).evaluations()] == ["test-K1000-fp32"]


@pytest.mark.parametrize(
    "data",
    [
        ["--binarize", "dynamic"],
        ["--binarize", "none", "--dequantize", "uniform", "--likelihood", "beta"],
    ],
    ids=["dynamic-binarisation", "dequantisation"],
)
def test_the_training_split_is_evaluated_as_the_likelihood_scores_it(capsys, tmp_path, data):
    out = tmp_path / "r"
    assert main(["train", *TINY, *data, "--no-eval", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--split", "train", "--num-samples", "21"]) == 0
    ev = json.loads(evaluation_file(out, 21, split="train").read_text())
    assert ev["num_datapoints"] == 1258 and math.isfinite(ev["log_px"])
    assert main(["evaluate", str(out), "--split", "train", "--num-samples", "21"]) == 0
    assert json.loads(evaluation_file(out, 21, split="train").read_text())["log_px"] == ev["log_px"]


def test_a_new_run_goes_into_a_new_or_empty_directory(capsys, run_dir, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    err = cli_error(capsys, "train", *TINY, "--out", str(full))
    assert "is not empty and holds no run (notes.txt)" in err
    err = cli_error(capsys, "train", *TINY, "--out", str(run_dir / "evaluations" / "x"))
    assert f"lies inside the run directory {run_dir}" in err
    assert not (run_dir / "evaluations" / "x").exists()
    (tmp_path / "empty").mkdir()
    assert main(["train", *TINY, "--no-eval", "--out", str(tmp_path / "empty")]) == 0


def test_runs_trained_on_different_data_are_not_comparable(capsys, run_dir, tmp_path):
    other = tmp_path / "static"
    assert (
        main(["train", *TINY, "--binarize", "static", "--eval-samples", "21", "--out", str(other)])
        == 0
    )
    assert main(["evaluate", str(run_dir), "--num-samples", "21", "--no-progress"]) == 0
    capsys.readouterr()
    err = cli_error(capsys, "compare", str(run_dir), str(other), "--num-samples", "21")
    assert "trained and evaluated on different data (binarize: 'dynamic' vs 'static')" in err
    assert "re-evaluate" not in err


def test_ctrl_c_during_evaluate_is_one_line(run_dir):
    import signal
    import time

    with subprocess.Popen(
        cli_command(
            "evaluate", run_dir, "--num-samples", 200000, "--chunk-size", 50, "--no-progress"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ},
        # Ctrl-C as a terminal sends it: a test suite started in the background of a shell
        # without job control ignores SIGINT, and its children inherit that (POSIX)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        time.sleep(6)  # past the imports, into the estimate
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "pyro-vae: interrupted" in text


def test_compare_refuses_a_run_given_twice_and_evaluate_a_file(capsys, run_dir, tmp_path):
    err = cli_error(capsys, "compare", str(run_dir), str(run_dir) + "/")
    assert "the same run more than once" in err
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert "is a file, not a run directory" in cli_error(capsys, "evaluate", str(a_file))
