"""Every experiment script runs end to end with tiny arguments (in a subprocess)."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ppca_bound_smoke(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "ppca_bound.py"),
            "--out",
            str(tmp_path),
            "--ks",
            "1,10,100",
            "--points",
            "20",
            "--repeats",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines()))
    assert len(rows) == 6
    wrong = [float(row["L_K"]) for row in rows if row["guide"] == "wrong"]
    assert wrong == sorted(wrong)  # the bound rises with K
    exact = [float(row["gap_to_exact"]) for row in rows if row["guide"] == "exact"]
    assert max(abs(g) for g in exact) < 1e-8
    assert (tmp_path / "bound_vs_k.png").stat().st_size > 1000
    assert "| guide | K |" in (tmp_path / "table.md").read_text()


def _run_script(name, tmp_path, *extra):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / name),
            "--out",
            str(tmp_path),
            "--epochs",
            "1",
            "--eval-samples",
            "8",
            "--latent-dim",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines()))


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
