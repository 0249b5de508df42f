"""Profiles: which pipeline notebooks a run executes, and with which parameters (YAML in runner/profiles/)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from .. import pipeline

PIPELINE = pipeline.NAMES  # the notebooks in the order they run (nbutils/pipeline.py)

REPO_DIR = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_DIR / "notebooks"
OUTPUTS_DIR = REPO_DIR / "outputs"
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
KERNEL_NAME = "python3"
RUNNER_PARAMETERS = ("run_dir", "output_dir")  # every notebook declares these; only the runner sets them
PROFILE_KEYS = ("description", "run", "jobs", "common", "notebooks")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ParameterError(ValueError):
    """A bad profile, notebook selection or parameter; raised before any notebook runs."""


class RunFailed(RuntimeError):
    """A notebook failed; the message names it, the cell and the error."""


# ----------------------------------------------------------------------------- profiles


def load_profile(name_or_path: str | os.PathLike) -> dict:
    """Read a profile by name (`nbutils/runner/profiles/<name>.yaml`) or path; check its structure.

    Returns {name, path, description, run, jobs, common, notebooks} with `notebooks` mapping
    pipeline notebook names to parameter dicts (an empty entry becomes {}).
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise ParameterError(f"profile file {path} does not exist")
    else:
        path = PROFILES_DIR / f"{text}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
            raise ParameterError(
                f"unknown profile {text!r}{did_you_mean(text, known)}; "
                f"known profiles: {', '.join(known)} (or give a path to a .yaml file)"
            )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ParameterError(f"profile {path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ParameterError(f"profile {path}: expected a mapping with keys {', '.join(PROFILE_KEYS)}")
    errors = [
        f"profile {path}: unknown key {k!r}{did_you_mean(k, PROFILE_KEYS)}; allowed: {', '.join(PROFILE_KEYS)}"
        for k in raw
        if k not in PROFILE_KEYS
    ]
    common = raw.get("common") or {}
    notebooks = raw.get("notebooks") or {}
    if not isinstance(common, dict):
        errors.append(f"profile {path}: `common` must be a mapping of parameter: value")
    if not isinstance(notebooks, dict):
        errors.append(f"profile {path}: `notebooks` must be a mapping of notebook: {{parameter: value}}")
        notebooks = {}
    for nb, entry in notebooks.items():
        if nb not in PIPELINE:
            errors.append(
                f"profile {path}: notebook {nb!r} is not in the pipeline{did_you_mean(nb, PIPELINE)}; "
                f"pipeline: {', '.join(PIPELINE)}"
            )
        elif entry is not None and not isinstance(entry, dict):
            errors.append(f"profile {path}: notebooks.{nb} must be a mapping of parameter: value")
    run = raw.get("run", path.stem)
    if not isinstance(run, str) or not RUN_NAME.match(run):
        errors.append(f"profile {path}: run {run!r} must be a plain folder name (letters, digits, . _ -)")
    jobs = raw.get("jobs", 1)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        errors.append(
            f"profile {path}: jobs {jobs!r} must be a whole number of notebooks at once (1 or more)"
        )
    if errors:
        raise ParameterError("\n".join(errors))
    return {
        "name": path.stem,
        "path": str(path.resolve()),
        "description": str(raw.get("description") or ""),
        "run": run,
        "jobs": jobs,
        "common": dict(common),
        "notebooks": {nb: dict(e or {}) for nb, e in notebooks.items()},
    }


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """The suggestion added to an error about a misspelt name: " (did you mean 'x'?)", or "" if none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
