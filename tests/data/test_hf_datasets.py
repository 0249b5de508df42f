"""Hugging Face datasets as processdata_03's input: the files of a split, the hf_dataset importer, embedded images
decoded through their pseudo paths, and a cache built from them without loose files."""

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage

from nbutils import stages
from nbutils.data import hf_datasets
from nbutils.data.cache import ImageGeometry, transform_uint8
from nbutils.data.images import image_exists, image_file, load_rgb
from nbutils.data.importers import import_captions, read_caption_table
from nbutils.data.prepare import PrepareConfig, load_source, prepare_dataset
from nbutils.data.splits import clean_captions
from nbutils.data.validate import ValidationConfig, load_input, validate_images
from nbutils.errors import DataError

CAPTIONS = [["红色的方块", "一个红色方块"], ["绿色的圆"], ["蓝色的三角", "蓝色三角形", "三角"], ["黄色的星"]]


def _photo(seed: int) -> np.ndarray:
    """A small image whose pixels identify it (PNG keeps them exact)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(12 + seed, 20, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _dataset(seeds, captions=None, caption_column="sentences") -> Dataset:
    """Rows of {image (Image feature, PNG bytes), <caption_column> (a list of captions)} built by `datasets`."""
    captions = captions if captions is not None else [CAPTIONS[s % len(CAPTIONS)] for s in seeds]
    caption_type = Sequence(Value("string")) if isinstance(captions[0], list) else Value("string")
    images = [{"bytes": _png(_photo(s)), "path": f"{s:03d}.png"} for s in seeds]
    features = Features({"image": Image(), caption_column: caption_type})
    return Dataset.from_dict({"image": images, caption_column: captions}, features=features)


def _pixels(path) -> np.ndarray:
    return np.asarray(load_rgb(path))


# ----------------------------------------------------------------------------- save_to_disk folders


def test_a_dataset_dict_folder_gives_one_row_per_caption_of_its_train_split(tmp_path):
    DatasetDict(train=_dataset([0, 1, 2]), validation=_dataset([3])).save_to_disk(tmp_path / "flickr")
    table = import_captions("hf_dataset", tmp_path / "flickr")
    assert table["text"].tolist() == [c for s in (0, 1, 2) for c in CAPTIONS[s]]  # lists exploded, in order
    arrow = hf_datasets.dataset_files(tmp_path / "flickr")[0]
    assert arrow.parent == tmp_path / "flickr" / "train" and arrow.suffix == ".arrow"
    assert table["image_path"].unique().tolist() == [f"{arrow}::image[{row}]" for row in range(3)]
    assert table["filename"].unique().tolist() == [
        "000.png",
        "001.png",
        "002.png",
    ]  # the Image feature's path
    for seed, path in enumerate(table["image_path"].unique()):
        assert image_exists(path) and image_file(path) == str(arrow)
        np.testing.assert_array_equal(_pixels(path), _photo(seed))

    validation = import_captions("hf_dataset", tmp_path / "flickr", split="validation")
    assert validation["text"].tolist() == CAPTIONS[3]
    # a split folder, and a single Dataset saved with save_to_disk, read the same
    assert import_captions("hf_dataset", tmp_path / "flickr" / "validation").equals(validation)
    with pytest.raises(DataError, match=r"no split 'test'; the dataset has the splits train, validation"):
        import_captions("hf_dataset", tmp_path / "flickr", split="test")


def test_without_a_train_split_the_only_split_is_read_and_several_must_be_chosen(tmp_path):
    DatasetDict(test=_dataset([0])).save_to_disk(tmp_path / "one")
    assert import_captions("hf_dataset", tmp_path / "one")["text"].tolist() == CAPTIONS[0]
    DatasetDict(test=_dataset([0]), validation=_dataset([1])).save_to_disk(tmp_path / "two")
    with pytest.raises(DataError, match=r"has the splits test, validation .*set dataset_split"):
        import_captions("hf_dataset", tmp_path / "two")


# ----------------------------------------------------------------------------- hub parquet shards


def test_hub_parquet_shards_are_read_per_split_with_rows_counted_per_file(tmp_path):
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)
    train = _dataset(list(range(7)))
    # batch_size: row groups of 2 rows, so that reading a row back has to find its row group
    train.select(range(4)).to_parquet(data / "train-00000-of-00002.parquet", batch_size=2)
    train.select(range(4, 7)).to_parquet(data / "train-00001-of-00002.parquet", batch_size=2)
    _dataset([9]).to_parquet(data / "test-00000-of-00001.parquet")

    table = import_captions("hf_dataset", tmp_path / "hub")
    assert table["text"].tolist() == [c for s in range(7) for c in CAPTIONS[s % 4]]
    paths = table["image_path"].unique().tolist()
    assert paths[3] == f"{data / 'train-00000-of-00002.parquet'}::image[3]"
    assert paths[4] == f"{data / 'train-00001-of-00002.parquet'}::image[0]"
    assert hf_datasets._parquet(str(data / "train-00000-of-00002.parquet"))[1] == [0, 2, 4]  # two row groups
    # read back out of order: each row's row group is looked up, not streamed
    for seed, path in reversed(list(enumerate(paths))):
        np.testing.assert_array_equal(_pixels(path), _photo(seed))

    test = import_captions("hf_dataset", tmp_path / "hub", split="test")
    assert test["text"].tolist() == CAPTIONS[9 % 4]
    one_file = import_captions("hf_dataset", data / "train-00001-of-00002.parquet")
    assert one_file["image_path"].unique().tolist() == paths[4:]


def test_one_caption_per_row_with_repeated_images_gives_one_image_with_every_caption(tmp_path):
    """Pairs datasets repeat an image on each of its caption rows: identical bytes become one image path."""
    dataset = _dataset([0, 0, 1, 0, 1], captions=["甲", "乙", "丙", "丁", "戊"], caption_column="caption")
    dataset.to_parquet(tmp_path / "pairs.parquet")
    table = import_captions("hf_dataset", tmp_path / "pairs.parquet")
    file = tmp_path / "pairs.parquet"
    assert table["image_path"].tolist() == [f"{file}::image[{row}]" for row in (0, 0, 2, 0, 2)]
    assert table.groupby("image_path", sort=False)["text"].agg("".join).tolist() == ["甲乙丁", "丙戊"]


def test_images_stored_as_paths_are_resolved_against_images_root_or_the_dataset_folder(tmp_path):
    PILImage.fromarray(_photo(0)).save(tmp_path / "a.png")
    Dataset.from_dict({"image": ["a.png"], "text": ["一张图"]}).to_parquet(tmp_path / "paths.parquet")
    table = import_captions("hf_dataset", tmp_path / "paths.parquet")
    assert table["image_path"].tolist() == [str(tmp_path / "a.png")]
    elsewhere = import_captions("hf_dataset", tmp_path / "paths.parquet", images_root=str(tmp_path / "imgs"))
    assert elsewhere["image_path"].tolist() == [str(tmp_path / "imgs" / "a.png")]


def test_captions_given_as_structs_use_their_raw_text(tmp_path):
    """COCO Karpathy-style `sentences: [{raw, tokens}]`."""
    sentences = [
        [{"raw": "a red square", "tokens": ["a", "red", "square"]}, {"raw": "red", "tokens": ["red"]}]
    ]
    images = [{"bytes": _png(_photo(0)), "path": None}]
    Dataset.from_dict({"image": images, "sentences": sentences}, features=None).cast_column(
        "image", Image()
    ).to_parquet(tmp_path / "coco.parquet")
    assert import_captions("hf_dataset", tmp_path / "coco.parquet")["text"].tolist() == [
        "a red square",
        "red",
    ]


# ----------------------------------------------------------------------------- extract_images


def test_extract_images_writes_each_image_once_as_a_file(tmp_path):
    _dataset([0, 1, 0], captions=[["a"], ["b"], ["c"]]).save_to_disk(tmp_path / "ds")
    table = import_captions("hf_dataset", tmp_path / "ds", extract_images=True)
    written = sorted((tmp_path / "ds" / "_extracted").rglob("*.png"))
    assert [p.name for p in written] == ["00000000.png", "00000001.png"]  # row 2 repeats row 0's bytes
    assert table["image_path"].tolist() == [str(written[0]), str(written[1]), str(written[0])]
    np.testing.assert_array_equal(_pixels(written[1]), _photo(1))

    mtime = written[0].stat().st_mtime_ns
    elsewhere = import_captions(
        "hf_dataset", tmp_path / "ds", images_root=str(tmp_path / "out"), extract_images=True
    )
    assert all(
        Path(p).is_relative_to(tmp_path / "out") and os.path.isfile(p) for p in elsewhere["image_path"]
    )
    import_captions("hf_dataset", tmp_path / "ds", extract_images=True)
    assert written[0].stat().st_mtime_ns == mtime  # present with the right size: not written again


# ----------------------------------------------------------------------------- pseudo paths


def test_a_pseudo_path_exists_only_while_its_file_has_the_row(tmp_path):
    _dataset([0, 1]).save_to_disk(tmp_path / "ds")
    arrow = hf_datasets.dataset_files(tmp_path / "ds")[0]
    assert hf_datasets.parse_embedded(f"{arrow}::image[1]") == (str(arrow), "image", 1)
    assert hf_datasets.parse_embedded(str(arrow)) is None and hf_datasets.parse_embedded("a::b") is None
    assert image_exists(f"{arrow}::image[1]") and not image_exists(f"{arrow}::image[2]")
    assert not image_exists(f"{tmp_path / 'gone.arrow'}::image[0]")
    with pytest.raises(IndexError, match=r"row 2 is out of range .* has 2 rows"):
        load_rgb(f"{arrow}::image[2]")
    with pytest.raises(FileNotFoundError, match="gone.arrow not found"):
        load_rgb(f"{tmp_path / 'gone.arrow'}::image[0]")

    table = pd.DataFrame({"image_path": [f"{arrow}::image[{r}]" for r in (0, 1, 5)], "text": ["a", "b", "c"]})
    clean, dropped = clean_captions(table)
    assert clean["text"].tolist() == ["a", "b"]
    assert dropped[["row", "reason"]].values.tolist() == [[2, "image file not found"]]


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_file_and_the_columns_there_are(tmp_path):
    Dataset.from_dict({"image": [_png(_photo(0))], "label": [3]}).to_parquet(tmp_path / "nocap.parquet")
    with pytest.raises(
        DataError, match=r"nocap.parquet: no caption column found .*columns \['image', 'label'\]"
    ):
        import_captions("hf_dataset", tmp_path / "nocap.parquet")
    with pytest.raises(DataError, match=r"no column 'label_zh' \(caption_column\); .*\['image', 'label'\]"):
        import_captions("hf_dataset", tmp_path / "nocap.parquet", caption_column="label_zh")
    with pytest.raises(DataError, match=r"column 'label' has type int64, which holds no images"):
        import_captions(
            "hf_dataset", tmp_path / "nocap.parquet", image_column="label", caption_column="image"
        )
    with pytest.raises(DataError, match=r"no image column 'img'; .*set image_column"):
        import_captions("hf_dataset", tmp_path / "nocap.parquet", image_column="img")
    with pytest.raises(DataError, match="missing.parquet: no such file or folder"):
        import_captions("hf_dataset", tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no Hugging Face dataset here"):
        import_captions("hf_dataset", tmp_path / "empty")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"notes.csv: not a Hugging Face dataset file"):
        import_captions("hf_dataset", tmp_path / "notes.csv")


def test_the_table_importer_and_processdata_02_point_a_hugging_face_parquet_at_hf_dataset(tmp_path):
    _dataset([0]).to_parquet(tmp_path / "train.parquet")
    hint = (
        r"missing columns? .*'text'.*'image' holds embedded images.*processdata_03, input_format 'hf_dataset'"
    )
    with pytest.raises(DataError, match=hint):
        read_caption_table(tmp_path / "train.parquet")
    with pytest.raises(DataError, match=hint):
        load_input(ValidationConfig(source=str(tmp_path / "train.parquet")))


def test_processdata_02_validates_embedded_images_through_their_pseudo_paths(tmp_path):
    """A table of pseudo paths (e.g. from the hf_dataset importer) passes processdata_02 like files: good rows are
    clean, a row past the end of its file is a missing file."""
    DatasetDict(train=_dataset([0, 1])).save_to_disk(tmp_path / "ds")
    table = import_captions("hf_dataset", tmp_path / "ds")[["image_path", "text"]].drop_duplicates(
        "image_path"
    )
    file, column, _ = hf_datasets.parse_embedded(table["image_path"].iloc[0])
    gone = hf_datasets.embedded_path(file, column, 99)
    table = pd.concat([table, pd.DataFrame({"image_path": [gone], "text": ["不在"]})], ignore_index=True)
    result = validate_images(
        table, tmp_path / "out", ValidationConfig(num_workers=1, min_side=8), progress=False
    )
    assert sorted(result.clean["image_path"]) == sorted(table["image_path"][:2])
    assert result.rejects.set_index("image_path").loc[gone, "reason"] == "missing file"


# ----------------------------------------------------------------------------- processdata_03


def test_processdata_03_caches_a_hugging_face_dataset_without_writing_image_files(tmp_path):
    DatasetDict(train=_dataset(list(range(10))), test=_dataset([11])).save_to_disk(tmp_path / "ds")
    before = sorted(tmp_path.rglob("*"))
    config = PrepareConfig(
        run_dir=str(tmp_path / "run"),
        data_dir=str(tmp_path / "data"),
        source=str(tmp_path / "ds"),
        input_format="hf_dataset",
        caption_column="sentences",
        image_size=16,
        val_fraction=0.2,
        test_fraction=0.2,
        num_workers=1,
    )
    table, name, origin = load_source(config)
    assert name == "ds" and len(table) == sum(len(CAPTIONS[s % 4]) for s in range(10))
    prepare_dataset(table, config, name, origin)
    prepared = stages.load_prepared(config.run_dir)

    images = pd.concat([prepared.tables[s] for s in ("train", "val", "test")])["image_path"].unique()
    assert len(images) == 10 and all(hf_datasets.is_embedded(p) for p in images)
    assert prepared.dropped.empty
    geometry = ImageGeometry(16, 16)
    for path in images:
        expected = transform_uint8(load_rgb(path), geometry)
        np.testing.assert_array_equal(prepared.cache.uint8(prepared.cache.index_of(path)), expected)
    written = sorted(p for p in tmp_path.rglob("*") if p not in before)
    assert not [p for p in written if p.is_relative_to(tmp_path / "ds")]  # nothing beside the dataset
    assert not [p for p in written if p.suffix.lower() in (".png", ".jpg", ".jpeg")]  # no loose image files


def test_processdata_03_reads_the_split_it_is_given(tmp_path):
    DatasetDict(train=_dataset([0, 1, 2]), test=_dataset([3, 4, 5])).save_to_disk(tmp_path / "ds")
    config = PrepareConfig(
        run_dir=str(tmp_path / "run"),
        source=str(tmp_path / "ds"),
        input_format="hf_dataset",
        dataset_split="test",
    )
    table, name, _ = load_source(config)
    assert name == "ds-test" and all("/test/" in p for p in table["image_path"])


def test_an_embedded_image_is_stamped_by_its_dataset_file_so_a_rewritten_file_rebuilds_the_cache(tmp_path):
    from nbutils.data.cache import file_stamp

    DatasetDict(train=_dataset([0])).save_to_disk(tmp_path / "ds")
    path = import_captions("hf_dataset", tmp_path / "ds")["image_path"].iloc[0]
    file = Path(image_file(path))
    assert file_stamp(path) == (file.stat().st_size, file.stat().st_mtime_ns) != (-1, -1)
    os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
    assert file_stamp(path)[1] == file.stat().st_mtime_ns  # a new stamp: the cache's fingerprint changes
    assert file_stamp(str(tmp_path / "ds" / "gone.arrow::image[0]")) == (-1, -1)
