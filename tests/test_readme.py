"""The README's and docs' Python examples run as written, and the docs' commands match the CLI."""

import re
from pathlib import Path

import pytest

from pyro_vae.cli import build_parser
from pyro_vae.config import SECTIONS, RunConfig
from pyro_vae.options import declared, flag_of

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
CLI = DOCS["cli.md"]
BLOCKS = [
    block
    for text in (README, *DOCS.values())
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)
]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"python block {index} of README.md and docs/", "exec"), {})


def test_readme_links_every_page_of_the_docs_and_each_link_exists():
    links = set(re.findall(r"\]\((docs/[^)#]+)\)", README))
    assert {f"docs/{name}" for name in DOCS} <= links
    for text, base in ((README, ROOT), *((t, ROOT / "docs") for t in DOCS.values())):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (base / target).exists(), f"a link to a missing file: {target}"


def test_every_option_of_every_command_is_documented():
    commands = build_parser()._subparsers._group_actions[0].choices
    expected = {"train", "evaluate", "compare", "plot", "sample", "bdmc", "check", "evaluations"}
    assert set(commands) == expected
    for name, parser in commands.items():
        flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
        missing = sorted(f for f in flags - {"--help"} if f"{f}" not in CLI)
        assert not missing, f"docs/cli.md lacks {name} {missing}"
        assert f"pyro-vae {name}" in CLI
    options = {f.name for kind in SECTIONS.values() for f, _ in declared(kind)}
    assert options <= {a.dest for a in commands["train"]._actions}


def test_the_train_table_shows_each_declared_default():
    defaults = RunConfig()
    for section, kind in SECTIONS.items():
        for f, opt in declared(kind):
            value = getattr(getattr(defaults, section), f.name)
            if opt.negate or value is None:
                continue
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            rows = [r for r in CLI.splitlines() if r.startswith(f"| `{flag_of(f.name)}")]
            assert rows, f"docs/cli.md's train table lacks {flag_of(f.name)}"
            assert f"| `{shown}` |" in rows[0], f"docs/cli.md shows another default for {rows[0]}"


def methods_missing_from_the_cli_reference() -> list[str]:
    """The estimators of the table without a row in docs/cli.md's table of methods."""
    from pyro_vae.infer.estimators import ESTIMATORS

    return [name for name in ESTIMATORS if f"| `{name}`" not in CLI]


def test_every_estimator_has_a_row_in_the_cli_reference():
    assert methods_missing_from_the_cli_reference() == []
