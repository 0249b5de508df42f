"""environment.yml (conda, for GPU users) must offer everything pyproject.toml declares."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name where they differ.
CONDA_NAMES = {"torch": "pytorch"}


def _conda_specs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                if not line.startswith("-"):
                    req = Requirement(line)
                    pip[req.name.lower()] = str(req.specifier)
            continue
        name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", dep.split("#")[0].strip()).groups()
        conda[name.lower()] = spec.strip()
    return env, conda, pip


def test_environment_covers_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    _, conda, pip = _conda_specs()
    missing = []
    for line in project["dependencies"]:
        req = Requirement(line)
        name = req.name.lower()
        if name in pip:
            continue
        conda_name = CONDA_NAMES.get(name, name)
        if conda_name not in conda:
            missing.append(line)
            continue
        # Pins must agree: conda writes ==X as =X.
        spec = conda[conda_name].replace("==", "=")
        want = str(req.specifier).replace("==", "=")
        assert sorted(spec.split(",")) == sorted(want.split(",")) or (not want and not spec), \
            f"{name}: pyproject says {want!r}, environment.yml says {spec!r}"
    assert not missing, f"environment.yml lacks: {missing}"


def test_environment_installs_the_package_and_python_version():
    env, conda, pip = _conda_specs()
    assert env["channels"] == ["conda-forge"]
    pip_lines = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert "-e ." in pip_lines
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py = conda["python"].lstrip("=")
    from packaging.specifiers import SpecifierSet
    assert py in SpecifierSet(project["requires-python"])
