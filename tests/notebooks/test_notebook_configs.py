"""Every pipeline notebook and its config dataclass agree, and the shipped profiles use only declared names.

A notebook's `parameters` cell repeats its config's fields as literals (papermill injects values after
it), and its next code cell builds the config: `config = <module>.<Class>.from_notebook(globals())`.
The checks below find that class by importing it, then compare the cell with the dataclass: names
and their order, defaults, types, and the text `nbutils.config.parameters_cell` would write. The
drift tests feed altered copies of a notebook or a profile to the same checking functions.
No kernel is started here.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import io
import json
import re
import shutil
import tokenize
from pathlib import Path

import pytest
import yaml

from nbutils import config as config_module
from nbutils import runner

NOTEBOOKS = sorted(runner.NOTEBOOKS_DIR.glob("*.ipynb"))
PROFILES = sorted(runner.PROFILES_DIR.glob("*.yaml"))
CONFIG_CALL = "config = <module>.<Class>.from_notebook(globals())"


# ----------------------------------------------------------------------------- reading a notebook


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _python(source: str) -> str:
    """A code cell without its IPython magics / shell lines, so `ast` can parse it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]


def config_class(cell_source: str):
    """The class `config = <module>.<Class>.from_notebook(globals())` builds, imported as the cell does."""
    tree = ast.parse(_python(cell_source))
    bound = {}  # name -> (module, attribute or None) from the cell's imports
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                bound[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = (alias.name, None)
                else:
                    bound[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
    calls = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [ast.unparse(t) for t in node.targets] == ["config"]
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "from_notebook"
        and [ast.unparse(a) for a in node.value.args] == ["globals()"]
        and not node.value.keywords
    ]
    if len(calls) != 1:
        raise LookupError(
            f"the cell after the parameters cell must hold one `{CONFIG_CALL}`; found {len(calls)}"
        )
    dotted = ast.unparse(calls[0].func.value).split(".")
    if dotted[0] not in bound:
        raise LookupError(f"{'.'.join(dotted)}: {dotted[0]!r} is not imported in that cell")
    module, attribute = bound[dotted[0]]
    if attribute is None:
        obj = importlib.import_module(module)
    else:
        try:
            obj = importlib.import_module(f"{module}.{attribute}")
        except ModuleNotFoundError:
            obj = getattr(importlib.import_module(module), attribute)
    for part in dotted[1:]:
        obj = getattr(obj, part)
    return obj


def _tokens(source: str) -> list[tuple[int, str]]:
    """The cell's Python tokens without comments, blank lines and spacing."""
    skip = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENCODING,
        tokenize.ENDMARKER,
    }
    return [
        (t.type, t.string)
        for t in tokenize.generate_tokens(io.StringIO(source.strip() + "\n").readline)
        if t.type not in skip
    ]


def notebook_problems(path: Path) -> list[str]:
    """Everything wrong with a pipeline notebook's structure and its parameters cell; [] if nothing."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    problems = []
    spec = nb.get("metadata", {}).get("kernelspec") or {}
    if not (spec.get("name") and spec.get("display_name")):
        problems.append(f"kernelspec metadata missing or incomplete: {spec!r}")
    code = _code_cells(nb)
    for i, cell in enumerate(code):
        if cell.get("outputs") or cell.get("execution_count") is not None:
            problems.append(f"code cell {i} has outputs or an execution count: clear them")
        try:
            tree = ast.parse(_python(_source(cell)))
        except SyntaxError as e:
            problems.append(f"code cell {i} is not valid Python: {e}")
            continue
        defined = [
            n.name
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]
        if defined:
            problems.append(
                f"code cell {i} defines {', '.join(defined)}: code belongs in nbutils, not in notebooks"
            )
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if tagged != [0]:
        return [*problems, f"the first code cell, and only it, must be tagged `parameters`; tagged: {tagged}"]
    if len(code) < 2:
        return [*problems, f"no code cell after the parameters cell to build the config ({CONFIG_CALL})"]
    try:
        cls = config_class(_source(code[1]))
    except (LookupError, ImportError, AttributeError, SyntaxError) as e:
        return [*problems, f"config class not found: {e}"]
    if not (isinstance(cls, type) and issubclass(cls, config_module.StageConfig)):
        return [*problems, f"{cls!r} is not a StageConfig dataclass"]
    if cls.stage != Path(path).stem:
        problems.append(f"{cls.__name__}.stage is {cls.stage!r}, not the notebook's name {Path(path).stem!r}")

    declared = runner.notebook_parameters(path)  # what the runner reads: {name: default as source}
    fields = [f.name for f in dataclasses.fields(cls)]
    if list(declared) != fields:
        problems.append(
            f"parameters {list(declared)} != {cls.__name__} fields {fields} (same names, same order)"
        )
    types = config_module.field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name not in declared:
            continue
        try:
            value = ast.literal_eval(declared[f.name])
        except (ValueError, SyntaxError):
            problems.append(f"{f.name} = {declared[f.name]}: not a literal")
            continue
        if type(value) is not types[f.name]:
            problems.append(
                f"{f.name} = {declared[f.name]}: a {type(value).__name__}, the field is "
                f"{types[f.name].__name__}"
            )
        elif value != f.default:
            problems.append(
                f"{f.name} = {declared[f.name]}: default differs from {cls.__name__}'s {f.default!r}"
            )
    if _tokens(_source(code[0])) != _tokens(config_module.parameters_cell(cls)):
        problems.append(
            f"the parameters cell differs from nbutils.config.parameters_cell({cls.__name__}) "
            "beyond comments and spacing"
        )
    return problems


def notebook_configs(notebooks_dir: Path = runner.NOTEBOOKS_DIR) -> dict[str, type]:
    """{notebook name: its config class} for the notebooks that exist."""
    out = {}
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        out[path.stem] = config_class(_source(_code_cells(json.loads(path.read_text(encoding="utf-8")))[1]))
    return out


# ----------------------------------------------------------------------------- reading a profile


def commented_keys(profile_text: str) -> dict[str, list[str]]:
    """{notebook: names in its commented-out suggestions (`    # name: value`)} under `notebooks:`."""
    out, notebook, inside = {}, None, False
    for line in profile_text.splitlines():
        if re.match(r"^\S", line) and not line.startswith("#"):
            inside = line.startswith("notebooks:")
            continue
        if not inside:
            continue
        entry = re.match(r"^  ([A-Za-z0-9_]+):", line)
        if entry:
            notebook = entry.group(1)
            continue
        suggestion = re.match(r"^ {4,}#\s*([A-Za-z_][A-Za-z0-9_]*):(\s|$)", line)
        if suggestion and notebook:
            out.setdefault(notebook, []).append(suggestion.group(1))
    return out


def profile_problems(path: Path, configs: dict[str, type]) -> list[str]:
    """Names a profile uses, or suggests in comments, that the notebook's config does not declare."""
    profile = runner.load_profile(path)
    problems = []
    fields = {nb: [f.name for f in dataclasses.fields(cls)] for nb, cls in configs.items()}
    used = [nb for nb in profile["notebooks"] if nb in configs]
    for key in profile["common"]:
        if not any(key in fields[nb] for nb in used):
            problems.append(f"common.{key}: no notebook of the profile declares it")
    for nb, entry in profile["notebooks"].items():
        if nb not in configs:
            if entry:
                problems.append(f"notebooks.{nb}: sets {', '.join(entry)} but {nb}.ipynb does not exist")
            continue
        for key in entry:
            if key not in fields[nb]:
                problems.append(f"notebooks.{nb}.{key}: {configs[nb].__name__} has no field {key!r}")
        values = {
            **{k: v for k, v in profile["common"].items() if k in fields[nb]},
            **{k: v for k, v in entry.items() if k in fields[nb]},
        }
        try:
            configs[nb](**values)  # the config's own type checks
        except TypeError as e:
            problems.append(f"notebooks.{nb}: {e}")
    for nb, keys in commented_keys(Path(path).read_text(encoding="utf-8")).items():
        for key in keys:
            if nb in configs and key not in fields[nb]:
                problems.append(
                    f"notebooks.{nb}: the commented suggestion {key!r} is not a field of "
                    f"{configs[nb].__name__} (declared: {', '.join(fields[nb])})"
                )
    return problems


# ----------------------------------------------------------------------------- the shipped files


def test_every_pipeline_notebook_is_checked():
    assert {p.stem for p in NOTEBOOKS} <= set(runner.PIPELINE)  # no stray notebook escapes the checks
    assert {p.stem for p in NOTEBOOKS} >= {"processdata_01", "processdata_02", "processdata_03", "train_clip"}
    assert {p.stem for p in PROFILES} == {"coco_en", "demo", "flickr30k_cn", "own_folder"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_agrees_with_its_config(path):
    assert notebook_problems(path) == []


def test_each_notebook_builds_its_own_stage_config():
    from nbutils.analyze_loss import AnalyzeLossConfig
    from nbutils.data.download import DownloadConfig
    from nbutils.data.prepare import PrepareConfig
    from nbutils.data.validate import ValidationConfig
    from nbutils.training.clip import TrainClipConfig

    expected = {
        "processdata_01": DownloadConfig,
        "processdata_02": ValidationConfig,
        "processdata_03": PrepareConfig,
        "train_clip": TrainClipConfig,
        "analyze_loss": AnalyzeLossConfig,
    }
    assert {nb: cls for nb, cls in notebook_configs().items() if nb in expected} == expected


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profiles_use_only_names_the_configs_declare(path):
    assert profile_problems(path, notebook_configs()) == []


# ----------------------------------------------------------------------------- drift is caught


def _with_parameters_cell(nb: dict, edit) -> dict:
    nb = copy.deepcopy(nb)
    cell = _code_cells(nb)[0]
    cell["source"] = edit(_source(cell))
    return nb


def _replace_line(name: str, new: str | None):
    """An edit of the parameters cell: the line assigning `name` becomes `new` (None: removed)."""

    def edit(source):
        lines = source.splitlines()
        (i,) = [i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line)]
        lines[i : i + 1] = [] if new is None else [new]
        return "\n".join(lines)

    return edit


def _swap(first: str, second: str):
    def edit(source):
        lines = source.splitlines()
        (i,), (j,) = (
            [k for k, line in enumerate(lines) if re.match(rf"{n}\s*=", line)] for n in (first, second)
        )
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)

    return edit


PARAMETER_DRIFT = [
    ("renamed", _replace_line("image_size", "img_size = 64"), ["!= PrepareConfig fields", "parameters_cell"]),
    ("removed", _replace_line("cache_dir", None), ["!= PrepareConfig fields"]),
    ("added", lambda s: s + "\nextra = 1", ["!= PrepareConfig fields"]),
    ("reordered", _swap("val_fraction", "test_fraction"), ["same order"]),
    (
        "default changed",
        _replace_line("val_fraction", "val_fraction = 0.25"),
        ["val_fraction = 0.25: default differs"],
    ),
    (
        "type changed",
        _replace_line("small_train_images", "small_train_images = 500.0"),
        ["small_train_images = 500.0: a float, the field is int"],
    ),
    ("bool for int", _replace_line("num_workers", "num_workers = False"), ["a bool, the field is int"]),
    ("not a literal", _replace_line("seed", "seed = int('0')"), ["seed = int('0'): not a literal"]),
    (
        "spelt differently",
        _replace_line("small_train_images", "small_train_images = 5_00"),
        ["parameters_cell(PrepareConfig)"],
    ),
    ("quoted differently", _replace_line("source", "source = 'demo'"), ["parameters_cell(PrepareConfig)"]),
]


@pytest.mark.parametrize("what, edit, expected", PARAMETER_DRIFT, ids=[d[0] for d in PARAMETER_DRIFT])
def test_a_drifted_parameters_cell_is_caught(tmp_path, what, edit, expected):
    original = json.loads((runner.NOTEBOOKS_DIR / "processdata_03.ipynb").read_text(encoding="utf-8"))
    path = tmp_path / "processdata_03.ipynb"
    path.write_text(json.dumps(_with_parameters_cell(original, edit)), encoding="utf-8")
    problems = notebook_problems(path)
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


def test_comments_and_spacing_of_the_parameters_cell_are_free(tmp_path):
    original = json.loads((runner.NOTEBOOKS_DIR / "processdata_03.ipynb").read_text(encoding="utf-8"))

    def edit(source):
        return "# tweak these\n\n" + source.replace("seed = 0 ", "seed=0     ").replace("# seeds", "# a = b,")

    edited = _with_parameters_cell(original, edit)
    assert edited != original
    path = tmp_path / "processdata_03.ipynb"
    path.write_text(json.dumps(edited), encoding="utf-8")
    assert notebook_problems(path) == []


def _structure_drift():
    def outputs(nb):
        _code_cells(nb)[2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]

    def no_kernelspec(nb):
        del nb["metadata"]["kernelspec"]

    def helper(nb):
        _code_cells(nb)[2]["source"] += "\n\ndef helper(x):\n    return x\n"

    def other_config(nb):
        cell = _code_cells(nb)[1]
        cell["source"] = (
            _source(cell)
            .replace("prepare.PrepareConfig", "validate.ValidationConfig")
            .replace("import captions, prepare", "import captions, prepare, validate")
        )

    def no_config(nb):
        cell = _code_cells(nb)[1]
        cell["source"] = _source(cell).replace("config = prepare.PrepareConfig.from_notebook(globals())", "")

    def untagged(nb):
        _code_cells(nb)[0]["metadata"]["tags"] = []

    return [
        (outputs, "has outputs"),
        (no_kernelspec, "kernelspec"),
        (helper, "defines helper"),
        (other_config, "ValidationConfig.stage is 'processdata_02'"),
        (other_config, "!= ValidationConfig fields"),
        (no_config, "config class not found"),
        (untagged, "must be tagged `parameters`"),
    ]


@pytest.mark.parametrize("change, expected", _structure_drift(), ids=lambda x: getattr(x, "__name__", None))
def test_a_drifted_notebook_structure_is_caught(tmp_path, change, expected):
    nb = json.loads((runner.NOTEBOOKS_DIR / "processdata_03.ipynb").read_text(encoding="utf-8"))
    change(nb)
    path = tmp_path / "processdata_03.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    problems = notebook_problems(path)
    assert any(expected in p for p in problems), (expected, problems)


PROFILE_DRIFT = [
    ("notebooks:\n  train_clip:\n    model_name: x\n", "train_clip.model_name: TrainClipConfig has no field"),
    ("notebooks:\n  train_clip:\n    # model_name: x\n", "the commented suggestion 'model_name'"),
    ("notebooks:\n  processdata_03:\n    image_size: '64'\n", "PrepareConfig.image_size must be int"),
    ("common:\n  batch_sze: 8\nnotebooks:\n  train_clip:\n", "common.batch_sze: no notebook"),
    (
        "notebooks:\n  analyze_loss:\n    decoder: gpt2\n",
        "analyze_loss.decoder: AnalyzeLossConfig has no field",
    ),
]


@pytest.mark.parametrize("text, expected", PROFILE_DRIFT)
def test_a_drifted_profile_is_caught(tmp_path, text, expected):
    path = tmp_path / "drifted.yaml"
    path.write_text("description: drift\n" + text, encoding="utf-8")
    assert any(expected in p for p in profile_problems(path, notebook_configs())), profile_problems(
        path, notebook_configs()
    )


def test_a_profile_setting_parameters_of_a_missing_notebook_is_caught(tmp_path):
    """Parameters for a notebook that does not exist (here: a notebooks folder with train_clip only)."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(runner.NOTEBOOKS_DIR / "train_clip.ipynb", notebooks)
    path = tmp_path / "drifted.yaml"
    path.write_text(
        "description: drift\nnotebooks:\n  train_clip:\n  analyze_loss:\n    decoder: gpt2\n",
        encoding="utf-8",
    )
    configs = notebook_configs(notebooks)
    assert set(configs) == {"train_clip"}
    problems = profile_problems(path, configs)
    assert any("analyze_loss.ipynb does not exist" in p for p in problems), problems
    # an entry without parameters for a missing notebook is fine (the runner skips it with a note)
    path.write_text("description: fine\nnotebooks:\n  train_clip:\n  analyze_loss:\n", encoding="utf-8")
    assert profile_problems(path, configs) == []


def test_commented_suggestions_are_read_under_their_notebook():
    text = (
        "# header\n#   CLIP: openai/clip\nnotebooks:\n  processdata_03:\n    source: x   # a: b\n"
        "    # cache_dir: /fast  # EDIT\n  train_clip:\n    # model: openai/clip\n"
        "  train_clipcap:\n    # planned notebook; suggested names:\n    # decoder: gpt2\n"
    )
    assert commented_keys(text) == {
        "processdata_03": ["cache_dir"],
        "train_clip": ["model"],
        "train_clipcap": ["decoder"],
    }
    fine = yaml.safe_load(text)["notebooks"]
    assert fine["train_clip"] is None and fine["processdata_03"] == {"source": "x"}
