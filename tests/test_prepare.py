"""processdata_03's engine: from a caption table to splits, drops and a cache, and back via load_prepared."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from transformers import ViTImageProcessorPil

from nbutils import prepare
from nbutils.io import DataError, read_json


def _images(tmp_path, n=12):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / "img" / f"{i:03d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_prepare_dataset_writes_clean_splits_and_a_matching_cache(tmp_path):
    paths = _images(tmp_path)
    corrupt = tmp_path / "img" / "corrupt.jpg"
    corrupt.write_bytes(b"<html>not an image</html>")
    rows = [{"image_path": p, "text": f"图 片 {'一二三四五六七八九十甲乙'[i]} 的 描述 {'子丑寅'[j]}"} for i, p in enumerate(paths) for j in range(3)]
    rows += [{"image_path": str(corrupt), "text": "坏图"}, {"image_path": str(tmp_path / "gone.jpg"), "text": "没有"},
             {"image_path": paths[0], "text": ""}]
    out = tmp_path / "run" / "processdata_03"
    data = prepare.prepare_dataset(pd.DataFrame(rows), out, dataset_name="t", image_size=16,
                                   data_dir=tmp_path / "data", val_fraction=0.2, test_fraction=0.2,
                                   small_train_images=2, small_test_images=1, num_workers=1)
    s = data.summary()
    assert (s["train_images"], s["val_images"], s["test_images"]) == (8, 2, 2)
    assert s["train_rows"] + s["val_rows"] + s["test_rows"] == 36
    assert s["dropped_rows"] == 3 and s["image_size"] == 16 and s["cache_format"] == "memmap-uint8"
    assert set(s["dropped_by_reason"]) == {"empty caption", "image file not found"} | {
        r for r in s["dropped_by_reason"] if r.startswith("unreadable image")}
    assert any(r.startswith("unreadable image") for r in s["dropped_by_reason"])
    # captions normalised, small subsets are subsets, every file on disk
    assert data.tables["train"]["text"].str.contains(" ").sum() == 0
    assert set(data.tables["train_small"]["image_path"]) <= set(data.tables["train"]["image_path"])
    for name in prepare.TABLES:
        assert (out / f"{name}.csv").is_file()
    assert (out / "dropped.csv").is_file() and (out / "image_processor" / "preprocessor_config.json").is_file()

    # load_prepared reads back the same tables, and a dataset item equals the processor's own output
    again = prepare.load_prepared(tmp_path / "run")
    for name in prepare.TABLES:
        pd.testing.assert_frame_equal(again.tables[name], data.tables[name])
    ds = again.dataset("test")
    item = ds[0]
    path = again.tables["test"]["image_path"][0]
    want = ViTImageProcessorPil(size={"height": 16, "width": 16})(Image.open(path).convert("RGB"),
                                                                   return_tensors="np").pixel_values[0]
    assert item["pixel_values"].shape == (3, 16, 16)
    np.testing.assert_allclose(item["pixel_values"].numpy(), want, atol=1e-5)
    assert Path(read_json(out / "dataset.json")["cache_dir"]) == Path(data.cache.cache_dir).resolve()


def test_prepare_dataset_refuses_a_table_with_nothing_usable(tmp_path):
    table = pd.DataFrame({"image_path": [str(tmp_path / "nope.jpg")], "text": ["x"]})
    with pytest.raises(DataError, match=r"my.csv: no usable rows left.*image file not found"):
        prepare.prepare_dataset(table, tmp_path / "o", dataset_name="t", data_dir=tmp_path, source_label="my.csv")


def test_load_source_errors_name_the_missing_input(tmp_path):
    with pytest.raises(DataError, match="run processdata_02 first"):
        prepare.load_source("processdata_02", run_dir=str(tmp_path))
    with pytest.raises(DataError, match="no such file"):
        prepare.load_source(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="run processdata_03 for this run first"):
        prepare.load_prepared(tmp_path)
