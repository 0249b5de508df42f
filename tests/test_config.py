"""nbutils.config: a notebook's parameters as a frozen dataclass, its parameters cell and its command line."""

from __future__ import annotations

import ast
import dataclasses
import os

import pytest

from nbutils.config import StageConfig, field_types, param, parameters_cell
from nbutils.data.download import DownloadConfig
from nbutils.data.prepare import PrepareConfig
from nbutils.data.validate import ValidationConfig
from nbutils.training.clip import TrainClipConfig

STAGE_CONFIGS = [DownloadConfig, ValidationConfig, PrepareConfig, TrainClipConfig]


@dataclasses.dataclass(frozen=True)
class ToyConfig(StageConfig):
    stage = "toy_stage"
    rate: float = param(0.5, "a rate")
    count: int = param(3, "a count")
    flag: bool = param(False, "a flag")
    name: str = param('say "hi" \\ 你好', "a name with quotes, a backslash and CJK")
    eps: float = param(1e-05, "a small float in exponent notation")


@dataclasses.dataclass(frozen=True)
class TupleConfig(StageConfig):
    stage = "tuple_stage"
    tags: tuple = param((), "not a scalar")


@dataclasses.dataclass(frozen=True)
class OptionalConfig(StageConfig):
    stage = "optional_stage"
    limit: int | None = param(None, "not a scalar either")


def _notebook_globals(cls, **values):
    """`globals()` after a parameters cell: every field, plus whatever else the notebook defined."""
    namespace = {f.name: f.default for f in dataclasses.fields(cls)}
    namespace.update(values)
    namespace.update({"__name__": "__main__", "__builtins__": __builtins__, "pd": object(), "_": 1, "In": []})
    return namespace


# ----------------------------------------------------------------------------- building a config


def test_defaults_and_the_stage_class_variable():
    config = ToyConfig()
    names = [f.name for f in dataclasses.fields(ToyConfig)]
    assert names == ["run_dir", "output_dir", "seed", "rate", "count", "flag", "name", "eps"]
    assert (config.rate, config.count, config.flag, config.eps) == (0.5, 3, False, 1e-05)
    assert ToyConfig.stage == "toy_stage" and "stage" not in config.to_dict()
    assert next(f for f in dataclasses.fields(ToyConfig) if f.name == "count").metadata["help"] == "a count"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.count = 4
    changed = dataclasses.replace(config, count=4)
    assert changed.count == 4 and config.count == 3
    with pytest.raises(TypeError, match="ToyConfig.count must be int"):
        dataclasses.replace(config, count="4")  # replace re-validates


def test_from_notebook_takes_every_field_and_ignores_other_variables():
    config = ToyConfig.from_notebook(_notebook_globals(ToyConfig, count=7, run_dir="/runs/a"))
    assert config == ToyConfig(count=7, run_dir="/runs/a")
    assert config.to_dict() == {
        "run_dir": "/runs/a",
        "output_dir": "/runs/a/toy_stage",
        "seed": 0,
        "rate": 0.5,
        "count": 7,
        "flag": False,
        "name": 'say "hi" \\ 你好',
        "eps": 1e-05,
    }


def test_from_notebook_names_the_missing_fields():
    namespace = _notebook_globals(ToyConfig)
    del namespace["count"], namespace["flag"]
    expected = r"toy_stage parameters cell does not set count, flag; .*ToyConfig"
    with pytest.raises(NameError, match=expected) as info:
        ToyConfig.from_notebook(namespace)
    assert "rate" not in str(info.value)


def test_int_values_of_float_fields_become_floats():
    config = ToyConfig(rate=2, eps=0)
    assert config.rate == 2.0 and type(config.rate) is float and type(config.eps) is float
    from_cell = ToyConfig.from_notebook(_notebook_globals(ToyConfig, rate=1))
    assert type(from_cell.rate) is float and from_cell.rate == 1.0
    assert type(ToyConfig(count=5).count) is int  # ints stay ints where the field is int


@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("count", 2.0, "int"),
        ("count", True, "int"),
        ("count", "3", "int"),
        ("rate", "0.5", "float"),
        ("rate", True, "float"),
        ("rate", None, "float"),
        ("flag", 1, "bool"),
        ("flag", "false", "bool"),
        ("name", 3, "str"),
        ("run_dir", None, "str"),
    ],
)
def test_a_wrong_type_names_the_field_and_the_type(field, value, kind):
    with pytest.raises(TypeError) as info:
        ToyConfig(**{field: value})
    message = str(info.value)
    assert message.startswith(f"ToyConfig.{field} must be {kind} ")
    assert f"got {value!r} ({type(value).__name__})" in message


@pytest.mark.parametrize("cls", STAGE_CONFIGS)
def test_stage_configs_build_from_their_defaults(cls):
    assert cls.stage and cls.from_notebook(_notebook_globals(cls)) == cls()
    assert [f.name for f in dataclasses.fields(cls)][:3] == ["run_dir", "output_dir", "seed"]
    assert cls().output_dir.endswith("/" + cls.stage)


# ----------------------------------------------------------------------------- field types and the cell


def test_field_types():
    assert field_types(ToyConfig) == {
        "run_dir": str,
        "output_dir": str,
        "seed": int,
        "rate": float,
        "count": int,
        "flag": bool,
        "name": str,
        "eps": float,
    }


@pytest.mark.parametrize("cls, field", [(TupleConfig, "tags"), (OptionalConfig, "limit")])
def test_field_types_rejects_a_non_scalar_field(cls, field):
    expected = rf"{cls.__name__}\.{field}: config fields must be bool, int, float or str"
    with pytest.raises(TypeError, match=expected):
        field_types(cls)
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.{field}"):
        cls()  # the config cannot even be built


@pytest.mark.parametrize("cls", [ToyConfig, *STAGE_CONFIGS])
def test_parameters_cell_round_trips(cls):
    source = parameters_cell(cls)
    tree = ast.parse(source)
    fields = dataclasses.fields(cls)
    assert all(isinstance(node, ast.Assign) and len(node.targets) == 1 for node in tree.body)
    assert [node.targets[0].id for node in tree.body] == [f.name for f in fields]
    values = [ast.literal_eval(node.value) for node in tree.body]
    assert values == [f.default for f in fields]
    assert [type(v) for v in values] == [type(f.default) for f in fields]  # 0.0 stays a float, False a bool
    # one line per field, each ending in its help as a comment
    lines = source.splitlines()
    assert len(lines) == len(fields)
    for line, f in zip(lines, fields):
        assert line.endswith("# " + f.metadata["help"]), f.name
    # running the cell and building the config from it gives the defaults
    namespace = {}
    exec(compile(source, "<parameters>", "exec"), namespace)
    assert cls.from_notebook(namespace) == cls()


# ----------------------------------------------------------------------------- command line


def test_from_arguments_types_the_values_and_defaults_the_output_dir():
    config = ToyConfig.from_arguments(
        [
            "--run-dir",
            "runs/a",
            "--rate",
            "2",
            "--count",
            "9",
            "--flag",
            "true",
            "--name",
            "x y",
            "--seed",
            "3",
        ]
    )
    assert config == ToyConfig(
        run_dir="runs/a",
        output_dir=os.path.join("runs/a", "toy_stage"),
        rate=2.0,
        count=9,
        flag=True,
        name="x y",
        seed=3,
    )
    assert type(config.rate) is float
    explicit = ToyConfig.from_arguments(["--run-dir", "runs/a", "--output-dir", "elsewhere"])
    assert explicit.output_dir == "elsewhere"
    default = ToyConfig.from_arguments(["--run-dir", "r"])
    assert default == ToyConfig(run_dir="r", output_dir=os.path.join("r", "toy_stage"))


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("off", False),
    ],
)
def test_from_arguments_parses_bools(text, value):
    assert ToyConfig.from_arguments(["--run-dir", "r", "--flag", text]).flag is value


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rate", "0.1"], "the following arguments are required: --run-dir"),
        (["--run-dir", "r", "--flag", "maybe"], "expected true or false, got 'maybe'"),
        (["--run-dir", "r", "--count", "1.5"], "--count: invalid int value: '1.5'"),
        (["--run-dir", "r", "--colour", "red"], "unrecognized arguments: --colour red"),
    ],
)
def test_from_arguments_rejects_bad_command_lines(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        ToyConfig.from_arguments(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_field_with_its_help_and_default(capsys):
    with pytest.raises(SystemExit):
        ToyConfig.from_arguments(["--help"], prog="toy")
    out = capsys.readouterr().out
    for f in dataclasses.fields(ToyConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "a count (default: 3)" in out and "default: <run-dir>/toy_stage" in out


def test_an_empty_output_dir_is_the_stage_folder_of_the_run(tmp_path):
    assert ToyConfig(run_dir=str(tmp_path)).output_dir == str(tmp_path / "toy_stage")
    assert ToyConfig(run_dir=str(tmp_path), output_dir="/else").output_dir == "/else"


def test_a_notebook_never_writes_into_a_stage_folder_the_runner_made(tmp_path, capsys):
    # nbutils.runner.fingerprints records each notebook's files in <run>/.stages/<notebook>.json
    (tmp_path / ".stages").mkdir()
    (tmp_path / ".stages" / "toy_stage.json").write_text("{}")
    config = ToyConfig(run_dir=str(tmp_path))
    assert config.output_dir == str(tmp_path / "toy_stage_lab")
    assert "writes to " + str(tmp_path / "toy_stage_lab") in capsys.readouterr().out
    # unless told to
    assert ToyConfig(run_dir=str(tmp_path), output_dir=str(tmp_path / "toy_stage")).output_dir == str(
        tmp_path / "toy_stage"
    )
    from nbutils.runner import fingerprints

    assert fingerprints.MANIFEST_DIR == ".stages"
