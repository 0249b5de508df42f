"""The real processdata_03 notebook, run once per test run by the runner (papermill): the shared
`prepared_run` fixture (tests/conftest.py: 60 demo images, 32 px, val 0.15, test 0.2, small 5/2)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from transformers import ViTImageProcessorPil

from nbutils import runner, stages

SUMMARY_KEYS = {
    "train_images",
    "val_images",
    "test_images",
    "train_rows",
    "val_rows",
    "test_rows",
    "dropped_rows",
    "cache_format",
    "image_size",
}


def test_processdata_03_on_the_demo_set(prepared_run, readable_report):
    result, run_dir, params = prepared_run["result"], prepared_run["run_dir"], prepared_run["params"]
    out = run_dir / "processdata_03"
    n = prepared_run["demo"].n_images
    # nbutils.data.splits.split_by_image: a non-zero fraction gets round(n * fraction) images, at least one.
    n_val, n_test = max(1, round(n * params["val_fraction"])), max(1, round(n * params["test_fraction"]))
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (
        n - n_val - n_test,
        n_val,
        n_test,
    )
    assert summary["train_rows"] + summary["val_rows"] + summary["test_rows"] == n * 5
    assert summary["dropped_rows"] == 0 and summary["image_size"] == params["image_size"] == 32
    # One sentence first, in summary.json, the notebook and its report; tables, not dicts, below it.
    assert (
        readable_report(run_dir, "processdata_03")
        == summary["headline"]
        == (
            f"{n} images ({n * 5} captions) split into {n - n_val - n_test} train / {n_val} val / {n_test} test; "
            f"image cache of {n} images at 32 px."
        )
    )

    tables = {s: pd.read_csv(out / f"{s}.csv") for s in ("train", "val", "test", "train_small", "test_small")}
    assert list(tables["train"].columns) == ["image_path", "text"]
    images = {s: set(t["image_path"]) for s, t in tables.items()}
    assert (
        not (images["train"] & images["val"])
        and not (images["train"] & images["test"])
        and not (images["val"] & images["test"])
    )
    assert len(images["train_small"]) == params["small_train_images"] == 5
    assert len(images["test_small"]) == params["small_test_images"] and images["test_small"] <= images["test"]

    # The cache the notebook built serves exactly what the processor gives for the original image.
    prepared = stages.load_prepared(run_dir)
    cache = prepared.cache
    assert {s: set(t["image_path"]) for s, t in prepared.tables.items()} == images
    path = sorted(images["test"])[0]
    want = ViTImageProcessorPil(size={"height": 32, "width": 32})(
        Image.open(path).convert("RGB"), return_tensors="np"
    ).pixel_values
    got = cache.pixel_values(cache.index_of([path]), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert prepared.mean_std == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    # The hand-off: stage.json names the files, the cache, and the demo's ground truth.
    manifest = json.loads((out / stages.STAGE_FILE).read_text())
    assert manifest["stage"] == "processdata_03" and not (out / "dataset.json").exists()
    assert all((out / name).exists() for name in manifest["files"].values())
    assert Path(manifest["cache_dir"]).parent == (prepared_run["data_dir"] / "cache").resolve()
    assert len(cache) == n and manifest["geometry"]["height"] == manifest["geometry"]["width"] == 32
    assert prepared.origin.language == "zh" and prepared.origin.ground_truth.endswith("objects.jsonl")
    # The source gives neither data_dir nor image_size: the demo set is generated under processdata_03's
    # data_dir at its image_size (<data_dir>/demo/zh-n60-32px-seed0; demo.yaml's seed is 0).
    truth = prepared_run["demo"].folder(seed=0) / "objects.jsonl"
    assert truth.parent == prepared_run["data_dir"] / "demo" / "zh-n60-32px-seed0"
    assert Path(prepared.origin.ground_truth) == truth.resolve()

    # The runner's report and record.
    entries = {nb["name"]: nb for nb in result["notebooks"]}
    assert result["status"] == "ok" and entries["processdata_03"]["status"] == "ok"
    assert entries["processdata_03"]["parameters"]["source"] == params["source"] == "demo?n_images=60"
    assert n == 60 and "n_images" not in entries["processdata_03"]["parameters"]
    assert (run_dir / "processdata_03.html").is_file() and (run_dir / "index.html").is_file()
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "cache_samples.png",
        "caption_lengths.png",
        "split_counts.png",
    ]


def test_processdata_03_reports_a_bad_table_naming_file_and_column(tmp_path):
    bad = tmp_path / "captions.csv"
    bad.write_text("image_path,caption\na.jpg,一只猫\n", encoding="utf-8")
    with pytest.raises(runner.RunFailed) as err:
        runner.run_pipeline(
            "demo",
            only=["processdata_03"],
            run_name="bad",
            outputs_dir=tmp_path / "outputs",
            params=[f"source={bad}", "input_format=text_image_csv", f"data_dir={tmp_path}"],
        )
    message = str(err.value)
    assert "processdata_03" in message and "captions.csv" in message and "text" in message
    assert (tmp_path / "outputs" / "bad" / "processdata_03.ipynb").is_file()  # failed notebook kept


def test_the_report_check_finds_raw_dumps_and_passes_tables(find_raw_dumps):
    styler = "<pandas.io.formats.style.Styler at 0x7fb65c868bd0>"
    assert find_raw_dumps(["{'rows': 15000}", "2,810 of 3,000", styler]) == ["{'rows': 15000}", styler]
    assert find_raw_dumps(['<style>#T_1 td {\n color: red}</style><td id="T_1_row0">2,810</td>']) == []
    assert find_raw_dumps(["Empty DataFrame\nColumns: []"]) and find_raw_dumps(['{"a": 1}'])
