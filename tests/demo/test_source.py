"""The demo set as processdata_01's source: the "demo?key=value&..." string, and serving the set it names."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import requests

from nbutils.data.download import DownloadConfig, download_images, load_manifest
from nbutils.demo import scenes
from nbutils.demo.source import EXAMPLE, MANIFEST_FILE, DemoSource, is_demo, serve_demo
from nbutils.demo.website import compare_downloads, manifest

KEYS = ["language", "n_images", "image_size", "data_dir"]


# ----------------------------------------------------------------------------- the source string


def test_plain_demo_is_every_default():
    assert DemoSource.parse("demo") == DemoSource() == DemoSource.parse("demo?")
    assert dataclasses.asdict(DemoSource()) == {
        "language": "zh",
        "n_images": 3000,
        "image_size": 64,
        "data_dir": "../data",
    }
    assert all(f.metadata["help"] for f in dataclasses.fields(DemoSource))


@pytest.mark.parametrize(
    "query, key, value",
    [
        ("language=en", "language", "en"),
        ("n_images=300", "n_images", 300),
        ("image_size=48", "image_size", 48),
        ("data_dir=/tmp/x", "data_dir", "/tmp/x"),
        ("data_dir=../my%20data/a%26b", "data_dir", "../my data/a&b"),  # percent-encoded, like a url
    ],
)
def test_each_key_sets_its_field_typed_like_it(query, key, value):
    parsed = DemoSource.parse(f"demo?{query}")
    assert getattr(parsed, key) == value and type(getattr(parsed, key)) is type(value)
    assert parsed == dataclasses.replace(DemoSource(), **{key: value})  # the other keys keep their defaults


def test_all_keys_at_once_and_back_to_the_string():
    parsed = DemoSource.parse(EXAMPLE)
    assert parsed == DemoSource(language="en", n_images=300, image_size=64, data_dir="../data")
    assert parsed.spec() == "demo?language=en&n_images=300"  # only what differs from the defaults
    assert DemoSource().spec() == "demo"
    odd = DemoSource(language="en", data_dir="/tmp/a b&c=d+e")
    assert DemoSource.parse(odd.spec()) == odd
    assert parsed.folder(seed=2) == Path("../data/demo/en-n300-64px-seed2")


def test_keys_the_string_leaves_out_take_the_defaults_given_to_parse():
    # processdata_03 passes its own data_dir and image_size; the string's keys win over them.
    assert DemoSource.parse("demo", data_dir="/d", image_size=32) == DemoSource(image_size=32, data_dir="/d")
    assert DemoSource.parse("demo?data_dir=/q&language=en", data_dir="/d") == DemoSource(
        language="en", data_dir="/q"
    )
    with pytest.raises(ValueError, match=r"source='demo': image_size must be an integer >= 16; got 8"):
        DemoSource.parse("demo", image_size=8)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("demo?langauge=en", ["unknown key 'langauge'", "did you mean 'language'"]),
        ("demo?n_images=many", ["n_images='many' is not int"]),
        ("demo?n_images=2.5", ["n_images='2.5' is not int"]),
        ("demo?n_images=0", ["n_images must be an integer >= 1; got 0"]),
        ("demo?image_size=8", ["image_size must be an integer >= 16; got 8"]),
        ("demo?language=fr", ["language must be one of zh, en; got 'fr'"]),
        ("demo?data_dir=", ["data_dir must name a folder; got ''"]),
        ("demo?n_images", ["n_images has no value (write n_images=...)"]),
        ("demo?n_images=30&n_images=40", ["n_images is given twice"]),
        ("demos", ["source='demos' is not the demo set"]),
    ],
)
def test_a_wrong_key_or_value_is_an_error_naming_it_the_keys_and_an_example(source, expected):
    with pytest.raises(ValueError) as info:
        DemoSource.parse(source)
    message = str(info.value)
    for part in expected:
        assert part in message, message
    assert "with the keys language, n_images, image_size, data_dir" in message and EXAMPLE in message


def test_is_demo_knows_the_demo_set_from_a_manifest_path():
    for source in ("demo", "demo?n_images=30", EXAMPLE):
        assert is_demo(source), source
    for source in ("demo.csv", "data/demo", "demos", "Demo", "", "processdata_01", "/tmp/demo?x.csv"):
        assert not is_demo(source), source


def test_download_config_holds_download_parameters_and_names_the_demo_keys():
    fields = {f.name: f for f in dataclasses.fields(DownloadConfig)}
    assert not set(KEYS) & set(fields)  # the demo's own parameters live in DemoSource only
    assert is_demo(fields["source"].default)
    assert "demo?key=value&..." in fields["source"].metadata["help"]
    assert all(key in fields["source"].metadata["help"] for key in KEYS)
    assert [f.name for f in dataclasses.fields(DemoSource)] == KEYS


# ----------------------------------------------------------------------------- serving


def test_serving_writes_a_manifest_whose_urls_the_downloader_fetches(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run" / "processdata_01"
    config = DownloadConfig(
        run_dir=str(tmp_path / "run"), read_timeout=1.0, retries=2, backoff=0.05, max_bytes=150_000
    )
    source = f"demo?language=en&n_images=30&image_size=32&data_dir={data}"
    with serve_demo(source, out, seed=2, max_bytes=config.max_bytes) as served:
        # The set is generated where DemoSource.folder says, with the parameters of the string and the seed.
        folder = DemoSource.parse(source).folder(seed=2)
        assert folder == scenes.demo_dir(data, "en", 30, 32, 2)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        assert meta["params"] == {
            "n_images": 30,
            "image_size": 32,
            "language": "en",
            "seed": 2,
            "captions_per_image": 5,
        }
        assert meta["generator"] == "nbutils.demo.scenes"
        assert served.site.params["seed"] == 2 and served.site.params["max_bytes"] == 150_000

        # The manifest: in the given folder, with the running server's urls, one row per caption.
        assert served.manifest_path == out / MANIFEST_FILE
        written = pd.read_csv(served.manifest_path, dtype=str, keep_default_na=False, encoding="utf-8")
        pd.testing.assert_frame_equal(written, manifest(served.site, served.server.base_url))
        assert written["url"].str.startswith(served.server.base_url + "/images/").all()
        assert len(written) == len(pd.read_csv(folder / "captions.csv")) == 150
        assert "30 urls" in served.describe() and served.server.base_url in served.describe()

        # The origin hands the language and the ground truth on to the later stages.
        assert served.origin.language == "en"
        assert served.origin.ground_truth == str((folder / "objects.jsonl").resolve())

        # The downloader fetches the urls, and every one ends as the site expects.
        urls = load_manifest(config, served.manifest_path)  # as processdata_01 reads it
        result = download_images(urls, out / "images", config, progress=False)
        check = compare_downloads(served.site, result.status, served.server.base_url)
        assert check["as_expected"].all(), check[~check["as_expected"]]
        assert result.summary["ok"] == (served.site.expected["expect_download"] == "ok").sum() > 0
        ok = served.site.expected[served.site.expected["fault"] == "ok"].iloc[0]
        assert (out / "images" / ok["filename"]).read_bytes() == (
            folder / "images" / ok["demo_filename"]
        ).read_bytes()
        url = served.server.url(ok["path"])
    with pytest.raises(requests.ConnectionError):  # leaving the block stops the server
        requests.get(url, timeout=5)


def test_serving_the_same_set_again_reuses_it(tmp_path):
    source = DemoSource(n_images=30, image_size=16, data_dir=str(tmp_path / "data"))
    with serve_demo(source, tmp_path / "a", seed=0, max_bytes=100_000) as first:
        stamps = {p: p.stat().st_mtime_ns for p in source.folder(0).rglob("*")}
    with serve_demo(source, tmp_path / "b", seed=0, max_bytes=100_000) as second:
        assert {p: p.stat().st_mtime_ns for p in source.folder(0).rglob("*")} == stamps
        assert second.site.routes == first.site.routes
    assert (tmp_path / "a" / MANIFEST_FILE).is_file() and (tmp_path / "b" / MANIFEST_FILE).is_file()
