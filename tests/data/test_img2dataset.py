"""img2dataset's webdataset shards as processdata_03's input: images read in place through `<file>.tar::<member>`
pseudo paths (no extraction), a cache built from them without loose files, damaged tars named, and the statistics
of what img2dataset dropped."""

import io
import os

import numpy as np
import pandas as pd
import pytest
import webdataset
from PIL import Image

from nbutils import stages
from nbutils.data import hf_datasets, tar_members
from nbutils.data.cache import ImageGeometry, file_stamp, transform_uint8
from nbutils.data.images import image_exists, image_file, load_rgb, read_image_bytes
from nbutils.data.importers import img2dataset_statistics, import_captions, read_img2dataset
from nbutils.data.prepare import PrepareConfig, load_source, prepare_dataset
from nbutils.data.splits import clean_captions
from nbutils.data.validate import ValidationConfig, validate_images
from nbutils.errors import DataError

CAPTIONS = ["红色的方块", "绿色的圆", "蓝色的三角", "黄色的星", "白色的云"]
FAILED = {  # the rows img2dataset could not turn into images, by index within a shard
    1: ("failed_to_download", "HTTP Error 404: Not Found"),
    4: ("failed_to_download", "<urlopen error timed out>"),
    6: ("failed_to_resize", "image decoding error"),
}


def _key(shard: int, index: int) -> str:
    return f"{shard:05d}{index:04d}"  # img2dataset's keys: shard id, then index within the shard


def _jpeg(shard: int, index: int, make_jpeg_bytes) -> bytes:
    return make_jpeg_bytes(24 + index, 16, seed=100 * shard + index, noise=20.0)


def _write_output(folder, make_jpeg_bytes, n_shards=1, per_shard=8) -> dict[str, bytes]:
    """An img2dataset "webdataset" output folder: per shard a tar of {key}.jpg/.txt/.json for each successful row,
    and a parquet of every input row. Returns {key: JPEG bytes} of the successful rows."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for shard in range(n_shards):
        rows = []
        with webdataset.TarWriter(str(folder / f"{shard:05d}.tar")) as tar:
            for index in range(per_shard):
                key, caption = _key(shard, index), CAPTIONS[index % len(CAPTIONS)]
                url = f"http://img.example/{key}.jpg"
                status, error = FAILED.get(index, ("success", None))
                rows.append(
                    {"url": url, "caption": caption, "key": key, "status": status, "error_message": error}
                )
                if status == "success":
                    images[key] = _jpeg(shard, index, make_jpeg_bytes)
                    meta = {"url": url, "caption": caption, "key": key, "status": status}
                    tar.write({"__key__": key, "jpg": images[key], "txt": caption, "json": meta})
        pd.DataFrame(rows).to_parquet(folder / f"{shard:05d}.parquet")
    return images


def _files(folder) -> list:
    return sorted(p for p in folder.rglob("*"))


# ----------------------------------------------------------------------------- the importer


def test_successful_rows_get_tar_member_paths_and_nothing_is_extracted(tmp_path, make_jpeg_bytes):
    out = tmp_path / "laion"
    images = _write_output(out, make_jpeg_bytes, n_shards=2)
    before = _files(tmp_path)
    table = import_captions("img2dataset", out)
    assert _files(tmp_path) == before  # no _extracted/ folder, no loose files

    keys = [_key(s, i) for s in range(2) for i in range(8) if i not in FAILED]
    assert table["image_id"].tolist() == keys == list(images)
    assert table["text"].tolist() == [CAPTIONS[int(k[-4:]) % len(CAPTIONS)] for k in keys]
    assert table["url"].tolist() == [f"http://img.example/{k}.jpg" for k in keys]
    assert table["image_path"].tolist() == [f"{out / k[:5]}.tar::{k}.jpg" for k in keys]
    assert table["filename"].tolist() == [f"{k}.jpg" for k in keys]


def test_extract_images_writes_the_images_as_files(tmp_path, make_jpeg_bytes):
    images = _write_output(tmp_path / "out", make_jpeg_bytes)
    table = import_captions("img2dataset", tmp_path / "out", images_root=tmp_path / "x", extract_images=True)
    assert table["image_path"].tolist() == [str(tmp_path / "x" / "00000" / f"{k}.jpg") for k in images]
    assert [open(p, "rb").read() for p in table["image_path"]] == list(images.values())


def test_pixels_through_load_rgb_equal_the_jpegs(tmp_path, make_jpeg_bytes):
    images = _write_output(tmp_path, make_jpeg_bytes)
    table = read_img2dataset(tmp_path)
    for path, data in zip(table["image_path"], images.values()):
        assert read_image_bytes(path) == data
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(load_rgb(path)), expected)


def test_a_pseudo_path_names_its_tar_and_member(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path, make_jpeg_bytes)
    tar = tmp_path / "00000.tar"
    path = tar_members.member_path(tar, "./000000000.jpg")
    assert path == f"{tar}::000000000.jpg"
    assert tar_members.parse_embedded(path) == (str(tar), "000000000.jpg")
    assert tar_members.parse_embedded(str(tar)) is None and tar_members.parse_embedded("a::b") is None
    assert not hf_datasets.is_embedded(path) and not tar_members.is_embedded(f"{tmp_path}/d.arrow::image[0]")
    assert image_file(path) == str(tar)
    assert file_stamp(path) == (
        tar.stat().st_size,
        tar.stat().st_mtime_ns,
    )  # the cache fingerprint stamps the tar
    assert file_stamp(f"{tmp_path / 'gone.tar'}::000000000.jpg") == (-1, -1)


def test_the_member_index_is_built_once_per_tar_until_the_tar_changes(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path, make_jpeg_bytes)
    tar = tmp_path / "00000.tar"
    tar_members._member_index.cache_clear()
    for key in ("000000000", "000000002", "000000003"):
        load_rgb(f"{tar}::{key}.jpg")
    assert tar_members._member_index.cache_info().misses == 1
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 10**9))
    load_rgb(f"{tar}::000000000.jpg")
    assert tar_members._member_index.cache_info().misses == 2


# ----------------------------------------------------------------------------- missing members, damaged tars


def test_a_missing_member_or_tar_is_not_found_and_names_both(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path, make_jpeg_bytes)
    tar = tmp_path / "00000.tar"
    assert image_exists(f"{tar}::000000000.jpg")
    assert not image_exists(f"{tar}::000000001.jpg")  # failed_to_download: never written
    assert not image_exists(f"{tmp_path / 'gone.tar'}::000000000.jpg")
    with pytest.raises(FileNotFoundError, match=r"00000\.tar has no member '000000001\.jpg'"):
        load_rgb(f"{tar}::000000001.jpg")
    with pytest.raises(FileNotFoundError, match=r"tar file .*gone\.tar not found"):
        load_rgb(f"{tmp_path / 'gone.tar'}::000000000.jpg")

    table = pd.DataFrame(
        {"image_path": [f"{tar}::000000000.jpg", f"{tar}::000000001.jpg"], "text": ["a", "b"]}
    )
    clean, dropped = clean_captions(table)
    assert clean["text"].tolist() == ["a"]
    assert dropped[["row", "reason"]].values.tolist() == [[1, "image file not found"]]


def _truncate_inside(tar, member: str) -> None:
    """Cut `tar` in the middle of `member`'s bytes, as an interrupted download or copy leaves it."""
    offset, size = tar_members.member_index(tar).members[member]
    with open(tar, "r+b") as f:
        f.truncate(offset + size // 2)


def test_a_truncated_tar_is_named_by_the_importer(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path, make_jpeg_bytes)
    _truncate_inside(tmp_path / "00000.tar", "000000003.jpg")
    with pytest.raises(
        DataError,
        match=r"00000\.tar \(the tar ends inside member '000000003\.jpg' \(truncated at [\d,]+ bytes\): download "
        r"the shard again\): sample 000000003 has status 'success' but no image file",
    ):
        read_img2dataset(tmp_path)


def test_a_tar_cut_between_members_is_damaged_too(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path, make_jpeg_bytes)
    tar = tmp_path / "00000.tar"
    offset, size = tar_members.member_index(tar).members["000000002.json"]
    with open(tar, "r+b") as f:
        f.truncate(offset + -(-size // 512) * 512)  # no end-of-archive blocks after the last whole member
    index = tar_members.member_index(tar)
    assert list(index.members)[-1] == "000000002.json" and "breaks off" in index.damage
    with pytest.raises(
        FileNotFoundError, match=r"has no member '000000003\.jpg'; the tar breaks off after byte"
    ):
        load_rgb(f"{tar}::000000003.jpg")


def test_not_a_tar_is_a_data_error(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"<html>502 Bad Gateway</html>" * 40)
    with pytest.raises(DataError, match=r"00000\.tar: not a readable uncompressed tar"):
        read_img2dataset(tmp_path)
    assert not image_exists(f"{tmp_path / '00000.tar'}::000000000.jpg")


def test_processdata_02_rejects_members_of_a_truncated_tar_as_missing_files(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path / "out", make_jpeg_bytes)
    table = read_img2dataset(tmp_path / "out")[["image_path", "text"]]
    _truncate_inside(tmp_path / "out" / "00000.tar", "000000003.jpg")
    result = validate_images(
        table, tmp_path / "v", ValidationConfig(num_workers=1, min_side=8), progress=False
    )
    reasons = result.rejects.set_index("image_path")["reason"].to_dict()
    cut = [p for p in table["image_path"] if p.rsplit("::", 1)[1] >= "000000003.jpg"]
    assert reasons == {p: "missing file" for p in cut}
    assert sorted(result.clean["image_path"]) == sorted(set(table["image_path"]) - set(cut))


# ----------------------------------------------------------------------------- processdata_03


@pytest.mark.parametrize("cache_format", ["memmap", "shards"])
def test_processdata_03_caches_webdataset_shards_without_writing_image_files(
    tmp_path, make_jpeg_bytes, cache_format
):
    _write_output(tmp_path / "laion", make_jpeg_bytes, n_shards=2)
    before = _files(tmp_path)
    config = PrepareConfig(
        run_dir=str(tmp_path / "run"),
        data_dir=str(tmp_path / "data"),
        source=str(tmp_path / "laion"),
        input_format="img2dataset",
        image_size=16,
        val_fraction=0.2,
        test_fraction=0.2,
        cache_format=cache_format,
        num_workers=1,
    )
    table, name, origin = load_source(config)
    assert name == "laion" and len(table) == 10
    prepare_dataset(table, config, name, origin)
    prepared = stages.load_prepared(config.run_dir)

    images = pd.concat([prepared.tables[s] for s in ("train", "val", "test")])["image_path"].unique()
    assert sorted(images) == sorted(table["image_path"]) and all(tar_members.is_embedded(p) for p in images)
    assert prepared.dropped.empty and len(prepared.cache) == 10
    if cache_format == "memmap":
        for path in images:
            expected = transform_uint8(load_rgb(path), ImageGeometry(16, 16))
            np.testing.assert_array_equal(prepared.cache.uint8(prepared.cache.index_of(path)), expected)
    written = sorted(p for p in _files(tmp_path) if p not in before)
    assert not [p for p in written if p.is_relative_to(tmp_path / "laion")]  # nothing beside the shards
    assert not [p for p in written if p.suffix.lower() in (".png", ".jpg", ".jpeg")]  # no loose image files


def test_processdata_03_extract_images_extracts_img2dataset_shards(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path / "laion", make_jpeg_bytes)
    config = PrepareConfig(
        run_dir=str(tmp_path / "run"),
        source=str(tmp_path / "laion"),
        input_format="img2dataset",
        extract_images=True,
    )
    table, _, _ = load_source(config)
    assert all(p.startswith(str(tmp_path / "laion" / "_extracted" / "00000")) for p in table["image_path"])


# ----------------------------------------------------------------------------- statistics


def test_statistics_count_statuses_and_common_errors_per_shard(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path, make_jpeg_bytes, n_shards=2)
    (tmp_path / "00000_stats.json").write_text("{}")  # img2dataset's own summary files are not shards
    stats = img2dataset_statistics(tmp_path)
    assert list(stats.columns) == [
        "shard",
        "urls",
        "success",
        "failed_to_download",
        "failed_to_resize",
        "common_errors",
    ]
    assert stats[["shard", "urls", "success", "failed_to_download", "failed_to_resize"]].values.tolist() == [
        ["00000", 8, 5, 2, 1],
        ["00001", 8, 5, 2, 1],
        ["all", 16, 10, 4, 2],
    ]
    assert stats["common_errors"].iloc[-1] == (
        "<urlopen error timed out> (2); HTTP Error 404: Not Found (2); image decoding error (2)"
    )
    assert (
        img2dataset_statistics(tmp_path, top_errors=1)["common_errors"].iloc[0]
        == "<urlopen error timed out> (1)"
    )


def test_statistics_list_other_statuses_and_skip_shards_without_a_parquet(tmp_path, make_jpeg_bytes):
    _write_output(tmp_path, make_jpeg_bytes, n_shards=2)
    (tmp_path / "00001.parquet").unlink()
    df = pd.read_parquet(tmp_path / "00000.parquet")
    df.loc[0, ["status", "error_message"]] = ["failed_to_check", "  too\n many   spaces "]
    df.to_parquet(tmp_path / "00000.parquet")
    stats = img2dataset_statistics(tmp_path, top_errors=5)
    assert stats["shard"].tolist() == ["00000", "all"]
    assert stats[["success", "failed_to_check"]].values.tolist() == [[4, 1], [4, 1]]
    assert "too many spaces (1)" in stats["common_errors"].iloc[0]


def test_processdata_02_normalises_a_tar_member_into_a_file_named_after_it(tmp_path, make_photo):
    buffer = io.BytesIO()
    Image.fromarray(make_photo(20, 12, seed=3)).save(
        buffer, "WEBP", lossless=True
    )  # img2dataset's encode_format
    with webdataset.TarWriter(str(tmp_path / "00000.tar")) as tar:
        tar.write({"__key__": "000000000", "webp": buffer.getvalue(), "txt": "一只猫"})
    table = read_img2dataset(tmp_path)[["image_path", "text"]]
    assert table["image_path"].tolist() == [f"{tmp_path / '00000.tar'}::000000000.webp"]
    result = validate_images(
        table, tmp_path / "v", ValidationConfig(num_workers=1, min_side=8), progress=False
    )
    copy = tmp_path / "v" / "normalised" / "00000.tar_000000000.jpg"  # the shard and the key
    assert result.clean["image_path"].tolist() == [str(copy.absolute())]
    assert load_rgb(copy).size == load_rgb(table["image_path"][0]).size == (20, 12)
