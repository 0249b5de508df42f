"""Package conventions a linter does not check: relative imports, no module named like a standard one."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbutils"


def absolute_self_imports(source: str) -> list[int]:
    """Line numbers of `import nbutils...` / `from nbutils... import` statements in `source`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "nbutils" for a in node.names):
            lines.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "nbutils"
        ):
            lines.append(node.lineno)
    return lines


def test_the_checker_finds_absolute_imports():
    assert absolute_self_imports("import os\nfrom nbutils.files import x\nimport nbutils.data as d\n") == [
        2,
        3,
    ]
    assert absolute_self_imports("from .files import x\nfrom ..data import cache\n") == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_package_modules_import_siblings_relatively(path):
    assert absolute_self_imports(path.read_text(encoding="utf-8")) == [], f"{path}: use a relative import"


def test_no_module_is_named_like_a_standard_library_module():
    clashes = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names
    )
    assert clashes == []
