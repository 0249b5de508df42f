"""Stages 01 and 02, the hand-offs, the stage table, the demo site and source, and the report helpers never
import torch.

Each import runs in a fresh interpreter: this test process has imported torch long ago.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")
LIGHT_MODULES = [
    "nbutils.data.download",
    "nbutils.data.validate",
    "nbutils.stages",
    "nbutils.pipeline",
    "nbutils.demo.website",
    "nbutils.demo.source",
    "nbutils.reporting.grids",
    "nbutils.reporting.figures",
]


def heavy_modules_after_importing(module: str) -> list[str]:
    """The HEAVY modules in sys.modules after `import module` in a new interpreter."""
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_do_not_import_torch(module):
    assert heavy_modules_after_importing(module) == []


def test_the_check_sees_torch_when_it_is_imported():
    """Positive control: the Dataset module needs torch, and the check reports it."""
    assert "torch" in heavy_modules_after_importing("nbutils.data.datasets")
