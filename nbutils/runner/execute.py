"""Run the pipeline notebooks with papermill and build a shareable report.

    python -m nbutils run --profile demo [--only NB1,NB2] [-p key=value ...] [--run NAME] [--fresh | --fresh-from NB]

A profile (YAML, see `nbutils/runner/profiles/demo.yaml`) says which notebooks run and with which
parameters. Parameters are resolved before anything runs, most specific last:

    run_dir, output_dir        always injected by the runner (absolute paths)
    profile `common`           to every notebook that declares the name
    profile `notebooks.<nb>`   to that notebook (it must declare the name)
    -p key=value               to every selected notebook that declares `key`
    -p nb.key=value            to that notebook only

A parameter no notebook declares is an error (papermill itself would only warn), and so is a
value whose type does not match the notebook's default. Everything lands in `outputs/<run>/`:

    <nb>.ipynb  <nb>.html      the executed notebook and its report (code hidden)
    <nb>.log                   the kernel's warnings and library messages, kept out of the report and linked
                               from its header (nbutils/notebook_log.py); only when there were any
    <nb>/                      what the notebook wrote: summary.json, figures/*.png, ...
    index.html                 links, headline numbers and figure thumbnails; zip the folder to share
    run.json                   the record below, rewritten after every notebook

run.json keys:
    run, profile, profile_path, description   the run name and the profile it came from
    command                    argv of the invocation
    started_at, finished_at    ISO timestamps (finished_at is None while running)
    status                     "running", "ok", "failed" or "interrupted"
    seed                       the seed given to the notebooks (a {notebook: seed} dict if they differ)
    git                        {commit, dirty} of the repository, or None outside a git checkout
    device                     "cuda: <name>", "mps" or "cpu", as the kernels will see it
    versions                   {python, torch, transformers, papermill, nbutils}
    notebooks                  one entry per profile notebook, in pipeline order:
        name, status           "ok", "failed", "skipped", "running" or "interrupted"
        note                   why a notebook was skipped (None otherwise)
        seconds                wall time of the execution
        parameters             the exact dict injected by papermill
        executed_notebook, report, summary, log   paths relative to the run folder (None if absent)
        error                  for "failed": {cell_index, exec_count, ename, evalue}; cell_index is
                               papermill's 0-based index in the executed notebook
        carried_over           True when the entry comes from an earlier invocation of the same run
                               (e.g. `--only train_clip` after a full run keeps the earlier entries)
        finished_at            when it last finished
        reason                 why it ran ("no earlier run", "parameters changed (max_steps)", ...)
        reused                 True when it was not run because nothing it depends on changed
        fingerprint            {digest, parts}: what its results depend on (fingerprints.py)
        outputs_digest         digest of the list of files it wrote (its readers' fingerprints include it)

Reuse: a notebook is skipped when its fingerprint equals the one of its last successful run in this folder
and the files it wrote then are unmodified (`.stages/<nb>.json` lists them); its entry, report and numbers
are the earlier run's. While a notebook runs, the terminal shows its cell and progress bar (live.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, notebook_log, progress
from ..files import read_json, write_json
from ..reporting.index_page import render_report, summary_headline, write_index, write_runs_index
from . import fingerprints
from .live import LiveProgress
from .parameters import notebook_parameters, resolve_parameters
from .profiles import (
    KERNEL_NAME,
    NOTEBOOKS_DIR,
    OUTPUTS_DIR,
    PIPELINE,
    REPO_DIR,
    RUN_NAME,
    ParameterError,
    RunFailed,
    did_you_mean,
    load_profile,
)

# What caps a kernel's CPU threads: OpenMP (torch's intra-op pool reads it), MKL, and the tokenizers' Rayon pool.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")

# ----------------------------------------------------------------------------- running


def run_pipeline(
    profile: str | os.PathLike,
    only: str | Iterable[str] | None = None,
    params: Iterable[str] | Mapping = (),
    run_name: str | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    outputs_dir: str | os.PathLike | None = None,
    command: list[str] | None = None,
    fresh: bool = False,
    fresh_from: str | None = None,
    jobs: int | None = None,
) -> dict:
    """Run the profile's notebooks in pipeline order; return the run.json record.

    `jobs` (default: the profile's `jobs`, else 1): how many notebooks may run at once (`_schedule`).

    A notebook whose fingerprint (parameters, notebook, code, inputs: see fingerprints.py) is unchanged since it
    last succeeded in this run folder, with its outputs intact, is reused instead of run. `fresh` reruns every
    selected notebook from scratch and `fresh_from` ("train_clip") that notebook and the selected ones after it:
    their output folders are deleted first, so trainings do not resume their old checkpoints.

    Every check (profile, --only, parameters) happens before the first notebook starts. Raises
    ParameterError for bad input and RunFailed when a notebook fails (its executed notebook
    and report are kept, and run.json / index.html are written either way).
    """
    probe = _start_device_probe()  # a few seconds of torch import, overlapped with the checks below
    try:
        prof, run_dir, listed, existing, selected, resolved = _plan(
            profile, only, params, run_name, notebooks_dir, outputs_dir
        )
        forced = _forced(selected, fresh, fresh_from)
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise ParameterError(f"jobs={jobs!r}: give 1 or more notebooks at once")
        device = _device(probe)
    except BaseException:
        if probe is not None:
            probe.kill()
            probe.wait()
        raise

    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_entries(run_dir, prof["name"])  # read before run.json is rewritten below
    record = _new_record(prof, run_dir.name, command, resolved, listed, existing, selected, previous, device)
    _save(run_dir, record)
    entries = {e["name"]: e for e in record["notebooks"]}

    environment = {
        "device": device,
        **{k: v for k, v in _environment()["versions"].items() if k != "nbutils"},
    }
    jobs = jobs or prof["jobs"]
    run = _Run(
        run_dir, notebooks_dir, selected, resolved, entries, previous, forced, environment, record,
        _kernel_threads(selected, jobs), live=None if jobs == 1 else False,
    )  # fmt: skip
    with _papermill_quiet():
        failed = _schedule(run, jobs)
    if failed is not None:
        for nb in selected:
            if entries[nb].get("status") == "running":
                entries[nb].update(status="skipped", note=f"not run: {failed} failed")
        record["status"] = "failed"
        _finish(run_dir, record)
        raise RunFailed(_failure_message(failed, entries[failed], run_dir))
    record["status"] = "ok"
    _finish(run_dir, record)
    return record


@dataclass
class _Run:
    """What running one notebook of an invocation needs; `lock` guards run.json and the terminal."""

    run_dir: Path
    notebooks_dir: Path
    selected: list
    resolved: dict
    entries: dict
    previous: dict
    forced: set
    environment: dict
    record: dict
    threads: dict  # notebook -> CPU threads of its kernel (None: all cores)
    live: bool | None  # LiveProgress's mode: None redraws on a terminal; False prints a line now and then
    lock: threading.Lock = field(default_factory=threading.Lock)
    kernels: dict = field(default_factory=dict)  # notebook -> its kernel manager class, while it runs


def _schedule(run: _Run, jobs: int) -> str | None:
    """Run the selected notebooks, at most `jobs` at once; return the first that failed (None: all ran).

    A notebook starts once every selected notebook it reads (fingerprints.READS) has finished and every notebook
    before it in pipeline order has started; analyze_loss, which sums up the run, waits for all of them. After a
    failure nothing new starts, and the notebooks still running finish.
    """
    futures, started, finished, failed = {}, set(), set(), None
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while True:
                for nb in run.selected:
                    if nb in started:
                        continue
                    if failed or len(futures) >= jobs or not _inputs_finished(nb, run.selected, finished):
                        break
                    started.add(nb)
                    futures[pool.submit(_run_notebook, nb, run)] = nb
                if not futures:
                    return failed
                done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    nb = futures.pop(future)
                    future.result()  # an error of the runner itself (not of the notebook) ends the run here
                    finished.add(
                        nb
                    )  # only now: its outputs digest, which readers' fingerprints use, is recorded
                    if run.entries[nb]["status"] == "failed" and failed is None:
                        failed = nb
        except KeyboardInterrupt:
            for kernel_manager in list(run.kernels.values()):
                kernel_manager.stop_all()  # the other notebooks' kernels; their threads then end
            concurrent.futures.wait(futures)
            for nb in futures.values():
                run.entries[nb]["status"] = "interrupted"
            run.record["status"] = "interrupted"
            _finish(run.run_dir, run.record)
            raise


def _inputs_finished(nb: str, selected: list, finished: set) -> bool:
    before = selected[: selected.index(nb)]
    needed = before if nb == "analyze_loss" else [up for up in fingerprints.READS.get(nb, []) if up in before]
    return all(up in finished for up in needed)


def _kernel_threads(selected: list, jobs: int) -> dict:
    """CPU threads for each notebook's kernel: with `jobs` > 1, a notebook that may run beside another (neither
    reads the other's results) gets an equal share of the cores, so that two kernels never compete for one core
    (torch's threads then spin at every barrier); the others get every core. Fixed per notebook, so results do not
    depend on which notebook happened to finish first."""
    cores = os.cpu_count() or 1
    if jobs <= 1 or cores < 2:
        return dict.fromkeys(selected)

    def upstream(nb):
        if nb == "analyze_loss":
            return set(selected) - {nb}
        found = set()
        for up in fingerprints.READS.get(nb, []):
            found |= {up} | upstream(up)
        return found

    ancestors = {nb: upstream(nb) for nb in selected}
    alongside = {
        nb: any(o != nb and o not in ancestors[nb] and nb not in ancestors[o] for o in selected)
        for nb in selected
    }
    return {nb: max(1, cores // jobs) if alongside[nb] else None for nb in selected}


def _run_notebook(nb: str, run: _Run) -> None:
    """Run (or reuse) one notebook and record how it went in its run.json entry."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    entry, run_dir = run.entries[nb], run.run_dir
    label = f"[{run.selected.index(nb) + 1}/{len(run.selected)}] {nb}"
    notebook = run.notebooks_dir / f"{nb}.ipynb"
    upstream = {up: _outputs_digest(run_dir, run.entries.get(up)) for up in fingerprints.READS.get(nb, [])}
    fingerprint = fingerprints.stage_fingerprint(nb, notebook, run.resolved[nb], upstream, run.environment)
    reason = _why_run(nb, run.previous.get(nb), fingerprint, run.resolved[nb], run_dir, run.forced)
    if reason is None:
        with run.lock:
            entry.clear()
            entry.update(run.previous[nb], reused=True, carried_over=False, reason=None)
            _ensure_report(run_dir, entry)
            print(f"{label}: reused: unchanged since {_when(entry)}", flush=True)
        return  # saved with the next notebook that runs, or at the end

    threads = run.threads.get(nb)
    with run.lock:
        entry.update(
            status="running",
            parameters=run.resolved[nb],
            executed_notebook=f"{nb}.ipynb",
            fingerprint=fingerprint,
            reason=reason,
            reused=False,
            threads=threads,
        )
        fingerprints.forget_outputs(run_dir, nb)
        if nb in run.forced:
            _remove_outputs(run_dir, nb)
        _clear_stale(run_dir, nb)
        _save(run_dir, run.record)
        print(
            f"{label}: running ({reason})" + (f" on {threads} CPU thread(s)" if threads else ""), flush=True
        )
    start = time.perf_counter()
    progress_file = run_dir / fingerprints.MANIFEST_DIR / f"{nb}.progress.json"
    progress_file.parent.mkdir(parents=True, exist_ok=True)
    kernel_env = {progress.PROGRESS_ENV: str(progress_file), notebook_log.LOG_ENV: str(run_dir / f"{nb}.log")}
    if threads:
        kernel_env.update({name: str(threads) for name in THREAD_VARIABLES})
    kernel_manager = _this_interpreter_kernel_manager(kernel_env)
    run.kernels[nb] = kernel_manager
    try:
        with LiveProgress(
            notebook, progress_file, live=run.live, label=None if run.live is None else nb
        ) as live:
            papermill.execute_notebook(
                str(notebook),
                str(run_dir / f"{nb}.ipynb"),
                parameters=run.resolved[nb],
                kernel_name=KERNEL_NAME,
                cwd=str(run.notebooks_dir),
                progress_bar=False,
                log_output=False,
                kernel_manager_class=kernel_manager,
                on_cell_start=live.on_cell_start,
                on_cell_execute=kernel_manager.cell_started,
                on_cell_executed=kernel_manager.cell_finished,
            )
        entry["status"] = "ok"
    except PapermillExecutionError as e:
        entry.update(
            status="failed",
            error={
                "cell_index": e.cell_index,
                "exec_count": e.exec_count,
                "ename": e.ename,
                "evalue": e.evalue,
            },
        )
    except KeyboardInterrupt:
        entry["status"] = run.record["status"] = "interrupted"
        entry["seconds"] = round(time.perf_counter() - start, 2)
        _finish(run_dir, run.record)
        raise
    except Exception as e:  # the kernel died, failed to start, was stopped, ...
        entry.update(
            status="failed",
            error={"cell_index": None, "exec_count": None, "ename": type(e).__name__, "evalue": str(e)},
        )
    finally:
        run.kernels.pop(nb, None)
    entry["seconds"] = round(time.perf_counter() - start, 2)
    entry["finished_at"] = _now()
    with run.lock:
        _collect(run_dir, entry)
        if entry["status"] == "ok":
            entry["outputs_digest"] = fingerprints.record_outputs(run_dir, nb, fingerprint["digest"])
        done = f"{entry['status']} in {_minutes(entry['seconds'])}"
        print(f"  {done}" if run.live is None else f"{label}: {done}", flush=True)
        _save(run_dir, run.record)


def _plan(profile, only, params, run_name, notebooks_dir, outputs_dir):
    """Every check before anything runs: profile, run name, --only, notebooks, parameters."""
    prof = load_profile(profile)
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR).resolve()
    outputs_dir = Path(outputs_dir or OUTPUTS_DIR).resolve()
    run_name = run_name or prof["run"]
    if not RUN_NAME.match(run_name):
        raise ParameterError(f"run name {run_name!r} must be a plain folder name (letters, digits, . _ -)")

    only = [n.strip() for n in (only.split(",") if isinstance(only, str) else only or []) if n.strip()]
    listed = [nb for nb in PIPELINE if nb in prof["notebooks"]]
    errors = []
    for nb in only:
        if nb not in PIPELINE:
            errors.append(
                f"--only {nb}: not a pipeline notebook{did_you_mean(nb, PIPELINE)}; pipeline: {', '.join(PIPELINE)}"
            )
        elif not (notebooks_dir / f"{nb}.ipynb").is_file():
            errors.append(f"--only {nb}: {notebooks_dir / (nb + '.ipynb')} does not exist")
        elif nb not in listed:
            errors.append(
                f"--only {nb}: profile {prof['name']} has no entry for it; its notebooks: {', '.join(listed)}"
            )
    if errors:
        raise ParameterError("\n".join(errors))

    existing = [nb for nb in listed if (notebooks_dir / f"{nb}.ipynb").is_file()]
    for nb in listed:
        if nb not in existing and not only:
            print(f"note: skipping {nb}: {notebooks_dir / (nb + '.ipynb')} does not exist yet", flush=True)
    selected = [nb for nb in existing if not only or nb in only]
    if not selected:
        raise ParameterError(f"profile {prof['name']}: none of its notebooks exist in {notebooks_dir}")

    run_dir = outputs_dir / run_name
    declared = {}
    for nb in existing:
        try:
            declared[nb] = notebook_parameters(notebooks_dir / f"{nb}.ipynb")
        except Exception as e:  # a notebook that is not valid JSON / nbformat
            raise ParameterError(
                f"{notebooks_dir / (nb + '.ipynb')}: cannot read the notebook ({e})"
            ) from None
    injected = {nb: {"run_dir": str(run_dir), "output_dir": str(run_dir / nb)} for nb in selected}
    resolved = resolve_parameters(declared, selected, prof["common"], prof["notebooks"], params, injected)

    return prof, run_dir, listed, existing, selected, resolved


def _forced(selected: list[str], fresh: bool, fresh_from: str | None) -> set[str]:
    """The selected notebooks to rerun from scratch (--fresh, --fresh-from)."""
    if fresh:
        return set(selected)
    if not fresh_from:
        return set()
    if fresh_from not in PIPELINE:
        raise ParameterError(
            f"--fresh-from {fresh_from}: not a pipeline notebook{did_you_mean(fresh_from, PIPELINE)}; "
            f"pipeline: {', '.join(PIPELINE)}"
        )
    if fresh_from not in selected:
        raise ParameterError(
            f"--fresh-from {fresh_from}: not among the notebooks to run ({', '.join(selected)})"
        )
    return set(selected[selected.index(fresh_from) :])


def _why_run(nb, old, fingerprint, parameters, run_dir, forced) -> str | None:
    """Why `nb` must run, or None when its last successful run can be reused."""
    if nb in forced:
        return "fresh: its outputs were deleted first"
    if not old:
        return "no earlier run"
    if old.get("status") != "ok":
        return f"its last run {old.get('status')}"
    old_fp = old.get("fingerprint") or {}
    if old_fp.get("digest") != fingerprint["digest"]:
        return fingerprints.what_changed(old_fp, fingerprint, old.get("parameters"), parameters)
    changed = fingerprints.outputs_changed(run_dir, nb, fingerprint["digest"])
    return f"outputs changed: {changed}" if changed else None


def _outputs_digest(run_dir: Path, entry: dict | None) -> str | None:
    # An upstream stage of this invocation (run or reused) has its digest in the entry; one that is not
    # part of the selection (--only) has it in its outputs record, if it ever succeeded here.
    if entry and entry.get("status") == "ok" and entry.get("outputs_digest"):
        return entry["outputs_digest"]
    return fingerprints.outputs_digest(run_dir, entry["name"]) if entry else None


def _remove_outputs(run_dir: Path, nb: str) -> None:
    folder = run_dir / nb
    if folder.is_dir():
        print(f"  removing {folder} (fresh run)", flush=True)
        shutil.rmtree(folder)
    for path in (run_dir / f"{nb}.ipynb", run_dir / f"{nb}.html", run_dir / f"{nb}.log"):
        if path.is_file():
            path.unlink()


def _ensure_report(run_dir: Path, entry: dict) -> None:
    """A reused notebook keeps its report; render it again only if it went missing."""
    if entry.get("executed_notebook") and not (run_dir / f"{entry['name']}.html").is_file():
        _collect(run_dir, entry)


def _when(entry: dict) -> str:
    finished = entry.get("finished_at") or "an earlier run"
    secs = entry.get("seconds")
    return f"{finished.replace('T', ' ')[:16]}" + (
        f" (ran {_minutes(secs)})" if isinstance(secs, (int, float)) else ""
    )


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _new_record(prof, run_name, command, resolved, listed, existing, selected, previous, device) -> dict:
    entries = []
    for nb in listed:
        if nb in selected:
            entry = _entry(nb, "running")
        elif nb in previous:
            entry = {**previous[nb], "carried_over": True}
        else:
            note = "not selected (--only)" if nb in existing else "notebook does not exist yet"
            entry = _entry(nb, "skipped", note)
        entries.append(entry)
    seeds = {nb: p["seed"] for nb, p in resolved.items() if "seed" in p}
    seed = (
        next(iter(seeds.values())) if len({json.dumps(s) for s in seeds.values()}) == 1 else (seeds or None)
    )
    env = _environment()
    return {
        "run": run_name,
        "profile": prof["name"],
        "profile_path": prof["path"],
        "description": prof["description"],
        "command": list(command if command is not None else sys.argv),
        "started_at": _now(),
        "finished_at": None,
        "status": "running",
        "seed": seed,
        "git": env["git"],
        "device": device,
        "versions": env["versions"],
        "notebooks": entries,
    }


def _entry(nb, status, note=None) -> dict:
    return {
        "name": nb,
        "status": status,
        "note": note,
        "seconds": None,
        "parameters": None,
        "executed_notebook": None,
        "report": None,
        "summary": None,
        "log": None,
        "error": None,
        "finished_at": None,
        "reason": None,  # why it ran: "no earlier run", "parameters changed (max_steps)", ...
        "reused": False,  # True: unchanged since it last succeeded, not run again
        "fingerprint": None,  # {"digest", "parts"}: see fingerprints.py
        "outputs_digest": None,
    }


def _previous_entries(run_dir: Path, profile_name: str) -> dict:
    """Finished entries of an earlier invocation of this run, to keep in the index after `--only`."""
    try:
        old = read_json(run_dir / "run.json")
        if old.get("profile") != profile_name:
            return {}
        return {e["name"]: e for e in old["notebooks"] if e.get("status") in ("ok", "failed")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _clear_stale(run_dir: Path, nb: str) -> None:
    # The index must never show an earlier run's numbers or figures next to this run's status; the kernel appends
    # to the log, which must start empty.
    for path in [
        run_dir / f"{nb}.html",
        run_dir / f"{nb}.log",
        run_dir / nb / "summary.json",
        *(run_dir / nb / "figures").glob("*.png"),
    ]:
        if path.is_file():
            path.unlink()


def _collect(run_dir: Path, entry: dict) -> None:
    nb = entry["name"]
    executed, log = run_dir / f"{nb}.ipynb", run_dir / f"{nb}.log"
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()  # the kernel opens it on start; a notebook without warnings gets no link to an empty file
    entry["log"] = log.name if log.is_file() else None
    entry["executed_notebook"] = executed.name if executed.is_file() else None
    if executed.is_file():
        try:
            render_report(executed, run_dir / f"{nb}.html", headline=summary_headline(run_dir, nb), log=log)
            entry["report"] = f"{nb}.html"
        except Exception as e:  # a report problem must not hide the notebook's own result
            print(f"warning: could not render {executed} to HTML ({type(e).__name__}: {e})", file=sys.stderr)
    entry["summary"] = f"{nb}/summary.json" if (run_dir / nb / "summary.json").is_file() else None


def _failure_message(nb: str, entry: dict, run_dir: Path) -> str:
    err = entry["error"]
    where = "" if err["cell_index"] is None else f" in cell {err['cell_index']}"
    if err.get("exec_count") is not None:
        where += f" (In [{err['exec_count']}])"
    kept = (
        f"; executed notebook kept at {run_dir / entry['executed_notebook']}"
        if entry["executed_notebook"]
        else ""
    )
    return f"{nb} failed{where} ({err['ename']}: {err['evalue']}){kept}"


def _finish(run_dir: Path, record: dict) -> None:
    record["finished_at"] = _now()
    _save(run_dir, record)


def _save(run_dir: Path, record: dict) -> None:
    write_json(run_dir / "run.json", record)
    try:  # the page of every run first, so this run's page gets its "all runs" link
        write_runs_index(run_dir.parent)
    except OSError as e:
        print(f"warning: could not write {run_dir.parent / 'index.html'} ({e})", file=sys.stderr)
    write_index(run_dir)


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@contextlib.contextmanager
def _papermill_quiet():
    # The parameters were checked above; papermill's own line parser would warn "Unable to parse
    # line" / "Passed unknown parameter" for valid parameters whose comment holds an '='.
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _this_interpreter_kernel_manager(env: Mapping[str, str] | None = None):
    """A kernel manager class whose "python3" is always this interpreter, whose kernels get `env` on top of the
    runner's environment, and which interrupts a kernel it shuts down only while a cell runs (`cell_started` /
    `cell_finished` are the runner's cell hooks). One class per notebook: several may run at once.

    jupyter_client already swaps a bare "python" in kernel.json for sys.executable, but a
    user-level kernelspec with an absolute path (another env) would otherwise win.
    """
    import zmq
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from traitlets import default

    class ThisInterpreterSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            if kernel_name == KERNEL_NAME:
                return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())
            return super().get_kernel_spec(kernel_name)

    class ThisInterpreterKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return ThisInterpreterSpecs(data_dir=self.data_dir)

        # The runner's cell hooks (nbclient's on_cell_execute / on_cell_executed) keep this up to date.
        cell_running = False
        kernel_env = dict(env or {})
        instances: list = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.instances.append(self)

        async def _async_pre_start_kernel(self, **kw):
            # per kernel, not through os.environ: two notebooks' kernels may start at the same time
            kw["env"] = {**os.environ, **(kw.get("env") or {}), **self.kernel_env}
            return await super()._async_pre_start_kernel(**kw)

        @classmethod
        def stop_all(cls) -> None:
            """Kill this notebook's kernel now (the run was interrupted): its papermill call then ends with a dead
            kernel. The manager belongs to the notebook's own thread and event loop, so only its process is
            touched here."""
            for manager in cls.instances:
                process = getattr(manager.provisioner, "process", None)
                if process is not None and process.poll() is None:
                    process.kill()

        @classmethod
        def cell_started(cls, **_) -> None:
            cls.cell_running = True

        @classmethod
        def cell_finished(cls, **_) -> None:
            cls.cell_running = False

        async def _async_interrupt_kernel(self):
            # jupyter_client interrupts every kernel it shuts down, to stop a cell that may still run (the runner
            # was interrupted). After the last cell papermill asks for kernel_info and shuts the kernel down on the
            # reply, when ipykernel may not have left that request's handler yet: the SIGINT lands there and the
            # kernel logs "KeyboardInterrupt caught in kernel." A kernel with no cell running is left alone.
            if self.shutting_down and not self.cell_running:
                return
            await super()._async_interrupt_kernel()

        if "transport_encryption" in AsyncKernelManager.class_trait_names() and zmq.has("curve"):
            # jupyter_client >= 8.10: encrypt kernel traffic (ipykernel warns on every start otherwise)
            @default("transport_encryption")
            def _transport_encryption_default(self):
                return "auto"

    return ThisInterpreterKernelManager


@functools.lru_cache(maxsize=1)
def _environment() -> dict:
    versions = {"python": platform.python_version(), "nbutils": __version__}
    for pkg in ("torch", "transformers", "papermill"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"versions": versions, "git": _git()}


# Asked in a child process: initialising CUDA here would hold GPU memory for the whole run.
_DEVICE_PROBE = (
    "import torch\n"
    "if torch.cuda.is_available(): print('cuda: ' + torch.cuda.get_device_name(0))\n"
    "elif torch.backends.mps.is_available(): print('mps')\n"
    "else: print('cpu')"
)
_device_seen: list[str] = []  # the answer, once per process


def _start_device_probe():
    if _device_seen:
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _DEVICE_PROBE],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None


def _device(probe) -> str:
    """ "cuda: <name>", "mps" or "cpu" as a fresh interpreter (like the kernels) sees it."""
    if _device_seen:
        return _device_seen[0]
    if probe is None:
        return "unknown"
    try:
        out, _ = probe.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        return "unknown"
    lines = out.strip().splitlines()
    if probe.returncode != 0 or not lines:
        return "unknown"
    _device_seen.append(lines[-1])
    return lines[-1]


def _git() -> dict | None:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=60)

    try:
        if git("rev-parse", "--is-inside-work-tree").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    return {
        "commit": head.stdout.strip() if head.returncode == 0 else None,  # None before the first commit
        "dirty": bool(status.stdout.strip()),
    }
