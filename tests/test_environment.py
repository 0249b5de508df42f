"""environment.yml (conda, for GPU users) must offer everything pyproject.toml declares, and
requirements.lock (what `make install` installs) must pin exactly what pyproject.toml asks for."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# PyPI name -> conda-forge name where they differ.
CONDA_NAMES = {"torch": "pytorch"}
# A lock line: `name==version` and nothing else (no extras, markers, hashes, options or local labels).
LOCK_LINE = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==([0-9][A-Za-z0-9.!]*)")


def _conda_specs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                if not line.startswith("-"):
                    req = Requirement(line)
                    pip[canonicalize_name(req.name)] = str(req.specifier)
            continue
        name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", dep.split("#")[0].strip()).groups()
        conda[canonicalize_name(name)] = spec.strip()
    return env, conda, pip


def test_environment_covers_every_pyproject_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    _, conda, pip = _conda_specs()
    missing = []
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in pip:
            continue
        conda_name = CONDA_NAMES.get(name, name)
        if conda_name not in conda:
            missing.append(line)
            continue
        # Pins must agree: conda writes ==X as =X.
        spec = conda[conda_name].replace("==", "=")
        want = str(req.specifier).replace("==", "=")
        assert sorted(spec.split(",")) == sorted(want.split(",")) or (not want and not spec), (
            f"{name}: pyproject says {want!r}, environment.yml says {spec!r}"
        )
    assert not missing, f"environment.yml lacks: {missing}"


def test_environment_installs_the_package_and_python_version():
    env, conda, pip = _conda_specs()
    assert env["channels"] == ["conda-forge"]
    pip_lines = [d for d in env["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert "-e ." in pip_lines
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py = conda["python"].lstrip("=")
    assert py in SpecifierSet(project["requires-python"])


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def _lock_lines():
    """The lock's requirement lines: everything but blank lines and comments (`# ...`, `    # via ...`)."""
    return [
        line for line in LOCK.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _lock():
    """canonical name -> locked version string."""
    return {canonicalize_name(m.group(1)): m.group(2) for m in map(LOCK_LINE.fullmatch, _lock_lines()) if m}


def test_lock_lines_are_exact_pins_without_duplicates():
    lines = _lock_lines()
    assert lines, "requirements.lock pins nothing"
    bad = [line for line in lines if not LOCK_LINE.fullmatch(line)]
    assert not bad, f"requirements.lock lines that are not exactly name==version: {bad}"
    for line in lines:
        version = Version(LOCK_LINE.fullmatch(line).group(2))
        assert version.local is None, f"{line}: a local version label would not install on other machines"
    names = [canonicalize_name(LOCK_LINE.fullmatch(line).group(1)) for line in lines]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    assert not duplicated, f"requirements.lock pins these more than once: {duplicated}"
    assert "nbutils" not in names, "requirements.lock must not pin the project itself"


def test_lock_says_how_to_refresh_it():
    header = [line for line in LOCK.read_text().splitlines()[:20] if line.startswith("#")]
    assert any("make lock" in line for line in header)


def test_lock_pins_every_pyproject_dependency_within_its_specifier():
    lock = _lock()
    missing, outside = [], []
    for req in _pyproject_requirements():
        if req.marker and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name not in lock:
            missing.append(str(req))
        elif not req.specifier.contains(lock[name], prereleases=True):
            outside.append(f"{req} (lock: {lock[name]})")
    assert not missing, f"requirements.lock lacks (run `make lock`): {missing}"
    assert not outside, f"requirements.lock pins outside pyproject.toml (run `make lock`): {outside}"


def test_exact_pins_agree_across_pyproject_environment_and_lock():
    _, conda, pip = _conda_specs()
    lock = _lock()
    pyproject = {canonicalize_name(r.name): r for r in _pyproject_requirements()}
    by_conda_name = {CONDA_NAMES.get(n, n): n for n in pyproject}
    # Every version environment.yml writes (conda `=X`, pip `==X`) is pyproject's for that package.
    for conda_name, spec in conda.items():
        if conda_name in by_conda_name and spec:
            want = str(pyproject[by_conda_name[conda_name]].specifier)
            assert sorted(spec.replace("==", "=").split(",")) == sorted(want.replace("==", "=").split(",")), (
                f"{conda_name}: environment.yml says {spec!r}, pyproject says {want!r}"
            )
    for name, spec in pip.items():
        if name in pyproject and spec:
            assert SpecifierSet(spec) == pyproject[name].specifier, (
                f"{name}: environment.yml pip says {spec!r}"
            )
    # Every exact pyproject pin is the lock's version, character for character.
    for name, req in pyproject.items():
        for spec in req.specifier:
            if spec.operator == "==":
                assert lock.get(name) == spec.version, (
                    f"{name}: pyproject pins {spec.version}, requirements.lock says {lock.get(name)}"
                )


def test_installed_torch_and_transformers_are_the_locked_versions():
    """run.json records these versions; they must be the ones the lock (and so the tests) stand for."""
    lock = _lock()
    for name in ("torch", "transformers"):
        installed = metadata.version(name)
        # ==2.13.0 also matches a local build such as 2.13.0+cpu (PEP 440), and nothing else.
        assert SpecifierSet(f"=={lock[name]}").contains(installed, prereleases=True), (
            f"{name} {installed} is installed but requirements.lock pins {lock[name]} (run `make install`)"
        )
