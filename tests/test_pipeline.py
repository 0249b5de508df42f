"""The stage table (nbutils/pipeline.py) against what it describes: config classes, notebooks, modules, the README."""

import dataclasses
import importlib
import pkgutil

import pytest

import nbutils
from nbutils import pipeline
from nbutils.config import StageConfig
from nbutils.runner import PIPELINE, REPO_DIR, fingerprints


def _stage_config_classes() -> dict[str, list[type]]:
    """Every StageConfig subclass the package declares, by its `stage`."""
    for module in pkgutil.walk_packages(nbutils.__path__, "nbutils."):
        if not module.name.endswith(".__main__"):
            importlib.import_module(module.name)
    found, pending = {}, [StageConfig]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.stage and cls.__module__.startswith("nbutils."):
            found.setdefault(cls.stage, []).append(cls)
    return found


def test_the_table_names_every_stage_config_and_only_those():
    found = _stage_config_classes()
    assert {name: [c.__qualname__ for c in classes] for name, classes in found.items()} == {
        s.name: [s.config] for s in pipeline.STAGES
    }
    for s in pipeline.STAGES:
        assert s.config_class() is found[s.name][0] and s.config_class().stage == s.name


def test_each_stage_has_its_notebook():
    for s in pipeline.STAGES:
        assert (REPO_DIR / s.notebook).is_file(), s.notebook


def test_stages_read_only_earlier_stages_and_name_their_own_parameters():
    for i, s in enumerate(pipeline.STAGES):
        assert set(s.reads) <= set(pipeline.NAMES[:i]), f"{s.name} reads a later stage"
        fields = {f.name for f in dataclasses.fields(s.config_class())}
        assert set(s.input_parameters) <= fields, (
            f"{s.name}: {set(s.input_parameters) - fields} are no parameters"
        )
    assert {s.loss for s in pipeline.STAGES} == {None, "contrastive", "captioning"}


def test_the_runner_takes_its_order_and_graph_from_the_table():
    assert PIPELINE == pipeline.NAMES
    assert fingerprints.READS == {s.name: list(s.reads) for s in pipeline.STAGES}
    assert fingerprints.INPUT_PARAMETERS["train_clipcap"] == ["clip_model", "language_model", "resume"]
    assert pipeline.readers("train_clip") == ["train_clipcap", "infer", "analyze_loss"]
    with pytest.raises(KeyError, match="stages: processdata_01"):
        pipeline.stage("train_blip")


def test_the_readme_shows_the_tables_picture():
    """`make docs` writes it; this fails when the table changed and the README was not regenerated."""
    readme = (REPO_DIR / "README.md").read_text(encoding="utf-8")
    assert pipeline.readme_with_picture(readme) == readme, (
        "the README's pipeline picture is stale: run `make docs`"
    )
    picture = pipeline.pipeline_picture()
    for s in pipeline.STAGES:
        assert s.name in picture and s.writes in picture
    assert "03, train_clip" in picture  # train_clipcap's inputs
    with pytest.raises(ValueError, match="no pipeline block"):
        pipeline.readme_with_picture("# a README without the markers\n")
