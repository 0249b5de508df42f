"""Profiles: finding them by name, and the shipped ones agreeing with the notebooks that exist."""

import dataclasses

import pytest

from nbutils import runner
from nbutils.data.prepare import PrepareConfig
from nbutils.demo.source import DemoSource
from nbutils.runner import ParameterError


def test_unknown_profile_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ParameterError) as info:
        runner.run_pipeline("dem", outputs_dir=tmp_path / "out")
    assert "unknown profile 'dem'" in str(info.value) and "did you mean 'demo'" in str(info.value)
    assert "coco_en, demo, flickr30k_cn" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_shipped_profiles_match_the_notebooks_that_exist():
    demo = runner.load_profile("demo")
    assert list(demo["notebooks"]) == runner.PIPELINE
    # The demo chains the data notebooks: generated set -> faulty server -> download -> validate -> split.
    assert [
        demo["notebooks"][nb]["source"] for nb in ("processdata_01", "processdata_02", "processdata_03")
    ] == ["demo?language=zh&n_images=3000&image_size=64", "processdata_01", "processdata_02"]
    assert DemoSource.parse(demo["notebooks"]["processdata_01"]["source"]) == DemoSource(n_images=3000)
    pd03 = {f.name for f in dataclasses.fields(PrepareConfig)}
    existing = [nb for nb in runner.PIPELINE if (runner.NOTEBOOKS_DIR / f"{nb}.ipynb").is_file()]
    declared = {nb: runner.notebook_parameters(runner.NOTEBOOKS_DIR / f"{nb}.ipynb") for nb in existing}
    for name in ("demo", "flickr30k_cn", "coco_en"):
        profile = runner.load_profile(name)
        assert profile["run"] == name and profile["description"]
        assert set(profile["notebooks"]["processdata_03"]) <= pd03
        # the templates for large sets keep their cache as JPEG shards; the demo keeps the (default) memmap
        cache_format = profile["notebooks"]["processdata_03"].get("cache_format", "memmap")
        assert cache_format == ("memmap" if name == "demo" else "shards")
        selected = [nb for nb in existing if nb in profile["notebooks"]]
        injected = {nb: {"run_dir": "/r", "output_dir": f"/r/{nb}"} for nb in selected}
        if selected:  # raises on any name a notebook does not declare
            runner.resolve_parameters(
                {nb: declared[nb] for nb in selected},
                selected,
                profile["common"],
                profile["notebooks"],
                injected=injected,
            )
