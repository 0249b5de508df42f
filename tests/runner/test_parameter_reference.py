"""docs/parameters.md is what `python -m nbutils parameters` generates from the config dataclasses."""

from __future__ import annotations

import dataclasses
import re

from nbutils.__main__ import main
from nbutils.data.prepare import PrepareConfig
from nbutils.runner import PIPELINE, REPO_DIR
from nbutils.runner.parameter_reference import (
    COMMAND,
    notebook_title,
    parameter_reference,
    stage_configs,
)
from nbutils.training.clip import TrainClipConfig

DOC = REPO_DIR / "docs" / "parameters.md"


def test_docs_parameters_md_is_up_to_date():
    expected = parameter_reference()
    actual = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert actual == expected, (
        f"{DOC.relative_to(REPO_DIR)} differs from the config dataclasses: run `make docs` ({COMMAND})"
    )


def test_the_reference_lists_every_notebook_in_pipeline_order_with_its_title():
    text = parameter_reference()
    assert "`make docs`" in text.split("\n## ")[0] and COMMAND in text.split("\n## ")[0]
    headings = re.findall(r"^## (\S+)$", text, flags=re.MULTILINE)
    assert headings == PIPELINE
    assert list(stage_configs()) == PIPELINE
    assert stage_configs()["processdata_03"] is PrepareConfig
    section = text.split("\n## processdata_03\n")[1].split("\n## ")[0]
    assert section.lstrip().startswith("Clean splits and a fast image cache. ")
    assert "Config: `nbutils.data.prepare.PrepareConfig`." in section


def test_the_reference_has_a_row_per_field_with_type_default_and_help():
    text = parameter_reference()
    section = text.split("\n## processdata_03\n")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [f.name for f in dataclasses.fields(PrepareConfig)]
    assert (
        "| `val_fraction` | float | `0.05` | share of IMAGES (not captions) held out for validation |" in rows
    )
    assert '| `image_processor` | str | `"vit"` |' in section
    clip = text.split("\n## train_clip\n")[1].split("\n## ")[0]
    assert "| `lock_image` | bool | `False` | LiT: freeze the image tower, train the text side |" in clip
    assert len([line for line in clip.splitlines() if line.startswith("| `")]) == len(
        dataclasses.fields(TrainClipConfig)
    )


def test_help_text_is_escaped_for_markdown_tables():
    text = parameter_reference()
    assert "outputs/<run>" not in text  # would render as an HTML tag
    for row in (line for line in text.splitlines() if line.startswith("| `")):
        unescaped = re.sub(r"\\\|", "", row)
        assert unescaped.count("|") == 5, row  # four cells, whatever the help says


def test_notebook_title(tmp_path):
    path = tmp_path / "train_x.ipynb"
    path.write_text(
        '{"cells": [{"cell_type": "code", "source": "x = 1"}, '
        '{"cell_type": "markdown", "source": ["# train_x: learn things\\n", "more"]}]}',
        encoding="utf-8",
    )
    assert notebook_title(path) == "Learn things"


def test_the_command_prints_or_writes_the_reference(tmp_path, capsys):
    assert main(["parameters"]) == 0
    assert capsys.readouterr().out == parameter_reference()
    out = tmp_path / "docs" / "parameters.md"
    assert main(["parameters", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == parameter_reference()
