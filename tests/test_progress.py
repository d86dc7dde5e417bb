"""Progress reports: plain lines for logs, at most one per interval, and a bar or nothing."""

import io

import pytest

from pyro_vae.progress import LineProgress, line_interval, progress_bar, progress_mode


def test_lines_report_count_share_and_time_left():
    out = io.StringIO()
    with progress_bar(4, "log p(x)", "pass", "lines", interval=0, stream=out) as bar:
        for _ in range(4):
            bar.update()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("log p(x): 1/4 passes (25%), ") and "s left" in lines[0]
    assert len(lines) == 4 and lines[-1].startswith("log p(x): 4/4 passes, done in")


def test_lines_are_rate_limited_and_short_work_is_silent():
    out = io.StringIO()
    with LineProgress(1000, "epoch 1", "step", interval=3600, stream=out) as bar:
        for _ in range(1000):
            bar.update()
    assert out.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PYRO_VAE_PROGRESS_SECONDS", "2.5")
    assert line_interval() == 2.5
    monkeypatch.setenv("PYRO_VAE_PROGRESS_SECONDS", "often")
    assert line_interval() == 10.0


@pytest.mark.parametrize(
    "given, mode",
    [(True, "bar"), (False, "off"), (None, "off"), ("lines", "lines"), ("bar", "bar")],
    ids=["true", "false", "none", "lines", "bar"],
)
def test_progress_modes(given, mode):
    assert progress_mode(given) == mode


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="progress must be"):
        progress_mode("sometimes")
