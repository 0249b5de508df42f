"""processdata_03's engine: from a caption table to splits, drops and a cache, and back via load_prepared."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from nbutils import stages
from nbutils.data.datasets import normalize_pixel_values
from nbutils.data.prepare import PrepareConfig, load_source, prepare_dataset
from nbutils.errors import DataError
from nbutils.files import read_json


def test_prepare_dataset_writes_clean_splits_and_a_matching_cache(tmp_path, make_jpeg):
    paths = [str(make_jpeg(tmp_path / "img" / f"{i:03d}.jpg", 40, 30 + i, seed=i)) for i in range(12)]
    corrupt = tmp_path / "img" / "corrupt.jpg"
    corrupt.write_bytes(b"<html>not an image</html>")
    rows = [
        {"image_path": p, "text": f"图 片 {'一二三四五六七八九十甲乙'[i]} 的 描述 {'子丑寅'[j]}"}
        for i, p in enumerate(paths)
        for j in range(3)
    ]
    rows += [
        {"image_path": str(corrupt), "text": "坏图"},
        {"image_path": str(tmp_path / "gone.jpg"), "text": "没有"},
        {"image_path": paths[0], "text": ""},
    ]
    out = tmp_path / "run" / "processdata_03"
    config = PrepareConfig(
        run_dir=str(tmp_path / "run"),
        output_dir=str(out),
        image_size=16,
        data_dir=str(tmp_path / "data"),
        val_fraction=0.2,
        test_fraction=0.2,
        small_train_images=2,
        small_test_images=1,
        num_workers=1,
    )
    origin = stages.DataOrigin("zh", None)
    data = prepare_dataset(pd.DataFrame(rows), config, "t", origin)
    s = data.summary()
    assert (s["train_images"], s["val_images"], s["test_images"]) == (8, 2, 2)
    assert s["train_rows"] + s["val_rows"] + s["test_rows"] == 36
    assert s["dropped_rows"] == 3 and s["image_size"] == 16 and s["cache_format"] == "memmap-uint8"
    assert set(s["dropped_by_reason"]) == {"empty caption", "image file not found"} | {
        r for r in s["dropped_by_reason"] if r.startswith("unreadable image")
    }
    assert any(r.startswith("unreadable image") for r in s["dropped_by_reason"])
    # summary.json's form: the headline first; the tables the notebook shows, formatted for reading
    from nbutils.data import prepare

    summary = prepare.summarise(data)
    assert list(summary)[0] == "headline" and {k: v for k, v in summary.items() if k != "headline"} == s
    assert summary["headline"].startswith("12 images (36 captions) split into 8 train / 2 val / 2 test; ")
    assert summary["headline"].endswith(
        " at 16 px; 3 caption rows dropped (empty caption 1, image file not found 1, unreadable image 1)."
    )
    dropped = prepare.dropped_table(data).to_html()
    assert ">reason<" in dropped and "empty caption" in dropped and "2.6 %" in dropped  # 1 of 39 rows
    assert "captions per image" in prepare.splits_table(data).to_html()
    # captions normalised, small subsets are subsets, every file on disk
    assert data.tables["train"]["text"].str.contains(" ").sum() == 0
    assert set(data.tables["train_small"]["image_path"]) <= set(data.tables["train"]["image_path"])
    for name in stages.PREPARED_TABLES:
        assert (out / f"{name}.csv").is_file()
    assert (out / "dropped.csv").is_file() and (
        out / "image_processor" / "preprocessor_config.json"
    ).is_file()

    # load_prepared reads back the same tables, and a dataset item (uint8, normalised with the
    # processor's mean/std) equals the processor's own output
    again = stages.load_prepared(tmp_path / "run")
    for name in stages.PREPARED_TABLES:
        pd.testing.assert_frame_equal(again.tables[name], data.tables[name])
    assert (again.name, again.origin) == ("t", origin)
    ds = again.dataset("test")
    assert ds.image_paths == sorted(again.tables["test"]["image_path"].unique())
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16})
    assert len(ds) == 2
    for k in range(len(ds)):
        item = ds[k]
        assert item["image_index"] == k
        path = ds.image_paths[k]
        want = processor(Image.open(path).convert("RGB"), return_tensors="np").pixel_values[0]
        assert item["pixel_values"].shape == (3, 16, 16) and item["pixel_values"].dtype == torch.uint8
        got = normalize_pixel_values(item["pixel_values"], *again.mean_std)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    manifest = read_json(out / "stage.json")
    assert Path(manifest["cache_dir"]) == Path(data.cache.cache_dir).resolve()
    assert (manifest["stage"], manifest["name"]) == ("processdata_03", "t")
    assert manifest["origin"] == {"language": "zh", "ground_truth": None}


def test_prepare_dataset_refuses_a_table_with_nothing_usable(tmp_path):
    table = pd.DataFrame({"image_path": [str(tmp_path / "nope.jpg")], "text": ["x"]})
    config = PrepareConfig(output_dir=str(tmp_path / "o"), data_dir=str(tmp_path), source="my.csv")
    with pytest.raises(DataError, match=r"my.csv: no usable rows left.*image file not found"):
        prepare_dataset(table, config, "t", stages.DataOrigin())


def test_load_source_errors_name_the_missing_input(tmp_path):
    config = PrepareConfig(run_dir=str(tmp_path))
    with pytest.raises(
        DataError, match=r"has no finished processdata_02 .*Run notebooks/processdata_02.ipynb"
    ):
        load_source(dataclasses.replace(config, source="processdata_02"))
    with pytest.raises(DataError, match="no such file"):
        load_source(dataclasses.replace(config, source=str(tmp_path / "missing.csv")))
    with pytest.raises(
        DataError, match=r"has no finished processdata_03 .*Run notebooks/processdata_03.ipynb"
    ):
        stages.load_prepared(tmp_path)


def test_headline_says_what_happened_in_one_sentence():
    from nbutils.data import prepare

    summary = {"train_images": 2269, "train_rows": 11500, "val_images": 134, "val_rows": 670,
               "test_images": 267, "test_rows": 1345, "dropped_rows": 0, "dropped_by_reason": {},
               "image_size": 64}  # fmt: skip
    assert prepare.headline(summary) == (
        "2,670 images (13,515 captions) split into 2,269 train / 134 val / 267 test; "
        "image cache of 2,670 images at 64 px."
    )
    dropped = {**summary, "dropped_rows": 7, "dropped_by_reason": {"too long": 2, "empty caption": 5}}
    assert prepare.headline(dropped).endswith(
        "at 64 px; 7 caption rows dropped (empty caption 5, too long 2)."
    )
