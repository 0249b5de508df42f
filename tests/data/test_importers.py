"""Caption importers: each published layout -> exact rows; every bad input -> a DataError that says where."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from nbutils.data.importers import (
    IMPORTERS,
    import_captions,
    read_ai_challenger,
    read_caption_table,
    read_coco_captions,
    read_coco_cn,
    read_flickr_tokens,
    read_img2dataset,
    read_original_csv,
    read_table,
    read_text_image_csv,
    read_wukong,
)
from nbutils.errors import DataError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "importers"


def rows(df, *columns):
    return [tuple(r) for r in df[list(columns)].itertuples(index=False)]


# ----------------------------------------------------------------------------- published layouts


def test_original_csv(tmp_path):
    df = read_original_csv(FIXTURES / "original.csv", tmp_path / "images")
    assert list(df.columns) == ["image_path", "text", "url", "filename"]
    root = tmp_path / "images"
    assert rows(df, "image_path", "text", "url", "filename") == [
        (str(root / "007.jpg"), "一只猫坐在红色的沙发上", "http://img.example.com/photos/a.jpg", "007.jpg"),
        (str(root / "b.png"), "A dog, running on the grass", "http://img.example.com/photos/b.png", "b.png"),
        (str(root / "c.jpg"), "两个人在海边散步", "http://img.example.com/photos/c", "c.jpg"),
    ]


def test_original_csv_rejects_file_names_outside_images_root(tmp_path):
    (tmp_path / "m.csv").write_text(
        "url,filename,text\nhttp://a/x.jpg,ok.jpg,好\nhttp://a/y.jpg,../../etc/y.jpg,坏\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"m\.csv: row 2: .*'\.\./\.\./etc/y\.jpg'"):
        read_original_csv(tmp_path / "m.csv", tmp_path / "images")


def test_text_image_csv_resolves_relative_paths_against_csv_folder_or_images_root(tmp_path):
    df = read_text_image_csv(FIXTURES / "text_image.csv")
    assert list(df.columns) == ["image_path", "text"]
    assert rows(df, "image_path", "text") == [
        (str(FIXTURES / "images" / "bird.jpg"), "一只白色的鸟站在水边"),
        ("/data/bus.jpg", "A red bus, parked"),
        (str(FIXTURES.parent / "shared" / "street.png"), "夜晚的城市街道"),
    ]
    df = read_text_image_csv(FIXTURES / "text_image.csv", images_root=tmp_path)
    assert df["image_path"].tolist() == [
        str(tmp_path / "images" / "bird.jpg"),
        "/data/bus.jpg",
        str(tmp_path.parent / "shared" / "street.png"),
    ]


def test_flickr30k_tokens(tmp_path):
    df = read_flickr_tokens(FIXTURES / "results_20130124.token", tmp_path)
    assert list(df.columns) == ["image_path", "text", "filename", "image_id"]
    assert (
        rows(df, "image_path", "image_id")
        == [(str(tmp_path / "1000092795.jpg"), "1000092795")] * 3
        + [(str(tmp_path / "10002456.jpg"), "10002456")] * 2
    )
    assert df["text"].tolist() == [
        "Two young men with long hair stand in a garden .",
        "Two friends talk outside near some bushes .",
        "Two men in green shirts stand in a yard .",
        "Workers in hard hats operate a large pulley .",
        "Several men work on a machine .",
    ]


def test_flickr8k_tokens_skip_blank_lines(tmp_path):
    df = read_flickr_tokens(FIXTURES / "Flickr8k.token.txt", tmp_path)
    assert rows(df, "filename", "text") == [
        ("1000268201_693b08cb0e.jpg", "A child in a pink dress climbs the stairs ."),
        ("1000268201_693b08cb0e.jpg", "A girl goes into a wooden building ."),
        ("1001773457_577c3a7d70.jpg", "A black dog and a spotted dog are fighting"),
    ]


def test_flickr8k_cn_zhc_space_or_tab_separated(tmp_path):
    df = read_flickr_tokens(FIXTURES / "flickr8kzhc.caption.txt", tmp_path)
    assert rows(df, "image_path", "text", "image_id") == [
        (
            str(tmp_path / "1000268201_693b08cb0e.jpg"),
            "一个穿着粉红色裙子的孩子正在爬楼梯。",
            "1000268201_693b08cb0e",
        ),
        (
            str(tmp_path / "1000268201_693b08cb0e.jpg"),
            "一个小女孩走进一座木头房子。",
            "1000268201_693b08cb0e",
        ),
        (str(tmp_path / "1001773457_577c3a7d70.jpg"), "一只黑狗和一只花狗在打架。", "1001773457_577c3a7d70"),
    ]


def test_flickr30k_cn_keeps_segmented_text(tmp_path):
    df = read_flickr_tokens(FIXTURES / "flickr30k_cn_train.txt", tmp_path)
    assert rows(df, "filename", "text") == [
        ("1000092795.jpg", "两 个 年轻 的 男子 站 在 花园 里 。"),
        ("1000092795.jpg", "两 个 朋友 在 灌木丛 旁 聊天"),
        ("10002456.jpg", "戴 安全帽 的 工人 在 操作 滑轮 。"),
    ]


def test_flickr_tokens_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.token"
    bad.write_text("a.jpg#0\tfine\n\nb.jpg\tno caption number\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.token: line 3 "):
        read_flickr_tokens(bad, tmp_path)


def test_coco_captions(tmp_path):
    df = read_coco_captions(FIXTURES / "captions_val2014.json", tmp_path)
    assert list(df.columns) == ["image_path", "text", "filename", "image_id"]
    f42, f73 = "COCO_val2014_000000000042.jpg", "COCO_val2014_000000000073.jpg"
    assert rows(df, "image_path", "text", "filename", "image_id") == [
        (str(tmp_path / f73), "A motorcycle parked next to a wall.", f73, "73"),
        (str(tmp_path / f42), "A small dog sleeping on a sofa.", f42, "42"),
        (str(tmp_path / f73), "A red motorbike on the street", f73, "73"),
        (str(tmp_path / f42), "一只狗在沙发上睡觉。", f42, "42"),
    ]


def test_coco_captions_unknown_image_id(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}],
        "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 999, "caption": "y"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json: annotations\[1\] has image_id 999"):
        read_coco_captions(tmp_path / "c.json", tmp_path)


def test_coco_captions_not_coco_layout(tmp_path):
    (tmp_path / "c.json").write_text('[{"image_id": 1}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json: not a COCO captions file"):
        read_coco_captions(tmp_path / "c.json", tmp_path)


def test_coco_cn_uses_split_subfolder_when_it_exists(tmp_path):
    (tmp_path / "train2014").mkdir()  # val2014/ is absent, so those images sit at the root
    df = read_coco_cn(FIXTURES / "imageid.human-written-caption.txt", tmp_path)
    assert rows(df, "image_path", "text", "filename", "image_id") == [
        (
            str(tmp_path / "train2014" / "COCO_train2014_000000000036.jpg"),
            "一个女人撑着伞站在雨中。",
            "COCO_train2014_000000000036.jpg",
            "36",
        ),
        (
            str(tmp_path / "COCO_val2014_000000000042.jpg"),
            "一只狗躺在沙发上",
            "COCO_val2014_000000000042.jpg",
            "42",
        ),
        (
            str(tmp_path / "COCO_val2014_000000000042.jpg"),
            "沙发上有一只棕色的小狗。",
            "COCO_val2014_000000000042.jpg",
            "42",
        ),
    ]
    # image_id joins with the English COCO captions of the same image
    en = read_coco_captions(FIXTURES / "captions_val2014.json", tmp_path)
    assert set(df["image_id"]) & set(en["image_id"]) == {"42"}


def test_ai_challenger(tmp_path):
    df = read_ai_challenger(FIXTURES / "caption_validation_annotations_20180303.json", tmp_path)
    assert list(df.columns) == ["image_path", "text", "url", "filename", "image_id"]
    name = "3cd32bef87ed98572bac868418521852ac3f6a70.jpg"
    assert set(rows(df, "image_path", "url", "filename", "image_id")) == {
        (
            str(tmp_path / name),
            "http://img5.cache.netease.com/photo/0005/2013-09-25/99LA1FC60B6P0005.jpg",
            name,
            name,
        )
    }
    assert df["text"].tolist() == [
        "一个穿着红色上衣的女人在街上走着",
        "街道上有一个女人在行走",
        "一位长发女士走在马路上",
        "一个女人拎着包走在人行道上",
        "马路边有一个背着包的女人",
    ]


def test_ai_challenger_bad_caption_field(tmp_path):
    (tmp_path / "a.json").write_text('[{"image_id": "x.jpg", "caption": [1, 2]}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.json: item 0 \(x\.jpg\): 'caption' must be a list of strings"):
        read_ai_challenger(tmp_path / "a.json", tmp_path)


WUKONG_URLS = [
    "https://img.example.cn/upload/2021/cat.png",
    "http://pic.example.cn/thumb/12345?size=large",
    "https://img.example.cn/a/b/PHOTO.JPEG?x=1",
]


def test_wukong_csv_and_parquet(tmp_path):
    expected_names = [
        hashlib.sha1(u.encode()).hexdigest()[:16] + ext
        for u, ext in zip(WUKONG_URLS, [".png", ".jpg", ".jpeg"])
    ]
    csv = read_wukong(FIXTURES / "wukong_100m_0.csv", tmp_path)
    assert list(csv.columns) == ["image_path", "text", "url", "filename"]
    assert rows(csv, "image_path", "text", "url", "filename") == [
        (str(tmp_path / n), t, u, n)
        for n, t, u in zip(expected_names, ["可爱的小猫咪", "风景, 高山和湖泊", "秋天的枫叶"], WUKONG_URLS)
    ]
    pd.read_csv(FIXTURES / "wukong_100m_0.csv", dtype=str).to_parquet(tmp_path / "part.parquet")
    pd.testing.assert_frame_equal(read_wukong(tmp_path / "part.parquet", tmp_path), csv)


# ----------------------------------------------------------------------------- generic tables


def test_read_table_formats_agree_and_keep_string_ids(tmp_path):
    records = [{"id": "007", "caption": "一只猫"}, {"id": "010", "caption": "a dog"}]
    (tmp_path / "t.csv").write_text("id,caption\n007,一只猫\n010,a dog\n", encoding="utf-8")
    (tmp_path / "t.tsv").write_text("id\tcaption\n007\t一只猫\n010\ta dog\n", encoding="utf-8")
    (tmp_path / "t.txt").write_text("id\tcaption\n007\t一只猫\n010\ta dog\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8"
    )
    (tmp_path / "t.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    pd.DataFrame(records).to_parquet(tmp_path / "t.parquet")
    for suffix in ["csv", "tsv", "txt", "jsonl", "json", "parquet"]:
        df = read_table(tmp_path / f"t.{suffix}", required=("text",), columns={"caption": "text"})
        assert list(df.columns) == ["id", "text"], suffix
        assert df.values.tolist() == [["007", "一只猫"], ["010", "a dog"]], suffix


def test_read_table_accepts_utf8_bom(tmp_path):
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbftext,image_path\n\xe7\x8c\xab,a.jpg\n")
    assert read_table(tmp_path / "b.csv", required=("text",)).values.tolist() == [["猫", "a.jpg"]]


def test_caption_table_with_column_mapping_and_filenames(tmp_path):
    (tmp_path / "t.jsonl").write_text(
        '{"file": "x/1.jpg", "caption": " 一只猫 ", "image_id": 7}\n', encoding="utf-8"
    )
    df = read_caption_table(
        tmp_path / "t.jsonl", tmp_path / "imgs", columns={"file": "filename", "caption": "text"}
    )
    assert df.values.tolist() == [[str(tmp_path / "imgs" / "x" / "1.jpg"), "一只猫", "x/1.jpg", "7"]]
    assert list(df.columns) == ["image_path", "text", "filename", "image_id"]


# ----------------------------------------------------------------------------- bad input


TEXT_READERS = [
    (read_original_csv, "m.csv"),
    (read_text_image_csv, "m.csv"),
    (read_flickr_tokens, "m.token"),
    (read_coco_captions, "m.json"),
    (read_coco_cn, "m.txt"),
    (read_ai_challenger, "m.json"),
    (read_wukong, "m.csv"),
    (read_caption_table, "m.tsv"),
]


@pytest.mark.parametrize("reader,name", TEXT_READERS)
def test_missing_file(reader, name, tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / name}: file not found"):
        reader(tmp_path / name, tmp_path)


@pytest.mark.parametrize("reader,name", TEXT_READERS)
def test_empty_file(reader, name, tmp_path):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=rf"{tmp_path / name}: empty file \(no rows\)"):
        reader(tmp_path / name, tmp_path)


@pytest.mark.parametrize("reader,name", TEXT_READERS)
def test_non_utf8_names_file_and_line(reader, name, tmp_path):
    good = {"m.csv": "url,filename,text,image_path,caption\n", "m.tsv": "text\timage_path\n", "m.json": "[\n"}
    head = good.get(name, "a.jpg#0\tok\n") + "\n"  # two valid lines, then GBK bytes on line 3
    (tmp_path / name).write_bytes(head.encode() + "中文".encode("gbk") + b"\n")
    with pytest.raises(DataError, match=rf"{tmp_path / name}: not valid UTF-8 at line 3, byte 1"):
        reader(tmp_path / name, tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "tsv", "parquet"])
def test_header_only_means_no_rows(suffix, tmp_path):
    path = tmp_path / f"h.{suffix}"
    if suffix == "parquet":
        pd.DataFrame({"text": pd.Series([], dtype=str), "image_path": pd.Series([], dtype=str)}).to_parquet(
            path
        )
    else:
        path.write_text("text,image_path\n".replace(",", "\t" if suffix == "tsv" else ","), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}: no rows"):
        read_text_image_csv(path)


def test_missing_column_lists_available_columns(tmp_path):
    (tmp_path / "m.csv").write_text("url,file_name,caption\nhttp://a/1.jpg,1.jpg,猫\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_original_csv(tmp_path / "m.csv", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'm.csv'}: missing columns 'filename', 'text'; "
        "the file has columns ['url', 'file_name', 'caption']"
    )
    with pytest.raises(
        DataError,
        match=r"missing column 'text' \(after renaming \{'caption': 'txt'\}\); "
        r"the file has columns \['url', 'file_name', 'caption'\]",
    ):
        read_table(tmp_path / "m.csv", required=("text",), columns={"caption": "txt"})
    (tmp_path / "wk.csv").write_text("link,caption\nhttp://a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"wk\.csv: missing column 'url'.*\['link', 'caption'\]"):
        read_wukong(tmp_path / "wk.csv", tmp_path)


@pytest.mark.parametrize("reader", [read_coco_captions, read_ai_challenger])
def test_invalid_json_names_line_and_column(reader, tmp_path):
    (tmp_path / "j.json").write_text('{"images": [],\n  "annotations": [}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{tmp_path / 'j.json'}: invalid JSON at line 2, column 19"):
        reader(tmp_path / "j.json", tmp_path)


def test_invalid_jsonl_line(tmp_path):
    (tmp_path / "j.jsonl").write_text(
        '{"text": "a", "image_path": "a.jpg"}\n{"text": "b", oops}\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"j\.jsonl: invalid JSON at line 2, column 15"):
        read_table(tmp_path / "j.jsonl")


def test_unsupported_suffix_and_images_root_required(tmp_path):
    with pytest.raises(DataError, match=r"unsupported table type '\.xlsx'"):
        read_table(tmp_path / "t.xlsx")
    with pytest.raises(DataError, match=r"flickr_tokens: images_root is required"):
        import_captions("flickr_tokens", FIXTURES / "results_20130124.token")


def test_unknown_format_lists_known_ones():
    with pytest.raises(DataError) as err:
        import_captions("laion", "x.parquet")
    assert "unknown caption format 'laion'" in str(err.value)
    assert all(name in str(err.value) for name in IMPORTERS)


def test_importers_registry_and_dispatch(tmp_path):
    assert set(IMPORTERS) == {
        "original_csv",
        "text_image_csv",
        "flickr_tokens",
        "coco_captions",
        "coco_cn",
        "ai_challenger",
        "wukong",
        "img2dataset",
        "table",
        "hf_dataset",
    }
    pd.testing.assert_frame_equal(
        import_captions("coco_cn", FIXTURES / "imageid.human-written-caption.txt", tmp_path),
        read_coco_cn(FIXTURES / "imageid.human-written-caption.txt", tmp_path),
    )
    # a generic table with url,filename,text columns reads like the original CSV
    pd.testing.assert_frame_equal(
        import_captions("table", FIXTURES / "original.csv", tmp_path),
        read_original_csv(FIXTURES / "original.csv", tmp_path),
    )
    with pytest.raises(
        DataError,
        match=r"wukong_100m_0\.csv: missing column 'image_path' \(or 'filename'\); "
        r"the table has columns \['url', 'text'\]",
    ):
        import_captions("table", FIXTURES / "wukong_100m_0.csv", tmp_path, columns={"caption": "text"})


# ----------------------------------------------------------------------------- img2dataset

# One shard as img2dataset writes it: keys are shard id (5 digits) + index (4 digits); the parquet
# holds every input row (url, caption, key, status, error_message, width, height, original_*, sha256).
SAMPLES = [
    ("000000000", "http://a.example/0.jpg", "一只猫在睡觉", "success", None),
    (
        "000000001",
        "http://a.example/1.jpg",
        "a broken link",
        "failed_to_download",
        "HTTP Error 404: Not Found",
    ),
    ("000000002", "http://a.example/2.jpg", " 海边的日落 ", "success", None),
]


def _status_parquet(path):
    ok = [s[3] == "success" for s in SAMPLES]
    pd.DataFrame(
        {
            "url": [s[1] for s in SAMPLES],
            "caption": [s[2] for s in SAMPLES],
            "key": [s[0] for s in SAMPLES],
            "status": [s[3] for s in SAMPLES],
            "error_message": [s[4] for s in SAMPLES],
            "width": [8 if o else None for o in ok],
            "height": [6 if o else None for o in ok],
            "original_width": [8 if o else None for o in ok],
            "original_height": [6 if o else None for o in ok],
            "sha256": [hashlib.sha256(s[0].encode()).hexdigest() if o else None for s, o in zip(SAMPLES, ok)],
        }
    ).to_parquet(path)


def _sample_files(make_jpeg_bytes):
    """{member name: bytes} for the successful samples, as img2dataset writes them (8x6 plain JPEGs)."""
    files = {}
    for i, (key, url, caption, status, _) in enumerate(SAMPLES):
        if status == "success":
            files[f"{key}.jpg"] = make_jpeg_bytes(8, 6, color=(40 * i, 100, 200))
            files[f"{key}.txt"] = caption.encode()
            files[f"{key}.json"] = json.dumps(
                {"url": url, "caption": caption, "key": key, "status": status}
            ).encode()
    return files


def _tar(path, files):
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


EXPECTED_TEXT = [
    ("000000000", "一只猫在睡觉", "http://a.example/0.jpg"),
    ("000000002", "海边的日落", "http://a.example/2.jpg"),
]


def test_img2dataset_files_mode(tmp_path, make_jpeg_bytes):
    files = _sample_files(make_jpeg_bytes)
    (tmp_path / "00000").mkdir()
    for name, data in files.items():
        (tmp_path / "00000" / name).write_bytes(data)
    _status_parquet(tmp_path / "00000.parquet")
    (tmp_path / "00000_stats.json").write_text("{}")
    df = read_img2dataset(tmp_path)
    assert list(df.columns) == ["image_path", "text", "url", "filename", "image_id"]
    assert rows(df, "image_id", "text", "url") == EXPECTED_TEXT
    assert df["image_path"].tolist() == [
        str(tmp_path / "00000" / n) for n in ["000000000.jpg", "000000002.jpg"]
    ]
    assert df["filename"].tolist() == ["000000000.jpg", "000000002.jpg"]
    # without the parquet, the files that exist are used (caption from .txt, url from .json)
    (tmp_path / "00000.parquet").unlink()
    pd.testing.assert_frame_equal(read_img2dataset(tmp_path), df)


def test_img2dataset_webdataset_mode_extracts_images_with_extract_images(tmp_path, make_jpeg_bytes):
    out = tmp_path / "out"
    out.mkdir()
    files = _sample_files(make_jpeg_bytes)
    _tar(out / "00000.tar", files)
    _status_parquet(out / "00000.parquet")
    df = import_captions("img2dataset", out, extract_images=True)
    assert rows(df, "image_id", "text", "url") == EXPECTED_TEXT
    extracted = out / "_extracted" / "00000"
    assert df["image_path"].tolist() == [str(extracted / "000000000.jpg"), str(extracted / "000000002.jpg")]
    assert sorted(p.name for p in extracted.iterdir()) == [
        "000000000.jpg",
        "000000002.jpg",
    ]  # no temp files left
    assert (extracted / "000000002.jpg").read_bytes() == files["000000002.jpg"]
    assert Image.open(df["image_path"][0]).size == (8, 6)

    # a rerun keeps files already extracted with the right size and replaces a truncated one
    first = extracted / "000000000.jpg"
    os.utime(first, (1, 1))
    (extracted / "000000002.jpg").write_bytes(b"trunc")
    pd.testing.assert_frame_equal(read_img2dataset(out, extract_images=True), df)
    assert first.stat().st_mtime == 1
    assert (extracted / "000000002.jpg").read_bytes() == files["000000002.jpg"]

    # images_root / extract_dir picks another home for the extracted images
    df2 = import_captions("img2dataset", out, images_root=tmp_path / "elsewhere", extract_images=True)
    elsewhere = tmp_path / "elsewhere" / "00000"
    assert df2["image_path"].tolist() == [str(elsewhere / n) for n in ["000000000.jpg", "000000002.jpg"]]


def test_img2dataset_webdataset_without_parquet(tmp_path, make_jpeg_bytes):
    _tar(tmp_path / "00003.tar", _sample_files(make_jpeg_bytes))
    df = read_img2dataset(tmp_path)  # read in place: captions from the .txt members, urls from the .json ones
    assert rows(df, "image_id", "text", "url") == EXPECTED_TEXT
    tar = tmp_path / "00003.tar"
    assert df["image_path"].tolist() == [f"{tar}::000000000.jpg", f"{tar}::000000002.jpg"]
    df = read_img2dataset(tmp_path, extract_dir=tmp_path / "x", extract_images=True)
    assert rows(df, "image_id", "text", "url") == EXPECTED_TEXT
    assert df["image_path"].tolist() == [
        str(tmp_path / "x" / "00003" / "000000000.jpg"),
        str(tmp_path / "x" / "00003" / "000000002.jpg"),
    ]


def test_img2dataset_tar_member_cannot_escape(tmp_path, make_jpeg_bytes):
    out = tmp_path / "a" / "out"
    out.mkdir(parents=True)
    evil = make_jpeg_bytes(8, 6, color=(255, 0, 0))
    _tar(out / "00000.tar", {**_sample_files(make_jpeg_bytes), "../evil.jpg": evil})
    _status_parquet(out / "00000.parquet")
    with pytest.raises(DataError, match=r"00000\.tar: refusing member '\.\./evil\.jpg'"):
        read_img2dataset(out, extract_dir=out / "x", extract_images=True)
    assert [p for p in tmp_path.rglob("*") if p.name == "evil.jpg"] == []
    assert not (out / "x").exists()  # every member is checked before anything is extracted


def test_img2dataset_success_row_without_image(tmp_path, make_jpeg_bytes):
    files = _sample_files(make_jpeg_bytes)
    del files["000000002.jpg"]
    _tar(tmp_path / "00000.tar", files)
    _status_parquet(tmp_path / "00000.parquet")
    with pytest.raises(
        DataError, match=r"00000\.tar: sample 000000002 has status 'success' but no image file"
    ):
        read_img2dataset(tmp_path)


def test_img2dataset_bad_folders(tmp_path):
    with pytest.raises(DataError, match=r"img2dataset output folder not found"):
        read_img2dataset(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no img2dataset shards"):
        read_img2dataset(tmp_path)
    (tmp_path / "00000.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DataError, match=r"00000\.tar: not a readable uncompressed tar"):
        read_img2dataset(tmp_path)
    with pytest.raises(DataError, match=r"00000\.tar: damaged tar"):
        read_img2dataset(tmp_path, extract_images=True)
