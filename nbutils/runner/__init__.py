"""Run the pipeline notebooks with papermill and build a shareable report (`python -m nbutils run`).

profiles.py     which notebooks a run executes, with which parameters (YAML in profiles/)
parameters.py   what each notebook declares, and merging profile / command-line values into it
execute.py      running the notebooks in order, run.json, the HTML reports
"""

from ..reporting.index_page import render_report, write_index
from .execute import run_pipeline
from .parameters import notebook_parameters, resolve_parameters
from .profiles import (
    NOTEBOOKS_DIR,
    OUTPUTS_DIR,
    PIPELINE,
    PROFILES_DIR,
    REPO_DIR,
    ParameterError,
    RunFailed,
    load_profile,
)

__all__ = [
    "NOTEBOOKS_DIR",
    "OUTPUTS_DIR",
    "PIPELINE",
    "PROFILES_DIR",
    "REPO_DIR",
    "ParameterError",
    "RunFailed",
    "load_profile",
    "notebook_parameters",
    "render_report",
    "resolve_parameters",
    "run_pipeline",
    "write_index",
]
