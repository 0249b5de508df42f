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
from nbutils.data import importers
from nbutils.data.datasets import normalize_pixel_values
from nbutils.data.prepare import PrepareConfig, load_source, prepare_dataset
from nbutils.demo.source import DemoSource
from nbutils.errors import DataError
from nbutils.files import read_json, write_table


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


# ----------------------------------------------------------------------------- the captions' language

EN = ["a red circle in the top left", "a small blue square", "two green triangles", "a large yellow star"]
ZH = ["左上角有一个红色圆形", "一个蓝色的小正方形", "两个绿色三角形", "一颗黄色的大星星"]


def _caption_csv(folder, make_jpeg, captions) -> Path:
    """A text_image_csv of 10 images with two of `captions` each (image paths relative to the CSV)."""
    rows = []
    for i in range(10):
        make_jpeg(folder / f"{i}.jpg", 24, 24, seed=i)
        rows += [{"image_path": f"{i}.jpg", "text": captions[(i + k) % len(captions)]} for k in range(2)]
    path = folder / "captions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _prepare(config: PrepareConfig) -> stages.PreparedDataset:
    """processdata_03 as its notebook runs it: load_source, then prepare_dataset; read back with load_prepared."""
    table, name, origin = load_source(config)
    prepare_dataset(table, config, name, origin)
    return stages.load_prepared(config.run_dir)


def _validated(tmp_path, make_jpeg, language) -> None:
    """A finished processdata_02 in <tmp_path>/run whose English table records `language` (None: unknown)."""
    table = importers.import_captions("text_image_csv", _caption_csv(tmp_path / "photos", make_jpeg, EN))
    stage_dir = tmp_path / "run" / "processdata_02"
    for name in ("clean", "rejects", "checks"):
        write_table(table if name == "clean" else table.iloc[:0], stage_dir / f"{name}.csv")
    stages.save_validated(stage_dir, table, stages.DataOrigin(language, None))


def _config(tmp_path, **params) -> PrepareConfig:
    return PrepareConfig(
        run_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"), image_size=16, num_workers=1, **params
    )


@pytest.mark.parametrize(
    "captions, language, expected",
    [
        (EN, "", "en"),  # from the data: a caption file records none, so it is detected from the captions
        (ZH, "", "zh"),
        (EN, "zh", "zh"),  # an explicit language is kept
        (ZH, "en", "en"),
    ],
)
def test_a_caption_file_has_the_language_of_its_captions_unless_set(
    tmp_path, make_jpeg, captions, language, expected
):
    path = _caption_csv(tmp_path / "photos", make_jpeg, captions)
    prepared = _prepare(_config(tmp_path, source=str(path), language=language))
    # Recorded in stage.json and the summary, so that every later stage reads the same language.
    assert prepared.origin.language == prepared.language == prepared.summary()["language"] == expected
    assert read_json(tmp_path / "run" / "processdata_03" / "stage.json")["origin"]["language"] == expected


@pytest.mark.parametrize(
    "recorded, language, expected",
    [
        (None, "", "en"),  # processdata_01 downloaded a manifest: detected from the (English) captions
        (None, "zh", "zh"),
        ("en", "", "en"),  # processdata_01 served the demo set: its language
        ("en", "en", "en"),
    ],
)
def test_processdata_02s_table_keeps_the_language_it_records(
    tmp_path, make_jpeg, recorded, language, expected
):
    _validated(tmp_path, make_jpeg, recorded)
    prepared = _prepare(_config(tmp_path, source="processdata_02", language=language))
    assert prepared.origin.language == expected


def test_an_explicit_language_that_contradicts_the_recorded_one_is_an_error(tmp_path, make_jpeg):
    _validated(tmp_path, make_jpeg, "en")
    with pytest.raises(ValueError, match=r"language='zh', but source='processdata_02' holds 'en' captions"):
        load_source(_config(tmp_path, source="processdata_02", language="zh"))
    with pytest.raises(ValueError, match=r"holds 'zh' captions.*demo\?language=en"):
        load_source(_config(tmp_path, source="demo?n_images=4", language="en"))


@pytest.mark.parametrize("language", ["fr", "EN", "chinese", " "])
def test_a_language_other_than_empty_zh_or_en_is_refused_naming_the_parameter(language):
    with pytest.raises(
        ValueError, match=rf'language must be "" \(from the data\), "zh" or "en"; got {language!r}'
    ):
        PrepareConfig(language=language)


# ----------------------------------------------------------------------------- the demo set as the source


def test_the_demo_source_takes_processdata_01s_spec_with_this_notebooks_defaults(tmp_path):
    data = str(tmp_path / "data")
    assert (
        PrepareConfig(source="processdata_02").demo() is None
        and PrepareConfig(source="demo.csv").demo() is None
    )
    # data_dir and image_size come from processdata_03's parameters where the spec leaves them out ...
    assert PrepareConfig(source="demo?n_images=8", data_dir=data, image_size=32).demo() == DemoSource(
        n_images=8, image_size=32, data_dir=data
    )
    # ... except image_size 0 (the checkpoint processor's size), which leaves the demo's own default ...
    assert PrepareConfig(source="demo", image_size=0).demo().image_size == DemoSource().image_size
    # ... and the spec's own keys win.
    spec = "demo?language=en&image_size=48&data_dir=/elsewhere"
    assert PrepareConfig(source=spec, data_dir=data, image_size=32).demo() == DemoSource(
        language="en", image_size=48, data_dir="/elsewhere"
    )


def test_a_wrong_demo_spec_fails_when_the_config_is_built_naming_the_key():
    with pytest.raises(ValueError, match=r"unknown key 'n_image'.*did you mean 'n_images'"):
        PrepareConfig(source="demo?n_image=30")
    with pytest.raises(ValueError, match=r"source='demo': image_size must be an integer >= 16; got 8"):
        PrepareConfig(source="demo", image_size=8)  # the notebook's image_size is the demo's too


def test_load_source_generates_the_demo_set_the_spec_names(tmp_path):
    config = _config(tmp_path, source="demo?language=en&n_images=6")
    table, name, origin = load_source(config)
    folder = tmp_path / "data" / "demo" / "en-n6-16px-seed0"
    assert name == "demo-en-n6-16px-seed0" and (folder / "meta.json").is_file()
    assert (
        table["image_path"].nunique() == 6 and Path(table["image_path"].iloc[0]).parent == folder / "images"
    )
    assert origin == stages.DataOrigin("en", str((folder / "objects.jsonl").resolve()))


def test_prepare_dataset_with_cache_format_shards_reads_back_like_the_memmap(tmp_path, make_jpeg):
    paths = [str(make_jpeg(tmp_path / "img" / f"{i:03d}.jpg", 60, 40 + i, seed=i)) for i in range(10)]
    rows = [{"image_path": p, "text": f"第{i}张图 描述{j}"} for i, p in enumerate(paths) for j in range(2)]
    settings = dict(
        image_size=32, data_dir=str(tmp_path / "data"), val_fraction=0.2, test_fraction=0.2, num_workers=1
    )
    runs = {}
    for cache_format in ("memmap", "shards"):
        run = tmp_path / cache_format
        config = PrepareConfig(
            run_dir=str(run), output_dir=str(run / "processdata_03"), cache_format=cache_format, **settings
        )
        prepare_dataset(pd.DataFrame(rows), config, "t", stages.DataOrigin("zh", None))
        runs[cache_format] = stages.load_prepared(run)
    memmap, shards = runs["memmap"], runs["shards"]
    assert (memmap.summary()["cache_format"], shards.summary()["cache_format"]) == (
        "memmap-uint8",
        "shards-jpeg",
    )
    assert Path(shards.cache.cache_dir).name == "t-32x32-exact-shards-q94"  # beside the memmap's folder
    assert read_json(Path(shards.cache.cache_dir) / "meta.json")["format"] == "shards"
    for name in stages.PREPARED_TABLES:
        pd.testing.assert_frame_equal(shards.tables[name], memmap.tables[name])
    a, b = memmap.dataset("train", fixed_caption=True), shards.dataset("train", fixed_caption=True)
    assert len(a) == len(b) == 6
    for k in range(len(a)):
        assert (a[k]["text"], a[k]["image_index"]) == (b[k]["text"], b[k]["image_index"])
        difference = a[k]["pixel_values"].float() - b[k]["pixel_values"].float()
        assert difference.abs().mean() < 2.5  # JPEG error at quality 94 (tests/data/test_shards.py)
