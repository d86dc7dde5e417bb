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
