"""Progress of long work inside a notebook, told to the runner that launched it (`python -m nbutils run`).

A notebook's progress bars draw inside the kernel, where the terminal running `make demo` cannot see them. When
the runner starts a kernel it sets `NBUTILS_PROGRESS_FILE`; `report()` then writes the current bar there (a small
JSON file, replaced atomically, at most a few times a second) and the runner shows it on one terminal line. With
the variable unset (JupyterLab, tests, the command-line entries) `report()` does nothing.

    report("train", n=120, total=440, unit="steps", loss=2.31)

Kernel side, two sources feed it: `tqdm` below (a drop-in for `tqdm.auto.tqdm` used by nbutils' loops) and the
Trainer callback in `nbutils.training.job`.
"""

from __future__ import annotations

import json
import os
import time

from tqdm.auto import tqdm as _auto_tqdm

PROGRESS_ENV = "NBUTILS_PROGRESS_FILE"
MIN_INTERVAL = 0.25  # seconds between two writes: the runner redraws at most a few times a second anyway

_last_write = [0.0]


def enabled() -> bool:
    """True when a runner is listening (the kernel was started by `python -m nbutils run`)."""
    return bool(os.environ.get(PROGRESS_ENV))


def report(desc: str, n: int, total: int | None, unit: str = "it", force: bool = False, **values) -> None:
    """Tell the runner that `desc` is at `n` of `total` `unit` (plus e.g. loss=...); throttled unless `force`."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    now = time.time()
    if not force and now - _last_write[0] < MIN_INTERVAL:
        return
    _last_write[0] = now
    state = {"desc": desc, "n": n, "total": total, "unit": unit, "time": now, **values}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:  # never let a full disk or a removed folder break the notebook's real work
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, path)
    except OSError:
        pass


def read(path: str | os.PathLike) -> dict | None:
    """The last state written by `report` (None when there is none yet or it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


class tqdm(_auto_tqdm):  # noqa: N801 (named like the class it stands in for)
    """`tqdm.auto.tqdm` that also reports to the runner (see `report`); the bar itself is unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started = time.time()
        self._tell(force=True)

    def update(self, n=1):
        displayed = super().update(n)
        self._tell()
        return displayed

    def close(self):
        self._tell(force=True)
        super().close()

    def _tell(self, force: bool = False) -> None:
        # a disabled bar counts nothing (tqdm skips its bookkeeping), so there is nothing to tell
        if hasattr(self, "_started") and not self.disable:
            report(
                self.desc or "working", self.n, self.total, unit=self.unit, started=self._started, force=force
            )
