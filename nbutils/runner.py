"""Run the pipeline notebooks with papermill and build a shareable report.

    python -m nbutils run --profile demo [--only NB1,NB2] [-p key=value ...] [--run NAME]

A profile (YAML, see `nbutils/profiles/demo.yaml`) says which notebooks run and with which
parameters. Parameters are resolved before anything runs, most specific last:

    run_dir, output_dir        always injected by the runner (absolute paths)
    profile `common`           to every notebook that declares the name
    profile `notebooks.<nb>`   to that notebook (it must declare the name)
    -p key=value               to every selected notebook that declares `key`
    -p nb.key=value            to that notebook only

A parameter no notebook declares is an error (papermill itself would only warn), and so is a
value whose type does not match the notebook's default. Everything lands in `outputs/<run>/`:

    <nb>.ipynb  <nb>.html      the executed notebook and its report (code hidden)
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
        executed_notebook, report, summary   paths relative to the run folder (None if absent)
        error                  for "failed": {cell_index, exec_count, ename, evalue}; cell_index is
                               papermill's 0-based index in the executed notebook
        carried_over           True when the entry comes from an earlier invocation of the same run
                               (e.g. `--only train_clip` after a full run keeps the earlier entries)
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import difflib
import functools
import html
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

import yaml

from . import __version__
from .io import read_json, write_json, write_text

PIPELINE = ["processdata_01", "processdata_02", "processdata_03", "train_clip",
            "train_encoder_decoder", "train_clipcap", "infer", "analyze_loss"]

REPO_DIR = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_DIR / "notebooks"
OUTPUTS_DIR = REPO_DIR / "outputs"
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
KERNEL_NAME = "python3"
RUNNER_PARAMETERS = ("run_dir", "output_dir")  # every notebook declares these; only the runner sets them
PROFILE_KEYS = ("description", "run", "common", "notebooks")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ParameterError(ValueError):
    """A bad profile, notebook selection or parameter; raised before any notebook runs."""


class RunFailed(RuntimeError):
    """A notebook failed; the message names it, the cell and the error."""


# ----------------------------------------------------------------------------- profiles

def load_profile(name_or_path: str | os.PathLike) -> dict:
    """Read a profile by name (`nbutils/profiles/<name>.yaml`) or path; check its structure.

    Returns {name, path, description, run, common, notebooks} with `notebooks` mapping
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
            raise ParameterError(f"unknown profile {text!r}{_hint(text, known)}; "
                                 f"known profiles: {', '.join(known)} (or give a path to a .yaml file)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ParameterError(f"profile {path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ParameterError(f"profile {path}: expected a mapping with keys {', '.join(PROFILE_KEYS)}")
    errors = [f"profile {path}: unknown key {k!r}{_hint(k, PROFILE_KEYS)}; allowed: {', '.join(PROFILE_KEYS)}"
              for k in raw if k not in PROFILE_KEYS]
    common = raw.get("common") or {}
    notebooks = raw.get("notebooks") or {}
    if not isinstance(common, dict):
        errors.append(f"profile {path}: `common` must be a mapping of parameter: value")
    if not isinstance(notebooks, dict):
        errors.append(f"profile {path}: `notebooks` must be a mapping of notebook: {{parameter: value}}")
        notebooks = {}
    for nb, entry in notebooks.items():
        if nb not in PIPELINE:
            errors.append(f"profile {path}: notebook {nb!r} is not in the pipeline{_hint(nb, PIPELINE)}; "
                          f"pipeline: {', '.join(PIPELINE)}")
        elif entry is not None and not isinstance(entry, dict):
            errors.append(f"profile {path}: notebooks.{nb} must be a mapping of parameter: value")
    run = raw.get("run", path.stem)
    if not isinstance(run, str) or not RUN_NAME.match(run):
        errors.append(f"profile {path}: run {run!r} must be a plain folder name (letters, digits, . _ -)")
    if errors:
        raise ParameterError("\n".join(errors))
    return {"name": path.stem, "path": str(path.resolve()), "description": str(raw.get("description") or ""),
            "run": run, "common": dict(common), "notebooks": {nb: dict(e or {}) for nb, e in notebooks.items()}}


# ----------------------------------------------------------------------------- parameters

def notebook_parameters(path: str | os.PathLike) -> dict[str, str]:
    """The parameters a notebook declares: {name: default as source text}, in cell order.

    Read from the cell tagged `parameters` with `ast`, because papermill's line parser silently
    skips any line holding two '=' (e.g. `x = 0  # 0 = all`); papermill.inspect_notebook is the
    fallback for a cell that is not plain Python.
    """
    path = Path(path)
    # Plain JSON: importing nbformat costs seconds, and bad parameters should fail fast.
    cells = [c for c in json.loads(path.read_text(encoding="utf-8")).get("cells", [])
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return {}
    source = cells[0].get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    try:
        tree = ast.parse(source)
    except SyntaxError:
        import papermill

        return {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}
    params = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                params[target.id] = ast.get_source_segment(source, value)
    return params


def resolve_parameters(declared: Mapping[str, Mapping[str, str]], selected: Iterable[str],
                       common: Mapping | None = None, per_notebook: Mapping[str, Mapping] | None = None,
                       overrides: Iterable[str] | Mapping = (), injected: Mapping[str, Mapping] | None = None,
                       ) -> dict[str, dict]:
    """Merge profile and command-line parameters into {notebook: parameters} for `selected`.

    `declared` maps every notebook the profile can run to `notebook_parameters(...)`; entries of
    notebooks not selected this time are still checked, so a typo fails now and not next week.
    `overrides` are "key=value" / "nb.key=value" strings typed by the notebook's default (a
    Mapping of the same keys takes values as they are). `injected` ({notebook: {run_dir,
    output_dir}}) goes first and may not be overridden. Raises ParameterError listing every problem.
    """
    selected = list(selected)
    common, per_notebook, injected = dict(common or {}), dict(per_notebook or {}), dict(injected or {})
    errors: list[str] = []
    out = {nb: {} for nb in selected}

    def put(nb, key, value, where):
        if key in RUNNER_PARAMETERS:
            errors.append(f"{where}: {key} is set by the runner (use --run / --outputs-dir instead)")
            return
        try:
            out[nb][key] = _check_type(value, declared[nb][key], f"{where} ({nb}.{key})")
        except ParameterError as e:
            errors.append(str(e))

    for nb in selected:
        for key, value in injected.get(nb, {}).items():
            if key not in declared[nb]:
                errors.append(f"{nb} does not declare {key!r} in its `parameters` cell; every pipeline "
                              f"notebook must declare {' and '.join(RUNNER_PARAMETERS)}")
            out[nb][key] = value

    everywhere = sorted({name for params in declared.values() for name in params})
    for key, value in common.items():
        users = [nb for nb in declared if key in declared[nb]]
        if not users:
            errors.append(f"profile common.{key}: no notebook of the profile declares {key!r}"
                          f"{_hint(key, everywhere)}; declared: {', '.join(everywhere)}")
        for nb in selected:
            if key in declared[nb]:
                put(nb, key, value, f"profile common.{key}")

    for nb, entry in per_notebook.items():
        if nb not in declared:  # its notebook file does not exist yet; the runner says so
            continue
        for key, value in entry.items():
            where = f"profile notebooks.{nb}.{key}"
            if key not in declared[nb]:
                errors.append(_unknown(where, nb, key, declared[nb]))
            elif nb in out:
                put(nb, key, value, where)
            else:
                try:
                    _check_type(value, declared[nb][key], where)
                except ParameterError as e:
                    errors.append(str(e))

    # Command line last; a notebook-specific override beats a general one whatever the order.
    typed = isinstance(overrides, Mapping)
    items = ([(str(k), v, f"{k}={v!r}") for k, v in overrides.items()] if typed
             else [_split_override(o) for o in overrides])
    for specific in (False, True):
        for key, value, text in items:
            nb, _, name = key.rpartition(".")
            if bool(nb) != specific:
                continue
            where = f"-p {text}"
            if not name.isidentifier():
                errors.append(f"{where}: expected key=value or notebook.key=value")
                continue
            if nb:
                if nb not in out:
                    why = ("is not selected in this run" if nb in declared else
                           f"is not a notebook of this run{_hint(nb, selected)}")
                    errors.append(f"{where}: {nb} {why}; selected: {', '.join(selected)}")
                elif name not in declared[nb]:
                    errors.append(_unknown(where, nb, name, declared[nb]))
                else:
                    _put_cli(put, nb, name, value, declared, where, errors, typed)
                continue
            users = [n for n in selected if name in declared[n]]
            if not users:
                names = sorted({p for n in selected for p in declared[n]})
                errors.append(f"{where}: no selected notebook ({', '.join(selected)}) declares {name!r}"
                              f"{_hint(name, names)}; declared: {', '.join(names)}")
            for n in users:
                _put_cli(put, n, name, value, declared, where, errors, typed)
    if errors:
        raise ParameterError("\n".join(dict.fromkeys(errors)))
    return out


def _split_override(text: str) -> tuple[str, str, str]:
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ParameterError(f"-p {text}: expected key=value or notebook.key=value")
    return key.strip(), value, str(text)


def _put_cli(put, nb, name, value, declared, where, errors, typed):
    if not typed:
        try:
            value = _parse_cli_value(value, declared[nb][name], where)
        except ParameterError as e:
            errors.append(str(e))
            return
    put(nb, name, value, where)


def _literal(source):
    """The notebook default as a Python value, or `_NOT_LITERAL` for an expression."""
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError):
        return _NOT_LITERAL


_NOT_LITERAL = object()


def _parse_cli_value(raw: str, default_source: str, where: str):
    # A string default keeps the text as typed: `-p run=007` must stay "007" (papermill's CLI makes it 7).
    if isinstance(_literal(default_source), str):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ParameterError(f"{where}: cannot parse {raw!r} as a value ({str(e).splitlines()[0]})") from None


def _check_type(value, default_source: str, where: str):
    """Return `value`, made to match the type of the notebook's default, or raise ParameterError."""
    default = _literal(default_source)
    if value is None or default is _NOT_LITERAL or default is None:
        return value
    if isinstance(default, float) and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, list),
          dict: lambda v: isinstance(v, dict)}.get(type(default), lambda v: True)
    if not ok(value):
        quote_hint = " (quote it in YAML)" if isinstance(default, str) else ""
        raise ParameterError(f"{where}: expected {type(default).__name__} like the notebook's default "
                             f"{default_source}, got {value!r} ({type(value).__name__}){quote_hint}")
    return float(value) if isinstance(default, float) else value


def _hint(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _unknown(where: str, nb: str, key: str, declared: Iterable[str]) -> str:
    declared = list(declared)
    return f"{where}: {nb} has no parameter {key!r}{_hint(key, declared)}; declared: {', '.join(declared)}"


# ----------------------------------------------------------------------------- running

def run_pipeline(profile: str | os.PathLike, only: str | Iterable[str] | None = None,
                 params: Iterable[str] | Mapping = (), run_name: str | None = None,
                 notebooks_dir: str | os.PathLike | None = None, outputs_dir: str | os.PathLike | None = None,
                 command: list[str] | None = None) -> dict:
    """Run the profile's notebooks in pipeline order; return the run.json record.

    Every check (profile, --only, parameters) happens before the first notebook starts. Raises
    ParameterError for bad input and RunFailed when a notebook fails (its executed notebook
    and report are kept, and run.json / index.html are written either way).
    """
    probe = _start_device_probe()  # a few seconds of torch import, overlapped with the checks below
    try:
        prof, run_dir, listed, existing, selected, resolved = _plan(
            profile, only, params, run_name, notebooks_dir, outputs_dir)
        import papermill
        from papermill.exceptions import PapermillExecutionError

        device = _device(probe)
    except BaseException:
        if probe is not None:
            probe.kill()
            probe.wait()
        raise

    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _new_record(prof, run_dir.name, command, resolved, listed, existing, selected, run_dir, device)
    _save(run_dir, record)
    entries = {e["name"]: e for e in record["notebooks"]}

    for i, nb in enumerate(selected, 1):
        entry = entries[nb]
        entry.update(status="running", parameters=resolved[nb], executed_notebook=f"{nb}.ipynb")
        _clear_stale(run_dir, nb)
        _save(run_dir, record)
        print(f"[{i}/{len(selected)}] {nb} ...", flush=True)
        start = time.perf_counter()
        try:
            with _papermill_quiet():
                papermill.execute_notebook(
                    str(notebooks_dir / f"{nb}.ipynb"), str(run_dir / f"{nb}.ipynb"), parameters=resolved[nb],
                    kernel_name=KERNEL_NAME, cwd=str(notebooks_dir), progress_bar=False, log_output=False,
                    kernel_manager_class=_this_interpreter_kernel_manager())
            entry["status"] = "ok"
        except PapermillExecutionError as e:
            entry.update(status="failed", error={"cell_index": e.cell_index, "exec_count": e.exec_count,
                                                 "ename": e.ename, "evalue": e.evalue})
        except KeyboardInterrupt:
            entry["status"] = record["status"] = "interrupted"
            entry["seconds"] = round(time.perf_counter() - start, 2)
            _finish(run_dir, record)
            raise
        except Exception as e:  # the kernel died, failed to start, ...
            entry.update(status="failed", error={"cell_index": None, "exec_count": None,
                                                 "ename": type(e).__name__, "evalue": str(e)})
        entry["seconds"] = round(time.perf_counter() - start, 2)
        _collect(run_dir, entry)
        print(f"    {entry['status']} in {entry['seconds']:.1f} s", flush=True)

        if entry["status"] == "failed":
            for later in selected[i:]:
                entries[later].update(status="skipped", note=f"not run: {nb} failed")
            record["status"] = "failed"
            _finish(run_dir, record)
            raise RunFailed(_failure_message(nb, entry, run_dir))
        _save(run_dir, record)

    record["status"] = "ok"
    _finish(run_dir, record)
    return record


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
            errors.append(f"--only {nb}: not a pipeline notebook{_hint(nb, PIPELINE)}; pipeline: {', '.join(PIPELINE)}")
        elif not (notebooks_dir / f"{nb}.ipynb").is_file():
            errors.append(f"--only {nb}: {notebooks_dir / (nb + '.ipynb')} does not exist")
        elif nb not in listed:
            errors.append(f"--only {nb}: profile {prof['name']} has no entry for it; "
                          f"its notebooks: {', '.join(listed)}")
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
            raise ParameterError(f"{notebooks_dir / (nb + '.ipynb')}: cannot read the notebook ({e})") from None
    injected = {nb: {"run_dir": str(run_dir), "output_dir": str(run_dir / nb)} for nb in selected}
    resolved = resolve_parameters(declared, selected, prof["common"], prof["notebooks"], params, injected)

    return prof, run_dir, listed, existing, selected, resolved


def _new_record(prof, run_name, command, resolved, listed, existing, selected, run_dir, device) -> dict:
    previous = _previous_entries(run_dir, prof["name"])
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
    seed = next(iter(seeds.values())) if len({json.dumps(s) for s in seeds.values()}) == 1 else (seeds or None)
    env = _environment()
    return {"run": run_name, "profile": prof["name"], "profile_path": prof["path"],
            "description": prof["description"], "command": list(command if command is not None else sys.argv),
            "started_at": _now(), "finished_at": None, "status": "running", "seed": seed,
            "git": env["git"], "device": device, "versions": env["versions"], "notebooks": entries}


def _entry(nb, status, note=None) -> dict:
    return {"name": nb, "status": status, "note": note, "seconds": None, "parameters": None,
            "executed_notebook": None, "report": None, "summary": None, "error": None}


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
    # The index must never show an earlier run's numbers or figures next to this run's status.
    for path in [run_dir / f"{nb}.html", run_dir / nb / "summary.json", *(run_dir / nb / "figures").glob("*.png")]:
        if path.is_file():
            path.unlink()


def _collect(run_dir: Path, entry: dict) -> None:
    nb = entry["name"]
    executed = run_dir / f"{nb}.ipynb"
    entry["executed_notebook"] = executed.name if executed.is_file() else None
    if executed.is_file():
        try:
            render_report(executed, run_dir / f"{nb}.html")
            entry["report"] = f"{nb}.html"
        except Exception as e:  # a report problem must not hide the notebook's own result
            print(f"warning: could not render {executed} to HTML ({type(e).__name__}: {e})", file=sys.stderr)
    entry["summary"] = f"{nb}/summary.json" if (run_dir / nb / "summary.json").is_file() else None


def _failure_message(nb: str, entry: dict, run_dir: Path) -> str:
    err = entry["error"]
    where = "" if err["cell_index"] is None else f" in cell {err['cell_index']}"
    if err.get("exec_count") is not None:
        where += f" (In [{err['exec_count']}])"
    kept = (f"; executed notebook kept at {run_dir / entry['executed_notebook']}"
            if entry["executed_notebook"] else "")
    return f"{nb} failed{where} ({err['ename']}: {err['evalue']}){kept}"


def _finish(run_dir: Path, record: dict) -> None:
    record["finished_at"] = _now()
    _save(run_dir, record)


def _save(run_dir: Path, record: dict) -> None:
    write_json(run_dir / "run.json", record)
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


@functools.lru_cache(maxsize=1)
def _this_interpreter_kernel_manager():
    """A kernel manager whose "python3" is always this interpreter.

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
_DEVICE_PROBE = ("import torch\n"
                 "if torch.cuda.is_available(): print('cuda: ' + torch.cuda.get_device_name(0))\n"
                 "elif torch.backends.mps.is_available(): print('mps')\n"
                 "else: print('cpu')")
_device_seen: list[str] = []  # the answer, once per process


def _start_device_probe():
    if _device_seen:
        return None
    try:
        return subprocess.Popen([sys.executable, "-c", _DEVICE_PROBE], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None


def _device(probe) -> str:
    """"cuda: <name>", "mps" or "cpu" as a fresh interpreter (like the kernels) sees it."""
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
    return {"commit": head.stdout.strip() if head.returncode == 0 else None,  # None before the first commit
            "dirty": bool(status.stdout.strip())}


# ----------------------------------------------------------------------------- reports

def render_report(executed_notebook: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """Write the executed notebook as HTML with the code hidden (outputs and markdown only)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_filename(str(executed_notebook))
    return write_text(html_path, body)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#555;font-size:.9em} .meta td{padding:0 1em 0 0;vertical-align:top}
section{border-top:1px solid #ddd;padding:.6em 0 1em}
.status{display:inline-block;padding:0 .5em;border-radius:3px;font-size:.8em;color:#fff;vertical-align:middle}
.ok{background:#2e7d32} .failed,.interrupted{background:#c62828} .skipped{background:#888} .running{background:#f9a825}
table.summary{border-collapse:collapse;font-size:.9em;margin:.5em 0}
table.summary td{border:1px solid #ddd;padding:2px 8px} table.summary td:first-child{color:#555}
.figures a{display:inline-block;margin:4px;text-align:center;font-size:.8em;color:#555;text-decoration:none}
.figures img{max-width:320px;max-height:240px;border:1px solid #ddd;display:block}
pre.error{background:#fdecea;padding:.5em;white-space:pre-wrap} details{font-size:.85em;color:#555}
"""


def write_index(run_dir: str | os.PathLike) -> Path:
    """Write `<run_dir>/index.html` from its run.json: status, links, summary numbers, figure thumbnails.

    All links are relative, so the folder can be zipped and opened elsewhere.
    """
    run_dir = Path(run_dir)
    record = read_json(run_dir / "run.json")
    e = html.escape
    git = record.get("git") or {}
    meta = [("profile", record.get("profile")), ("status", record.get("status")),
            ("started", record.get("started_at")), ("finished", record.get("finished_at")),
            ("device", record.get("device")), ("seed", record.get("seed")),
            ("git", f"{git.get('commit') or 'no commit'}{' (dirty)' if git.get('dirty') else ''}" if git else None),
            ("versions", ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items())),
            ("command", " ".join(record.get("command") or []))]
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(str(record.get('run')))}"
             f"</title>\n<style>{_CSS}</style></head><body>",
             f"<h1>{e(str(record.get('run')))} <span class=\"status {e(str(record.get('status')))}\">"
             f"{e(str(record.get('status')))}</span></h1>"]
    if record.get("description"):
        parts.append(f"<p>{e(record['description'])}</p>")
    parts.append("<table class=\"meta\">" + "".join(f"<tr><td>{k}</td><td>{e(str(v))}</td></tr>"
                                                   for k, v in meta if v is not None) + "</table>")
    for entry in record.get("notebooks", []):
        parts.append(_index_section(run_dir, entry))
    parts.append("</body></html>\n")
    return write_text(run_dir / "index.html", "\n".join(parts))


def _index_section(run_dir: Path, entry: dict) -> str:
    e = html.escape
    nb, status = entry["name"], entry.get("status", "")
    title = f"<a href=\"{quote(entry['report'])}\">{e(nb)}</a>" if entry.get("report") else e(nb)
    secs = f" {entry['seconds']:.1f} s" if isinstance(entry.get("seconds"), (int, float)) else ""
    out = [f"<section id=\"{e(nb)}\"><h2>{title} <span class=\"status {e(status)}\">{e(status)}</span>"
           f"<small>{secs}</small></h2>"]
    notes = [entry.get("note"), "from an earlier invocation of this run" if entry.get("carried_over") else None]
    if entry.get("executed_notebook"):
        notes.append(f"<a href=\"{quote(entry['executed_notebook'])}\">executed notebook</a>")
    out += [f"<p class=\"meta\">{' · '.join(n if n.startswith('<a') else e(n) for n in notes if n)}</p>"]
    err = entry.get("error")
    if err:
        cell = f"cell {err.get('cell_index')}: " if err.get("cell_index") is not None else ""
        out.append(f"<pre class=\"error\">{e(cell)}{e(str(err.get('ename')))}: {e(str(err.get('evalue')))}</pre>")
    if entry.get("summary"):
        try:
            rows = list(_flatten(read_json(run_dir / entry["summary"])))
            out.append("<table class=\"summary\">" + "".join(
                f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>" for k, v in rows) + "</table>")
        except (OSError, ValueError) as ex:
            out.append(f"<p class=\"meta\">summary.json unreadable: {e(str(ex))}</p>")
    if status in ("ok", "failed"):
        figs = sorted((run_dir / nb / "figures").glob("*.png"))
        if figs:
            out.append("<div class=\"figures\">" + "".join(
                f"<a href=\"{quote(f'{nb}/figures/{p.name}')}\"><img src=\"{quote(f'{nb}/figures/{p.name}')}\" "
                f"alt=\"{e(p.stem)}\" loading=\"lazy\">{e(p.stem)}</a>" for p in figs) + "</div>")
    if entry.get("parameters"):
        out.append("<details><summary>parameters</summary><pre>"
                   f"{e(json.dumps(entry['parameters'], ensure_ascii=False, indent=1))}</pre></details>")
    out.append("</section>")
    return "\n".join(out)


def _flatten(obj, prefix=""):
    """Yield (dotted key, scalar) pairs of a summary; lists and other containers are left out."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif obj is None or isinstance(obj, (str, int, float, bool)):
        yield prefix[:-1], obj


def _fmt(v) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        if v == 0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4g}"
        return f"{v:,.1f}" if abs(v) >= 1e4 else f"{v:.3e}"
    return str(v)
