"""The benchmark scripts run and keep their JSON interface (slow: they measure for real)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_benchmark(script: str, *args) -> None:
    """``python benchmarks/SCRIPT ARGS``, which must succeed."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_bench_quick_json_interface(tmp_path):
    out = tmp_path / "b.json"
    _run_benchmark("bench.py", "--quick", "--eval-points", 40, "--json", out)
    d = json.loads(out.read_text())
    assert d["device"] == "cpu"
    for row in d["train"]:
        assert {
            "batch_size",
            "elbo",
            "pyro_images_per_s",
            "reference_images_per_s",
            "ratio",
        } <= set(row)
        assert row["ratio"] == pytest.approx(
            row["reference_images_per_s"] / row["pyro_images_per_s"], rel=1e-6
        )
    assert d["evaluate"]["num_datapoints"] == 40  # --eval-points
    assert {row["elbo"] for row in d["conv"]["rows"]} == {"trace", "meanfield"}
    assert all(row["ratio"] > 0 for row in d["conv"]["rows"])
    layout = d["conv_layout"]  # the quick run's IWAE k=5 step in both activation layouts
    assert layout["particles"] == 5
    assert layout["speedup"] == pytest.approx(
        layout["default_ms_per_step"] / layout["channels_last_ms_per_step"], rel=1e-6
    )
    assert {row["precision"] for row in d["train"]} == {"fp32", "bf16"}
    for row in d["train"]:  # measured in a child process: a step needs some memory, not gigabytes
        assert 0 < row["pyro_peak_memory_mb"] < 2000 and 0 < row["reference_peak_memory_mb"] < 2000
    assert {
        "num_samples",
        "num_datapoints",
        "batched_s",
        "loop_s",
        "speedup",
        "peak_memory_mb",
        "tflops",
        "bf16_batched_s",
        "bf16_max_abs_diff_log_px",
    } <= set(d["evaluate"])
    assert (
        0
        <= abs(d["evaluate"]["bf16_mean_diff_log_px"])
        <= d["evaluate"]["bf16_max_abs_diff_log_px"]
    )
    assert d["evaluate"]["bf16_max_abs_diff_log_px"] < 0.5  # bf16 networks: close, not exact
    for row in d["overhead"]["rows"]:
        assert row["ratio"] == pytest.approx(
            row["pyro_us_per_step"] / row["reference_us_per_step"], rel=1e-6
        )


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    _run_benchmark("scaling.py", "--quick", "--json", out, "--png", png)
    d = json.loads(out.read_text())
    assert len(d["train"]["seconds"]) == 3 and len(d["evaluate"]["seconds"]) == 3
    assert png.stat().st_size > 2000


@pytest.mark.slow
def test_alternatives_runs(tmp_path):
    out = tmp_path / "a.json"
    _run_benchmark("alternatives.py", "--json", out)
    d = json.loads(out.read_text())
    assert [row["what"].split(",")[0] for row in d["compile"]] == ["evaluate K=1000", "train step"]
    assert all(row["eager"] > 0 and row["compiled"] > 0 for row in d["compile"])
    assert d["jit"]["DeviceTrace_ELBO"] > 0 and d["jit"]["JitTrace_ELBO"] > 0


@pytest.mark.slow
def test_distributed_benchmark_json_interface(tmp_path):
    out = tmp_path / "d.json"
    sizes = ("--rows", 512, "--eval-rows", 64, "--num-samples", 50)
    _run_benchmark("distributed.py", *sizes, "--ais-rows", 16, "--ais-steps", 3, "--json", out)
    d = json.loads(out.read_text())
    assert d["one_process_ms_per_step"] > 0 and d["two_processes_ms_per_step"] > 0
    assert d["ratio_two_over_one"] == pytest.approx(
        d["two_processes_ms_per_step"] / d["one_process_ms_per_step"]
    )
    assert d["eval_ratio_two_over_one"] == pytest.approx(
        d["two_processes_eval_seconds"] / d["one_process_eval_seconds"]
    )
    assert d["ais_ratio_two_over_one"] == pytest.approx(
        d["two_processes_ais_seconds"] / d["one_process_ais_seconds"]
    )


def _conv_layout(k: str, timeout: int) -> subprocess.CompletedProcess:
    """``benchmarks/bench.py --conv-layout K`` in a subprocess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--conv-layout", k],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_conv_layout_refuses_a_k_below_1():
    r = _conv_layout("0", timeout=120)
    assert r.returncode == 2 and "--conv-layout: K must be at least 1, got 0" in r.stderr


@pytest.mark.slow
def test_bench_conv_layout_times_both_layouts():
    r = _conv_layout("2", timeout=900)
    assert r.returncode == 0, r.stderr
    assert "conv IWAE k=2: channels_last " in r.stderr and "default layout" in r.stderr


def test_khat_speed_runs_and_agrees_with_arviz():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "khat_speed.py"), "--datapoints", "30"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "30 datapoints x K=1000: batched" in r.stdout
    assert float(r.stdout.rsplit("difference ", 1)[1]) < 1e-12


@pytest.mark.slow
def test_certified_cost_runs_and_counts_certified_points(tmp_path):
    from pyro_vae.cli import main

    run = tmp_path / "r"
    tiny = ["--epochs", "2", "--hidden", "32", "--latent-dim", "2", "--no-eval", "--no-progress"]
    assert main(["train", *tiny, "--out", str(run)]) == 0
    out = tmp_path / "c.json"
    _run_benchmark(
        "certified_cost.py", run, "--first", "30", "--methods", "iwae,auto", "--json", out
    )
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["iwae", "auto"]
    assert all(r["points"] == 30 and 0.0 <= r["certified"] <= 1.0 for r in rows)
    assert rows[0]["ratio_to_iwae"] == 1.0 and rows[1]["stages"] is not None
