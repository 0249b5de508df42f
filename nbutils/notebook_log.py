"""A notebook run by the runner writes warnings and library messages to a log file, not into its report.

Warnings, the logging of transformers, huggingface_hub, jieba and torch, and transformers' progress bars all go to
the kernel's stderr, which a notebook shows as red blocks that a reader of the report cannot act on. When the
runner (`python -m nbutils run`) starts a kernel it sets `NBUTILS_LOG_FILE` to `outputs/<run>/<notebook>.log`.
Importing nbutils in that kernel (every pipeline notebook does in its first code cell) calls `start()`, which points
the kernel's `sys.stderr` at that file; the runner links the file from the report's header when it is not empty.

The notebook still shows everything it prints or displays (stdout, tables, figures, the project's own notes) and
the traceback of a failing cell (IPython sends that as an error, not through stderr): to show a warning in the
report, print or display it. Output written below Python, to file descriptor 2 (a C++ warning, a subprocess's
stderr), is not redirected. Without the variable (JupyterLab, tests, the command-line entries) `start()` does
nothing and stderr shows in the notebook as usual. In every kernel, transformers' "Loading weights" bars, which
say nothing a reader needs, and jieba's notices on loading its dictionary are not shown (`quiet_library_chatter`,
also called on import).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys

LOG_ENV = "NBUTILS_LOG_FILE"

_started: list[str] = []  # the log file's path, once this process writes to it


def start(path: str | os.PathLike | None = None) -> bool:
    """Send this process's stderr to `path` (default: $NBUTILS_LOG_FILE); return whether it did.

    Only the first call acts, and only with a path. The file is appended to: worker processes the notebook starts
    import nbutils too and add to the same log. Library loggers hold the stream they were given at their import,
    so this must run before transformers, jieba or torch are imported (nbutils' own import is such a moment).
    """
    path = path or os.environ.get(LOG_ENV)
    if not path or _started:
        return False
    sys.stderr = open(path, "a", encoding="utf-8", buffering=1, errors="backslashreplace")  # noqa: SIM115
    _started.append(os.fspath(path))
    return True


def quiet_library_chatter() -> None:
    """Once each library is imported: the hook below on transformers' progress bars, and jieba's dictionary-loading
    notices ("Building prefix dict from the default dictionary ...", five lines of DEBUG) off."""
    _after_import("transformers", _hook_transformers_bars)
    _after_import("jieba", lambda jieba: jieba.setLogLevel(logging.INFO))


# Bars that only say a model file is being read or written: a notebook loading four models showed four of them.
SILENT_BARS = ("Loading weights", "Writing model shards")


def _hook_transformers_bars(_module) -> None:
    """transformers' bars: SILENT_BARS never shown; the others (a hub download's) as text on the log file's stderr
    when the runner started this kernel, instead of widgets in the report."""
    from tqdm import std
    from transformers.utils import logging as transformers_logging

    def bar(factory, args, kwargs):
        # `factory` is tqdm.auto's bar (a widget in a kernel), or transformers' no-op bar when bars are disabled
        if factory is transformers_logging.EmptyTqdm or kwargs.get("desc") in SILENT_BARS:
            return transformers_logging.EmptyTqdm(*args, **kwargs)
        return std.tqdm(*args, **kwargs) if _started else factory(*args, **kwargs)

    transformers_logging.set_tqdm_hook(bar)


def _after_import(name: str, action) -> None:
    """Call `action(module)` once the top-level module `name` is imported: now if it already is, else right after
    its import. (Importing transformers here to set its bar hook would cost every notebook a second or two.)"""
    if name in sys.modules:
        action(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, action))


class _AfterImport(importlib.abc.MetaPathFinder):
    """An import hook for one module: the other finders locate it, and its loader runs `action` after it."""

    def __init__(self, name: str, action):
        self.name, self.action = name, action

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and now the usual finders can locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module, action = spec.loader.exec_module, self.action

            def exec_module_then_act(module):
                exec_module(module)
                action(module)

            spec.loader.exec_module = exec_module_then_act
        return spec
