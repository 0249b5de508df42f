"""Stage hand-offs: each stage's stage.json manifest, its loader, and errors that say which stage to run."""

import datetime as dt
import re
import shutil

import pandas as pd
import pytest

from nbutils import stages
from nbutils.data.prepare import PrepareConfig, load_source
from nbutils.data.validate import ValidationConfig, load_input, validate_images
from nbutils.errors import DataError
from nbutils.files import read_json, write_json

ORIGINS = [stages.DataOrigin("zh", "/data/demo/objects.jsonl"), stages.DataOrigin()]  # known, and unknown


def _downloaded(tmp_path) -> pd.DataFrame:
    """A processdata_01 table whose values a careless CSV round trip would change."""
    images = tmp_path / "images"
    return pd.DataFrame(
        {
            "image_path": [str(images / "a.jpg"), str(images / "图.jpg"), str(images / "a.jpg")],
            "text": ["一只猫, 坐着", "NA", ""],  # a comma, pandas' NaN marker, an empty caption
            "url": ["http://h/a.jpg", "http://h/%E5%9B%BE.jpg", "http://h/a.jpg"],
            "id": ["007", "1", "2"],  # ids stay strings: 007 is not 7
        }
    )


def _manifest(stage_dir) -> dict:
    return read_json(stage_dir / stages.STAGE_FILE)


@pytest.mark.parametrize("origin", ORIGINS, ids=["known", "unknown"])
def test_downloaded_round_trip_keeps_the_table_and_origin(tmp_path, origin):
    run = tmp_path / "run"
    table = _downloaded(tmp_path)
    stages.save_downloaded(run / "processdata_01", table, origin)
    loaded = stages.load_downloaded(run)
    pd.testing.assert_frame_equal(loaded.table, table)
    assert loaded.origin == origin and loaded.stage_dir == run / "processdata_01"
    manifest = _manifest(run / "processdata_01")
    assert (manifest["stage"], manifest["format_version"]) == ("processdata_01", stages.FORMAT_VERSION)
    assert manifest["files"] == {"table": "downloaded.csv"}
    assert manifest["origin"] == {"language": origin.language, "ground_truth": origin.ground_truth}
    assert dt.datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    # processdata_02 reads it through the loader
    validate_table, validate_origin = load_input(ValidationConfig(run_dir=str(run), source="processdata_01"))
    pd.testing.assert_frame_equal(validate_table, table)
    assert validate_origin == origin


@pytest.mark.parametrize("origin", ORIGINS, ids=["known", "unknown"])
def test_validated_round_trip_keeps_the_table_and_origin(tmp_path, origin, make_jpeg):
    run = tmp_path / "run"
    paths = [make_jpeg(tmp_path / "images" / f"{i}.jpg", seed=i) for i in range(3)]
    (tmp_path / "images" / "broken.jpg").write_text("<html>gone</html>")
    table = pd.DataFrame(
        {
            "image_path": [str(p) for p in paths] + [str(tmp_path / "images" / "broken.jpg")],
            "text": ["猫", "NA", "a, b", "坏"],
            "url": [f"http://h/{i}.jpg" for i in range(4)],
        }
    )
    out = run / "processdata_02"
    result = validate_images(table, out, ValidationConfig(num_workers=1), progress=False)
    assert len(result.clean) == 3
    stages.save_validated(out, result.clean, origin)
    loaded = stages.load_validated(run)
    pd.testing.assert_frame_equal(loaded.table, result.clean)
    assert loaded.origin == origin and loaded.stage_dir == out
    manifest = _manifest(out)
    assert (manifest["stage"], manifest["format_version"]) == ("processdata_02", stages.FORMAT_VERSION)
    assert manifest["files"] == {"table": "clean.csv", "rejects": "rejects.csv", "checks": "checks.csv"}
    # processdata_03 reads it through the loader: a recorded language is kept, an unknown one takes its setting
    language = "" if origin.language else "en"
    prepare_table, name, prepare_origin = load_source(
        PrepareConfig(run_dir=str(run), source="processdata_02", language=language)
    )
    pd.testing.assert_frame_equal(prepare_table[["image_path", "text"]], result.clean[["image_path", "text"]])
    assert name == "run-clean"
    assert prepare_origin == stages.DataOrigin(origin.language or "en", origin.ground_truth)


LOADERS = {
    "processdata_01": stages.load_downloaded,
    "processdata_02": stages.load_validated,
    "processdata_03": stages.load_prepared,
    "train_clip": stages.load_trained_clip,
}


@pytest.mark.parametrize("stage", list(LOADERS))
def test_a_missing_stage_names_the_stage_to_run(tmp_path, stage):
    expected = re.escape(
        f"the run folder {tmp_path} has no finished {stage} ({stage}/stage.json missing). "
        f"Run notebooks/{stage}.ipynb with run_dir = {str(tmp_path)!r} first, "
        "or set run_dir to a run folder that has it."
    )
    with pytest.raises(DataError, match=expected):
        LOADERS[stage](tmp_path)
    # a folder with files but no manifest is an unfinished stage: never read
    (tmp_path / stage).mkdir()
    (tmp_path / stage / "downloaded.csv").write_text("image_path,text\na.jpg,猫\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        LOADERS[stage](tmp_path)


def test_a_manifest_from_another_stage_or_version_is_rejected(tmp_path):
    stages.save_downloaded(tmp_path / "processdata_01", _downloaded(tmp_path), ORIGINS[0])
    # processdata_01's manifest copied into processdata_02's folder
    shutil.copytree(tmp_path / "processdata_01", tmp_path / "processdata_02")
    for name in ("clean.csv", "rejects.csv", "checks.csv"):
        (tmp_path / "processdata_02" / name).write_text("image_path,text\n", encoding="utf-8")
    path = tmp_path / "processdata_02" / "stage.json"
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{path}: written by another stage or version ('processdata_01', format_version 1); "
            "rerun processdata_02"
        ),
    ):
        stages.load_validated(tmp_path)

    manifest_path = tmp_path / "processdata_01" / "stage.json"
    manifest = read_json(manifest_path)
    for version in (stages.FORMAT_VERSION + 1, None):
        write_json(manifest_path, {**manifest, "format_version": version})
        with pytest.raises(
            DataError,
            match=re.escape(f"('processdata_01', format_version {version!r}); rerun processdata_01"),
        ):
            stages.load_downloaded(tmp_path)
    write_json(manifest_path, manifest)
    pd.testing.assert_frame_equal(stages.load_downloaded(tmp_path).table, _downloaded(tmp_path))


def test_a_listed_but_missing_file_is_rejected(tmp_path):
    stage_dir = tmp_path / "processdata_01"
    stages.save_downloaded(stage_dir, _downloaded(tmp_path), ORIGINS[0])
    (stage_dir / "downloaded.csv").unlink()
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{stage_dir}: downloaded.csv missing although stage.json lists them; rerun processdata_01"
        ),
    ):
        stages.load_downloaded(tmp_path)

    stage_dir = tmp_path / "processdata_02"
    stage_dir.mkdir()
    for name in ("clean.csv", "checks.csv"):  # no rejects.csv
        (stage_dir / name).write_text("image_path,text\n", encoding="utf-8")
    stages.save_validated(stage_dir, pd.DataFrame(columns=["image_path", "text"]), ORIGINS[0])
    with pytest.raises(DataError, match=re.escape(f"{stage_dir}: rejects.csv missing although stage.json")):
        stages.load_validated(tmp_path)


def test_a_missing_stage_error_names_the_runs_beside_that_have_it(tmp_path):
    outputs = tmp_path / "outputs"
    for run in ("demo", "mine"):
        stages.save_downloaded(outputs / run / "processdata_01", _downloaded(tmp_path), ORIGINS[0])
    (outputs / "half" / "processdata_01").mkdir(parents=True)  # unfinished: no stage.json
    message = str(stages.missing_stage(outputs / "lab", "processdata_01"))
    assert message.startswith(
        f"the run folder {outputs / 'lab'} does not exist. Run notebooks/processdata_01.ipynb"
    )
    assert message.endswith("Runs beside it that have processdata_01: demo, mine.")
    either = str(
        stages.missing_stage(outputs / "demo", ("train_encoder_decoder", "train_clipcap"), "captioners")
    )
    assert "has no finished train_encoder_decoder or train_clipcap (" in either
    assert "or set captioners to a run folder that has it." in either
    assert "Runs beside" not in either
