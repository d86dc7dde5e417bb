"""The README's Python examples run as written, and its commands match the CLI."""

import re
from pathlib import Path

import pytest

from pyro_vae.cli import TRAIN_OPTIONS, build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})


def test_every_option_of_every_command_is_documented():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "evaluate", "compare", "plot", "sample", "bdmc"}
    for name, parser in commands.items():
        flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        missing = sorted(f for f in flags - {"--help"} if f"{f}" not in README)
        assert not missing, f"README lacks {name} {missing}"
        assert f"pyro-vae {name}" in README
    assert set(TRAIN_OPTIONS) <= {a.dest for a in commands["train"]._actions}
