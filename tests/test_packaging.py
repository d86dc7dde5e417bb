"""pyproject.toml declares every third-party package the library, experiments and benchmarks
import (nothing may arrive only as another package's dependency)."""

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name on PyPI, for every third-party import the code may make
DISTRIBUTIONS = {
    "arviz": "arviz",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "pyro": "pyro-ppl",
    "sklearn": "scikit-learn",
    "torch": "torch",
    "torchvision": "torchvision",
    "tqdm": "tqdm",
}
LOCAL = {"pyro_vae", "_common", "bench"}  # the package itself and the scripts' own modules


def _imported_top_level(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - LOCAL - set(sys.stdlib_module_names)


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        name = requirement.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower())
    return names


@pytest.mark.parametrize("folder", ["pyro_vae", "experiments", "benchmarks"])
def test_every_imported_package_is_declared(folder):
    imported = _imported_top_level(folder)
    unknown = imported - set(DISTRIBUTIONS)
    assert not unknown, f"{folder} imports {sorted(unknown)}: add them to DISTRIBUTIONS here"
    missing = sorted(DISTRIBUTIONS[m] for m in imported if DISTRIBUTIONS[m] not in _declared())
    assert not missing, f"pyproject.toml does not declare {missing}, imported by {folder}/"
