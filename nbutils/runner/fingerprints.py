"""When a notebook need not run again: the fingerprint of what it ran with, and a check that what it wrote is intact.

A stage's fingerprint is a hash of everything its results depend on:

    notebook      the notebook's cells (type and source; outputs and metadata do not count)
    code          every nbutils source file the kernels import (the runner itself excluded)
    environment   the device and the torch / transformers / python versions
    parameters    the exact values papermill injects
    upstream      for each stage it reads (READS, from nbutils/pipeline.py), the digest of that stage's outputs
    files         for each input parameter (INPUT_PARAMETERS, from the same table) naming an existing file or
                  folder: paths, sizes, mtimes
    extra         files a stage reads beyond its upstream stages (analyze_loss: other runs' trainings)

After a stage succeeds the runner lists what it wrote (`<run>/<stage>/` and `<run>/<stage>.ipynb`: path, size,
mtime) in `<run>/.stages/<stage>.json`. A later invocation reuses the stage when its fingerprint is unchanged and
every listed file is still there, unmodified; files added later by other stages (embedding caches) do not count.
An upstream stage that reruns writes new files, so its outputs digest changes and its readers rerun too.
Checking costs a few `stat` calls per file and no hashing of data, so a run with nothing to do takes seconds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from .. import pipeline
from ..config import RUNNER_MANIFESTS
from ..files import read_json, write_json

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MANIFEST_DIR = RUNNER_MANIFESTS  # defined beside the configs, which must not import the runner

# Which earlier stages each pipeline notebook reads (its results change when theirs do), and the parameters that
# may name files or folders it reads (comma lists allowed). Only those: other path parameters name where a stage
# writes or caches (images_dir, embeddings_dir, ...), and their contents change as later stages add to them.
READS = {stage.name: list(stage.reads) for stage in pipeline.STAGES}
INPUT_PARAMETERS = {stage.name: list(stage.input_parameters) for stage in pipeline.STAGES}

# Stages that read files beyond their upstream stages: "module:function" taking the notebook's parameters
# (a dict) and returning the paths it will read.
EXTRA_INPUTS = {"analyze_loss": "nbutils.analyze_loss:input_files_of_parameters"}


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of nbutils' source files, except the runner's (changing how notebooks are run changes no result)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR).as_posix()
        if rel.startswith("runner/") or rel == "__main__.py":
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def notebook_digest(path: str | os.PathLike) -> str:
    """Hash of a notebook's cells: type and source only, so saving it with outputs in JupyterLab changes nothing."""
    cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    return _sha(_canonical([[c.get("cell_type"), "".join(c.get("source", ""))] for c in cells]))


def tree_signature(path: str | os.PathLike) -> str | None:
    """Digest of a file's or folder's (relative path, size, mtime) entries; None when it does not exist."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return _sha(_canonical([st.st_size, st.st_mtime_ns]))
    if not path.is_dir():
        return None
    entries = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            try:
                st = f.stat()
            except OSError:  # vanished while walking
                continue
            entries.append([f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return _sha(_canonical(entries))


def _input_files(nb: str, parameters: Mapping, notebooks_dir: Path) -> dict:
    """Signatures of the existing files / folders that `nb`'s input parameters name (relative to the notebooks)."""
    out = {}
    for name in INPUT_PARAMETERS.get(nb, []):
        value = parameters.get(name)
        if not isinstance(value, str):
            continue
        for item in (v.strip() for v in value.split(",")):
            if not item or len(item) > 1000:
                continue
            path = Path(item).expanduser()
            path = path if path.is_absolute() else notebooks_dir / path
            try:
                if path.exists():
                    out[f"{name}:{item}"] = tree_signature(path)
            except OSError:  # e.g. a name too long for the file system: not a path
                continue
    return out


def _extra_inputs(nb: str, parameters: Mapping) -> str | None:
    target = EXTRA_INPUTS.get(nb)
    if target is None:
        return None
    module, function = target.split(":")
    paths = getattr(importlib.import_module(module), function)(dict(parameters))
    return _sha(_canonical([[str(p), tree_signature(p)] for p in paths]))


def stage_fingerprint(
    nb: str,
    notebook: str | os.PathLike,
    parameters: Mapping,
    upstream: Mapping[str, str | None],
    environment: Mapping,
) -> dict:
    """{"digest": ..., "parts": {...}}: what a run of `nb` depends on (see the module docstring)."""
    notebooks_dir = Path(notebook).resolve().parent
    parts = {
        "notebook": notebook_digest(notebook),
        "code": code_digest(),
        "environment": dict(environment),
        "parameters": _sha(_canonical(parameters)),
        "upstream": dict(upstream),
        "files": _input_files(nb, parameters, notebooks_dir),
        "extra": _extra_inputs(nb, parameters),
    }
    return {"digest": _sha(_canonical(parts)), "parts": parts}


# ----------------------------------------------------------------------------- outputs


def _manifest_path(run_dir: Path, nb: str) -> Path:
    return run_dir / MANIFEST_DIR / f"{nb}.json"


def _list_outputs(run_dir: Path, nb: str) -> dict:
    files = {}
    executed = run_dir / f"{nb}.ipynb"
    if executed.is_file():
        st = executed.stat()
        files[executed.name] = [st.st_size, st.st_mtime_ns]
    folder = run_dir / nb
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            f = Path(root) / name
            st = f.stat()
            files[f.relative_to(run_dir).as_posix()] = [st.st_size, st.st_mtime_ns]
    return files


def record_outputs(run_dir: str | os.PathLike, nb: str, fingerprint: str) -> str:
    """List what `nb` wrote (after it succeeded) and return the digest of that list."""
    run_dir = Path(run_dir)
    files = _list_outputs(run_dir, nb)
    write_json(_manifest_path(run_dir, nb), {"fingerprint": fingerprint, "files": files})
    return _sha(_canonical(files))


def forget_outputs(run_dir: str | os.PathLike, nb: str) -> None:
    """Drop the record of `nb`'s outputs (before it runs again: a half-run stage is never reused)."""
    path = _manifest_path(Path(run_dir), nb)
    if path.is_file():
        path.unlink()


def outputs_digest(run_dir: str | os.PathLike, nb: str) -> str | None:
    """Digest of the outputs `nb` recorded last time it succeeded (None if there is no record)."""
    try:
        return _sha(_canonical(read_json(_manifest_path(Path(run_dir), nb))["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def outputs_changed(run_dir: str | os.PathLike, nb: str, fingerprint: str) -> str | None:
    """Why `nb`'s recorded outputs cannot be reused (None when they are all there, unmodified)."""
    run_dir = Path(run_dir)
    try:
        manifest = read_json(_manifest_path(run_dir, nb))
        files, recorded = manifest["files"], manifest["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no record of its outputs"
    if recorded != fingerprint:
        return "its outputs are from another run"
    for rel, (size, mtime_ns) in files.items():
        try:
            st = (run_dir / rel).stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return f"{rel} was modified"
    return None


def what_changed(
    old: Mapping | None, new: Mapping, old_parameters: Mapping | None, parameters: Mapping
) -> str:
    """A short reason for rerunning: which parts of the fingerprint differ from the last successful run."""
    if not old or "parts" not in old:
        return "no earlier run"
    before, now = old["parts"], new["parts"]
    reasons = []
    if before.get("parameters") != now["parameters"]:
        changed = sorted(
            k
            for k in set(old_parameters or {}) | set(parameters)
            if (old_parameters or {}).get(k) != parameters.get(k)
        )
        reasons.append(f"parameters changed ({', '.join(changed) or 'values'})")
    if before.get("notebook") != now["notebook"]:
        reasons.append("notebook changed")
    if before.get("code") != now["code"]:
        reasons.append("nbutils code changed")
    if before.get("environment") != now["environment"]:
        reasons.append("device or library versions changed")
    changed_up = sorted(k for k in now["upstream"] if before.get("upstream", {}).get(k) != now["upstream"][k])
    if changed_up:
        reasons.append(f"{', '.join(changed_up)} ran again")
    if before.get("files") != now["files"]:
        reasons.append("input files changed")
    if before.get("extra") != now["extra"]:
        reasons.append("files it reads changed")
    return "; ".join(reasons) or "fingerprint changed"
