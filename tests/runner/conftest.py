"""The runner tests' workspace: fixture notebooks under pipeline names, a profile, an outputs folder."""

import shutil
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parents[1] / "fixtures" / "notebooks"


def _make_workspace(root: Path, notebooks: dict, common=None, run="fx") -> tuple[Path, Path, Path]:
    """Notebooks dir with the fixtures under pipeline names, a profile, and an outputs dir."""
    nb_dir = root / "notebooks"
    nb_dir.mkdir(parents=True)
    shutil.copy(FIXTURES / "echo.ipynb", nb_dir / "processdata_01.ipynb")
    shutil.copy(FIXTURES / "second.ipynb", nb_dir / "processdata_02.ipynb")
    profile = root / "fixture_profile.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "description": "fixture run <b>",
                "run": run,
                "common": common if common is not None else {"seed": 7},
                "notebooks": notebooks,
            }
        )
    )
    return nb_dir, profile, root / "outputs"


@pytest.fixture(scope="session")
def make_workspace():
    """`make_workspace(root, notebooks, common=None, run="fx") -> (notebooks_dir, profile, outputs_dir)`."""
    return _make_workspace
