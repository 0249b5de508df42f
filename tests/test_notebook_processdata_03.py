"""Runs the real processdata_03 notebook through the runner (papermill) with tiny parameters."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from transformers import ViTImageProcessorPil

from nbutils import runner
from nbutils.image_cache import ImageCache

SUMMARY_KEYS = {"train_images", "val_images", "test_images", "train_rows", "val_rows", "test_rows",
                "dropped_rows", "cache_format", "image_size"}


def test_processdata_03_on_the_demo_set(tmp_path):
    params = ["source=demo", f"data_dir={tmp_path / 'data'}", "n_images=40", "image_size=32", "small_train_images=5",
              "small_test_images=2", "val_fraction=0.1", "test_fraction=0.2", "num_workers=1"]
    result = runner.run_pipeline("demo", only=["processdata_03"], params=params, run_name="t",
                                 outputs_dir=tmp_path / "outputs")
    run_dir = tmp_path / "outputs" / "t"
    out = run_dir / "processdata_03"
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (28, 4, 8)
    assert summary["train_rows"] + summary["val_rows"] + summary["test_rows"] == 40 * 5
    assert summary["dropped_rows"] == 0 and summary["image_size"] == 32

    tables = {s: pd.read_csv(out / f"{s}.csv") for s in ("train", "val", "test", "train_small", "test_small")}
    assert list(tables["train"].columns) == ["image_path", "text"]
    images = {s: set(t["image_path"]) for s, t in tables.items()}
    assert not (images["train"] & images["val"]) and not (images["train"] & images["test"]) \
        and not (images["val"] & images["test"])
    assert len(images["train_small"]) == 5 and images["test_small"] <= images["test"]

    # The cache the notebook built serves exactly what the processor gives for the original image.
    cache = ImageCache(json.loads((out / "dataset.json").read_text())["cache_dir"])
    path = sorted(images["test"])[0]
    want = ViTImageProcessorPil(size={"height": 32, "width": 32})(Image.open(path).convert("RGB"),
                                                                   return_tensors="np").pixel_values
    got = cache.pixel_values(cache.index_of([path]), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(got, want, atol=1e-5)

    # The runner's report and record.
    entries = {nb["name"]: nb for nb in result["notebooks"]}
    assert result["status"] == "ok" and entries["processdata_03"]["status"] == "ok"
    assert entries["processdata_03"]["parameters"]["n_images"] == 40
    assert (run_dir / "processdata_03.html").is_file() and (run_dir / "index.html").is_file()
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "cache_samples.png", "caption_lengths.png", "split_counts.png"]


def test_processdata_03_reports_a_bad_table_naming_file_and_column(tmp_path):
    bad = tmp_path / "captions.csv"
    bad.write_text("image_path,caption\na.jpg,一只猫\n", encoding="utf-8")
    with pytest.raises(runner.RunFailed) as err:
        runner.run_pipeline("demo", only=["processdata_03"], run_name="bad", outputs_dir=tmp_path / "outputs",
                            params=[f"source={bad}", "input_format=text_image_csv", f"data_dir={tmp_path}"])
    message = str(err.value)
    assert "processdata_03" in message and "captions.csv" in message and "text" in message
    assert (tmp_path / "outputs" / "bad" / "processdata_03.ipynb").is_file()   # failed notebook kept
