"""Notebook parameters: what a notebook declares, and merging profile and command-line values into it."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from .profiles import RUNNER_PARAMETERS, ParameterError, did_you_mean

# ----------------------------------------------------------------------------- parameters


def notebook_parameters(path: str | os.PathLike) -> dict[str, str]:
    """The parameters a notebook declares: {name: default as source text}, in cell order.

    Read from the cell tagged `parameters` with `ast`, because papermill's line parser silently
    skips any line holding two '=' (e.g. `x = 0  # 0 = all`); papermill.inspect_notebook is the
    fallback for a cell that is not plain Python.
    """
    path = Path(path)
    # Plain JSON: importing nbformat costs seconds, and bad parameters should fail fast.
    cells = [
        c
        for c in json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
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


def resolve_parameters(
    declared: Mapping[str, Mapping[str, str]],
    selected: Iterable[str],
    common: Mapping | None = None,
    per_notebook: Mapping[str, Mapping] | None = None,
    overrides: Iterable[str] | Mapping = (),
    injected: Mapping[str, Mapping] | None = None,
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
                errors.append(
                    f"{nb} does not declare {key!r} in its `parameters` cell; every pipeline "
                    f"notebook must declare {' and '.join(RUNNER_PARAMETERS)}"
                )
            out[nb][key] = value

    everywhere = sorted({name for params in declared.values() for name in params})
    for key, value in common.items():
        users = [nb for nb in declared if key in declared[nb]]
        if not users:
            errors.append(
                f"profile common.{key}: no notebook of the profile declares {key!r}"
                f"{did_you_mean(key, everywhere)}; declared: {', '.join(everywhere)}"
            )
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
    items = (
        [(str(k), v, f"{k}={v!r}") for k, v in overrides.items()]
        if typed
        else [_split_override(o) for o in overrides]
    )
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
                    why = (
                        "is not selected in this run"
                        if nb in declared
                        else f"is not a notebook of this run{did_you_mean(nb, selected)}"
                    )
                    errors.append(f"{where}: {nb} {why}; selected: {', '.join(selected)}")
                elif name not in declared[nb]:
                    errors.append(_unknown(where, nb, name, declared[nb]))
                else:
                    _put_cli(put, nb, name, value, declared, where, errors, typed)
                continue
            users = [n for n in selected if name in declared[n]]
            if not users:
                names = sorted({p for n in selected for p in declared[n]})
                errors.append(
                    f"{where}: no selected notebook ({', '.join(selected)}) declares {name!r}"
                    f"{did_you_mean(name, names)}; declared: {', '.join(names)}"
                )
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
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }.get(type(default), lambda v: True)
    if not ok(value):
        quote_hint = " (quote it in YAML)" if isinstance(default, str) else ""
        raise ParameterError(
            f"{where}: expected {type(default).__name__} like the notebook's default "
            f"{default_source}, got {value!r} ({type(value).__name__}){quote_hint}"
        )
    return float(value) if isinstance(default, float) else value


def _unknown(where: str, nb: str, key: str, declared: Iterable[str]) -> str:
    declared = list(declared)
    return f"{where}: {nb} has no parameter {key!r}{did_you_mean(key, declared)}; declared: {', '.join(declared)}"
