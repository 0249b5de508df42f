"""File helpers shared by every stage: atomic writes, JSON and tables, summaries.

A long job that is interrupted must never leave a half-written file where a rerun would
trust it, so everything goes through a temporary name in the same folder and `os.replace`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sweep_stale: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Works for files and for folders (write a whole folder, then swap it in). `sweep_stale=True`
    first deletes temporaries of `path` left by killed processes; it lists the parent folder, so
    use it for a few big outputs (a cache, a data set), not for each of a million files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep_stale:
        _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(tempfile._get_candidate_names())}")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


# What `atomic_path` names its temporaries: ".<name>.tmp-<pid>-<random>".
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-")


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of `path` left by a process that was killed (SIGKILL, power loss).

    They are never trusted, but a half-built image cache can be a hundred gigabytes.
    """
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        _remove_if_orphaned(stale)


def sweep_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete every temporary that a killed process left anywhere under `folder` (once per job)."""
    for parent, dirnames, filenames in os.walk(folder):  # does not follow links out of `folder`
        for name in dirnames + filenames:
            if _TEMPORARY.match(name):
                _remove_if_orphaned(Path(parent) / name)


def _remove_if_orphaned(stale: Path) -> None:
    match = _TEMPORARY.match(stale.name)
    if match and not _process_alive(int(match["pid"])):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` atomically (no folder scan: cheap enough for each of a million images)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as pretty UTF-8 JSON atomically (Chinese stays readable, not \\u-escaped)."""
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_table(df, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV (UTF-8) or parquet, chosen by the suffix, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, encoding="utf-8")
    return path


def write_summary(output_dir: str | os.PathLike, summary: dict) -> Path:
    """Write a notebook's headline figures to `<output_dir>/summary.json`."""
    return write_json(Path(output_dir) / "summary.json", summary)


def _json_default(obj: Any):
    # numpy scalars and Paths show up in summaries all the time.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_pretrained_folder(out_dir: str | os.PathLike, *parts) -> Path:
    """`save_pretrained` every one of `parts` (model, tokenizer, image processor) into one folder, atomically.

    An existing saved model at `out_dir` (a folder with config.json) is replaced; any other non-empty folder is
    refused, so a wrong path never deletes someone's files.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise ValueError(
            f"out_dir={str(out_dir)!r} is a non-empty folder without a saved model (no config.json); "
            f"refusing to replace it. Pick a new folder, e.g. {str(out_dir / 'model')!r}."
        )
    with atomic_path(out_dir) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
    return out_dir
