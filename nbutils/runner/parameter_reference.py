"""docs/parameters.md: every pipeline notebook's parameters, generated from the config dataclasses.

`python -m nbutils parameters --output docs/parameters.md` (or `make docs`) writes it;
tests/runner/test_parameter_reference.py fails when the file and the code disagree. A notebook's config
class is the one the stage table names (nbutils/pipeline.py; the notebook tests check that its config cell builds
that class); the notebooks come in pipeline order, each with the title of its first markdown cell.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .. import pipeline
from ..config import field_types
from .profiles import NOTEBOOKS_DIR, RUNNER_PARAMETERS

COMMAND = "python -m nbutils parameters --output docs/parameters.md"


def stage_configs() -> dict[str, type]:
    """{notebook name: its config class} in pipeline order, from the stage table (nbutils/pipeline.py)."""
    configs = {stage.name: stage.config_class() for stage in pipeline.STAGES}
    wrong = [
        f"{name}: {cls.__qualname__}.stage is {cls.stage!r}"
        for name, cls in configs.items()
        if cls.stage != name
    ]
    if wrong:
        raise LookupError("config classes do not match the stage table: " + "; ".join(wrong))
    return configs


def notebook_title(path: str | os.PathLike) -> str:
    """What the notebook does: its first markdown cell's title, without the leading `# <name>: `."""
    cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            title = source.strip().splitlines()[0].lstrip("#").strip() if source.strip() else ""
            name, sep, rest = title.partition(":")
            title = rest.strip() if sep and name.strip() == Path(path).stem else title
            return title[:1].upper() + title[1:]
    return ""


def parameter_reference(notebooks_dir: str | os.PathLike = NOTEBOOKS_DIR) -> str:
    """The markdown of docs/parameters.md: per pipeline notebook, its title and a table of its parameters."""
    configs = stage_configs()
    lines = [
        "# Notebook parameters",
        "",
        f"Generated from the config dataclasses by `{COMMAND}` (`make docs`); do not edit by hand.",
        "",
        "Each pipeline notebook's `parameters` cell, in pipeline order. Set a value in a profile "
        "(`nbutils/runner/profiles/*.yaml`) or on the command line (`python -m nbutils run -p KEY=VALUE` "
        f"or `-p NOTEBOOK.KEY=VALUE`); {' and '.join(f'`{p}`' for p in RUNNER_PARAMETERS)} are set by the runner.",
        "",
        " · ".join(f"[{stage}](#{stage})" for stage in configs),
    ]
    for stage, cls in configs.items():
        lines += ["", f"## {stage}", ""]
        path = Path(notebooks_dir) / f"{stage}.ipynb"
        title = notebook_title(path) if path.is_file() else ""
        where = f"Config: `{cls.__module__}.{cls.__qualname__}`."
        lines += [f"{title.rstrip('.')}. {where}" if title else where, ""]
        lines += ["| parameter | type | default | help |", "|---|---|---|---|"]
        types = field_types(cls)
        for f in dataclasses.fields(cls):
            default = _literal(f.default).replace("|", "\\|")  # a code span: only pipes need escaping
            help_text = _cell(_text(f.metadata.get("help", "")))
            lines.append(f"| `{f.name}` | {types[f.name].__name__} | `{default}` | {help_text} |")
    return "\n".join(lines) + "\n"


def _literal(value) -> str:
    """The default as the notebook's parameters cell writes it (nbutils.config.parameters_cell)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _text(text: str) -> str:
    """Help text as literal markdown: no HTML tags (`<run>`), emphasis or code spans by accident."""
    for char in ("\\", "`", "*", "<", ">"):
        text = text.replace(char, "\\" + char)
    return text


def _cell(text: str) -> str:
    """A table cell: one line, pipes escaped (GitHub tables split on `|`, even inside code spans)."""
    return " ".join(text.split()).replace("|", "\\|")
