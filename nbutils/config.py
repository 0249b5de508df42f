"""Each notebook's parameters, declared once: a config dataclass per pipeline stage.

A stage's config is a frozen dataclass whose fields are that notebook's parameters, each with its
default, its type and a one-line help (`param(default, "help")`). It lives beside the code that runs
the stage (`nbutils.data.download.DownloadConfig` for processdata_01, ...). The notebook's
`parameters` cell repeats the fields as literal assignments, because papermill injects values after
that cell, and the next cell builds the config in one line:

    config = DownloadConfig.from_notebook(globals())

A field the cell does not set is an error naming it, and tests/notebooks/test_notebook_configs.py checks that
every notebook's cell and its config agree in names, order, defaults and types. Command-line entries
(`python -m nbutils.train_clip --batch-size 48`) are generated from the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

SCALAR_TYPES = (bool, int, float, str)
RUNNER_MANIFESTS = (
    ".stages"  # the runner's record of the files each notebook wrote (nbutils.runner.fingerprints)
)


def param(default, help: str):
    """A config field: its default and the one line of help that notebooks, profiles and --help show."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Parameters every pipeline notebook has; subclasses add their own and set `stage`."""

    stage: ClassVar[str] = ""  # the notebook's name, e.g. "processdata_01"

    run_dir: str = param(
        "../outputs/lab", "the run folder: earlier stages are read from it (the runner sets outputs/<run>)"
    )
    output_dir: str = param(
        "", "where this notebook writes; empty: <run_dir>/<notebook> (<notebook>_lab in a runner-made run)"
    )
    seed: int = param(0, "seeds python, numpy and torch")

    def __post_init__(self):
        # Notebook values arrive typed by papermill and the runner; this catches a hand-edited cell.
        for name, kind in field_types(type(self)).items():
            value = getattr(self, name)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(
                    f"{type(self).__name__}.{name} must be {kind.__name__} "
                    f"(default {self._default(name)!r}), got {value!r} ({type(value).__name__})"
                )
        if not self.output_dir:
            object.__setattr__(self, "output_dir", default_output_dir(self.run_dir, self.stage))

    @classmethod
    def from_notebook(cls, namespace: Mapping[str, Any]):
        """Build the config from a notebook's variables (`globals()` after the parameters cell)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in namespace]
        if missing:
            raise NameError(
                f"{cls.__name__}: the {cls.stage or 'notebook'} parameters cell does not set "
                f"{', '.join(missing)}; it must assign every field of {cls.__name__}"
            )
        return cls(**{name: namespace[name] for name in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def _default(cls, name: str):
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    # ------------------------------------------------------------------ command line

    @classmethod
    def argument_parser(cls, prog: str, description: str = "") -> argparse.ArgumentParser:
        """One option per field (`--batch-size`), typed and documented by the field; --run-dir is required."""
        parser = argparse.ArgumentParser(
            prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        for f, kind in zip(dataclasses.fields(cls), field_types(cls).values()):
            option = "--" + f.name.replace("_", "-")
            if f.name == "run_dir":
                parser.add_argument(option, required=True, help=f"run folder ({f.metadata['help']})")
            elif f.name == "output_dir":
                parser.add_argument(
                    option, default=None, help=f"where results go (default: <run-dir>/{cls.stage})"
                )
            else:
                parser.add_argument(
                    option,
                    dest=f.name,
                    default=f.default,
                    type=_parse_bool if kind is bool else kind,
                    help=f"{f.metadata.get('help', '')} (default: {f.default!r})",
                )
        return parser

    @classmethod
    def from_arguments(cls, argv: Sequence[str] | None = None, prog: str = "", description: str = ""):
        args = vars(cls.argument_parser(prog or cls.stage, description).parse_args(argv))
        if args["output_dir"] is None:
            args["output_dir"] = os.path.join(args["run_dir"], cls.stage)
        return cls(**args)


def default_output_dir(run_dir: str, stage: str) -> str:
    """Where a stage writes when `output_dir` is empty: `<run_dir>/<stage>`, unless `python -m nbutils run` wrote
    that folder (it lists it in `<run_dir>/.stages/<stage>.json`). Then `<run_dir>/<stage>_lab`, so that a notebook
    opened in JupyterLab on a runner-made run never overwrites what that run's report shows; a message says so.
    """
    folder = os.path.join(run_dir, stage)
    if not os.path.isfile(os.path.join(run_dir, RUNNER_MANIFESTS, f"{stage}.json")):
        return folder
    print(
        f"note: {folder} belongs to the run that `python -m nbutils run` made; this notebook writes to "
        f"{folder}_lab instead (set output_dir to write elsewhere)"
    )
    return folder + "_lab"


def parameters_cell(cls) -> str:
    """The source of a notebook's `parameters` cell for config class `cls`: one literal per field, with its help.

    Start a new notebook's parameters cell from this; the notebook tests check that the two agree.
    """
    lines = []
    for f in dataclasses.fields(cls):
        value = json.dumps(f.default, ensure_ascii=False) if isinstance(f.default, str) else repr(f.default)
        assignment = f"{f.name} = {value}"
        lines.append(f"{assignment:<28}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def field_types(cls) -> dict[str, type]:
    """{field name: its type} of a config class; every field must be bool, int, float or str."""
    hints = typing.get_type_hints(cls)
    types = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if kind not in SCALAR_TYPES:
            raise TypeError(
                f"{cls.__name__}.{f.name}: config fields must be bool, int, float or str "
                f"(papermill injects literals), got {kind}"
            )
        types[f.name] = kind
    return types


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def command_line_main(config_class, job, module: str, description: str, argv=None) -> int:
    """`python -m <module>`: every field of `config_class` an option; runs `job(config)` and prints its summary."""
    config = config_class.from_arguments(argv, prog=f"python -m {module}", description=description)
    result = job(config)
    print(json.dumps(result.summary, indent=2, ensure_ascii=False, default=str))
    return 0
