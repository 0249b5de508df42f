"""The terminal line that shows what a running notebook is doing.

    [4/8] train_clip: running (no earlier run)
      cell 5/12 · training 120/440 steps · loss 2.31 · 0:58 elapsed · ETA 2:31

The cell comes from papermill's executor (nbclient's `on_cell_start` hook); the progress bar comes from the
kernel through a small file (`nbutils.progress`: the Trainer callback and nbutils' tqdm loops write it). On a
terminal the line is redrawn in place twice a second; in a log (stdout not a terminal) one line is printed when
something changed, at most every `LOG_INTERVAL` seconds, so a CI log gets a few lines per notebook, not one per
tqdm update.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from .. import progress

REDRAW_INTERVAL = 0.5  # seconds, on a terminal
LOG_INTERVAL = 30.0  # seconds, in a log


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def code_cell_ordinals(notebook: str | os.PathLike, parameters_injected: bool = True) -> tuple[list, int]:
    """For each cell index of the executed notebook, its ordinal among code cells (None for markdown), and
    the number of code cells; papermill adds one code cell after the `parameters` cell when it injects."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    kinds = [c.get("cell_type") for c in cells]
    if parameters_injected:
        tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
        kinds.insert(tagged[0] + 1 if tagged else 0, "code")
    ordinals, count = [], 0
    for kind in kinds:
        if kind == "code":
            count += 1
            ordinals.append(count)
        else:
            ordinals.append(None)
    return ordinals, count


def progress_text(state: dict | None, now: float | None = None) -> str:
    """`training 120/440 steps · loss 2.31 · 0:58 elapsed · ETA 2:31` from a `nbutils.progress` state."""
    if not state:
        return ""
    n, total, unit = state.get("n"), state.get("total"), state.get("unit") or "it"
    parts = [
        f"{state.get('desc') or 'working'} {n:,}/{total:,} {unit}"
        if total
        else f"{state.get('desc')} {n:,} {unit}"
    ]
    for key in ("loss", "eval_loss"):
        if isinstance(state.get(key), (int, float)):
            parts.append(f"{key.replace('_', ' ')} {state[key]:.4g}")
    started, start_n = state.get("started"), state.get("start_n") or 0
    last = state.get("time")
    if isinstance(started, (int, float)) and isinstance(last, (int, float)):
        parts.append(f"{_duration((now or time.time()) - started)} elapsed")
        done = (n or 0) - start_n
        if total and done > 0 and n < total:
            parts.append(f"ETA {_duration((last - started) / done * (total - n))}")
    return " · ".join(parts)


class LiveProgress:
    """Context manager showing one notebook's progress on `stream` while papermill runs it."""

    def __init__(
        self,
        notebook: str | os.PathLike,
        progress_file: str | os.PathLike,
        stream=None,
        live=None,
        label=None,
    ):
        self.label = label  # the notebook's name, before each line, when several notebooks run at once
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live  # redraw in place, or print now and then
        self.progress_file = Path(progress_file)
        self.ordinals, self.n_code = code_cell_ordinals(notebook)
        self.cell = None  # (ordinal, first line of source, start time)
        self._stop = threading.Event()
        self._thread = None
        self._last_line = ""
        self._last_print = 0.0

    # papermill passes this on to nbclient's NotebookClient.on_cell_start
    def on_cell_start(self, cell, cell_index, **kwargs):
        ordinal = self.ordinals[cell_index] if cell_index < len(self.ordinals) else None
        first = next((line.strip() for line in cell.get("source", "").splitlines() if line.strip()), "")
        self.cell = (ordinal, first, time.time())

    def line(self, now: float | None = None) -> str:
        now = now or time.time()
        if self.cell is None:
            return "  starting the kernel"
        ordinal, first, started = self.cell
        text = f"  {self.label + ': ' if self.label else ''}cell {ordinal or '?'}/{self.n_code}"
        state = progress.read(self.progress_file)
        if state and state.get("time", 0) >= started:  # a bar of an earlier cell is over
            text += " · " + progress_text(state, now)
        else:
            text += f" · {first[:60]}"
        return text

    def __enter__(self):
        if self.progress_file.exists():
            self.progress_file.unlink()
        self._last_print = (
            time.time()
        )  # in a log, a notebook shorter than LOG_INTERVAL prints no progress line
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self.live and self._last_line:
            self.stream.write("\r\x1b[K")  # the caller prints the notebook's result on a clean line
            self.stream.flush()
        try:
            self.progress_file.unlink()
        except OSError:
            pass
        return False

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            return 120

    def _loop(self):
        while not self._stop.wait(REDRAW_INTERVAL if self.live else 1.0):
            self._draw()

    def _draw(self):
        now = time.time()
        line = self.line(now)
        try:
            if self.live:
                self.stream.write("\r\x1b[K" + line[: self._width() - 1])
            elif line != self._last_line and now - self._last_print >= LOG_INTERVAL:
                self.stream.write(line + "\n")
                self._last_print = now
            else:
                return
            self.stream.flush()
            self._last_line = line
        except (OSError, ValueError):  # the terminal went away: progress is a courtesy, never an error
            pass
