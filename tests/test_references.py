"""Docs and docstrings name files and modules that exist: a reference is checked, not trusted."""

import importlib
import importlib.util
import re

from nbutils.runner import REPO_DIR

# Files that refer to the code: the package, the notebooks, the README and the benchmark write-ups.
SOURCES = [
    *sorted((REPO_DIR / "nbutils").rglob("*.py")),
    *sorted((REPO_DIR / "notebooks").glob("*.ipynb")),
    REPO_DIR / "README.md",
    *sorted((REPO_DIR / "benchmarks").glob("*.md")),
]
PATH = re.compile(
    r"(?<![\w/.<>-])((?:nbutils|tests|notebooks|benchmarks|docs)/[\w./-]*\w\.(?:py|md|ipynb|yaml))\b"
)
MODULE = re.compile(r"\bnbutils(?:\.[A-Za-z_]\w*)+")
# Stable identifiers written into files, spelt like modules on purpose (each says so where it is defined).
IDENTIFIERS = {"nbutils.validate", "nbutils.demo_data"}  # NORMALISED_TAG; the demo sets' former GENERATOR id


def _resolves(dotted: str) -> bool:
    """Whether `dotted` is a module, or a module followed by attributes it has."""
    parts = dotted.split(".")
    for k in range(2, len(parts) + 1):  # the longest prefix that is a module
        if k < len(parts) and _is_module(".".join(parts[: k + 1])):
            continue
        module = ".".join(parts[:k])
        if not _is_module(module):
            return False
        obj = importlib.import_module(module)
        for name in parts[k:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent is a module, not a package
        return False


def test_cited_files_exist():
    missing = [
        f"{source.relative_to(REPO_DIR)}: {path}"
        for source in SOURCES
        for path in PATH.findall(source.read_text(encoding="utf-8"))
        if not (REPO_DIR / path).exists()
    ]
    assert not missing, "references to files that are not in the repository:\n" + "\n".join(missing)


def test_cited_modules_exist():
    missing = sorted(
        {
            f"{source.relative_to(REPO_DIR)}: {name}"
            for source in SOURCES
            for name in MODULE.findall(source.read_text(encoding="utf-8"))
            if name not in IDENTIFIERS and not _resolves(name)
        }
    )
    assert not missing, "references to modules or names that do not exist:\n" + "\n".join(missing)


def test_the_checks_catch_a_stale_reference():
    assert not _resolves("nbutils.demo_data") and not _resolves("nbutils.training.clip.DEFAULT_LEARNING_RATE")
    assert _resolves("nbutils.training.clip.TrainClipConfig.LEARNING_RATES") and _resolves("nbutils.pipeline")
    assert PATH.findall("see tests/test_notebook_configs.py and `nbutils/pipeline.py`") == [
        "tests/test_notebook_configs.py",
        "nbutils/pipeline.py",
    ]
