import io
import re

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image, ImageOps

from nbutils.demo.scenes import caption_attributes, generate_demo_dataset, load_ground_truth
from nbutils.demo.website import (
    EXTRA_FAULT_KINDS,
    FAULT_KINDS,
    build_demo_site,
    compare_downloads,
    fault_counts,
    manifest,
    serve,
    write_manifest,
)
from nbutils.errors import DataError

N_IMAGES = 120
SITE = {"fault_share": 0.25, "slow_count": 2, "slow_delay": 1.0, "max_bytes": 200_000}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_site") / "demo"
    generate_demo_dataset(out, n_images=N_IMAGES, image_size=48, language="zh", seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def site(demo_dir):
    return build_demo_site(demo_dir, seed=0, **SITE)


def rows_of(site, fault):
    return site.expected[site.expected["fault"] == fault]


def body(site, fault):
    return site.routes[rows_of(site, fault)["path"].iloc[0]].payload()


def demo_pixels(demo_dir, name, mode="RGB"):
    return np.asarray(Image.open(demo_dir / "images" / name).convert(mode), dtype=np.float64)


def test_fault_kinds_and_counts_at_demo_scale():
    assert FAULT_KINDS == [
        "http_404",
        "http_500_then_ok",
        "slow",
        "truncated_body",
        "html_as_jpg",
        "wrong_content_type",
        "redirect_loop",
        "oversized",
        "truncated_jpeg",
        "cmyk",
        "png_16bit",
        "palette_transparency",
        "exif_rotated",
        "tiny",
        "huge_header",
        "duplicate",
        "placeholder",
        "ok",
    ]
    counts = fault_counts(3000)  # the defaults `make demo` uses
    assert list(counts) == FAULT_KINDS and sum(counts.values()) == 3000
    assert 3000 - counts["ok"] == 450 and counts["slow"] == 4 and counts["placeholder"] >= 6
    assert min(counts[k] for k in FAULT_KINDS) >= 2
    # Too few images for one of each kind is a clear error, not a silently thinner site.
    with pytest.raises(ValueError, match="n_images=20 is too few"):
        fault_counts(20)
    with pytest.raises(ValueError, match="fault_share"):
        fault_counts(3000, fault_share=1.5)


def test_assignment_is_seeded_and_covers_every_kind(demo_dir, site):
    again = build_demo_site(demo_dir, seed=0, **SITE)
    assert again.routes == site.routes  # Route is a dataclass: paths, bodies and behaviour all equal
    pd.testing.assert_frame_equal(again.manifest_rows, site.manifest_rows)
    pd.testing.assert_frame_equal(again.expected, site.expected)
    other = build_demo_site(demo_dir, seed=1, **SITE)
    assert (other.expected["fault"] != site.expected["fault"]).sum() > 10

    counts = site.expected["fault"].value_counts()
    assert set(counts.index) == set(FAULT_KINDS) and len(site.expected) == N_IMAGES
    share = 1 - counts["ok"] / N_IMAGES
    assert abs(share - SITE["fault_share"]) <= 0.05
    assert counts["slow"] == SITE["slow_count"] and counts["placeholder"] >= 6


def test_expectations_follow_the_contract(site):
    e = site.expected.set_index("fault")
    assert e.loc["slow", "expect_download"].tolist() == ["timeout"] * SITE["slow_count"]
    for fault, download, validation in [
        ("http_404", "http_404", ""),
        ("truncated_body", "truncated", ""),
        ("html_as_jpg", "bad_content_type", ""),
        ("redirect_loop", "too_many_redirects", ""),
        ("oversized", "too_large", ""),
        ("http_500_then_ok", "ok", "clean"),
        ("ok", "ok", "clean"),
        ("cmyk", "ok", "normalised"),
        ("exif_rotated", "ok", "normalised"),
        ("truncated_jpeg", "ok", "truncated or corrupt"),
        ("tiny", "ok", "too small"),
        ("huge_header", "ok", "too large"),
        ("duplicate", "ok", "duplicate"),
        ("placeholder", "ok", "placeholder"),
    ]:
        got = e.loc[[fault], ["expect_download", "expect_validation"]].drop_duplicates().values.tolist()
        assert got == [[download, validation]], fault


def test_served_faults_reach_a_real_client(demo_dir, site):
    with serve(site) as server:

        def get(fault, **kw):
            return requests.get(
                server.url(rows_of(site, fault)["path"].iloc[0]), timeout=kw.get("timeout", 10)
            )

        ok = rows_of(site, "ok").iloc[0]
        r = requests.get(server.url(ok["path"]), timeout=10)
        assert r.status_code == 200 and r.content == (demo_dir / "images" / ok["demo_filename"]).read_bytes()
        assert get("http_404").status_code == 404
        assert [get("http_500_then_ok").status_code, get("http_500_then_ok").status_code] == [500, 200]
        with pytest.raises(requests.exceptions.Timeout):
            get("slow", timeout=0.2)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            _ = get("truncated_body").content
        with pytest.raises(requests.exceptions.TooManyRedirects):
            get("redirect_loop")
        html = get("html_as_jpg")
        assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
        assert rows_of(site, "html_as_jpg")["path"].str.endswith(".jpg").all() and b"<html" in html.content
        plain = get("wrong_content_type")
        assert (
            plain.headers["Content-Type"] == "text/plain"
            and Image.open(io.BytesIO(plain.content)).format == "JPEG"
        )
        big = get("oversized")
        assert big.headers["Content-Type"] == "image/jpeg" and len(big.content) > SITE["max_bytes"]
        Image.open(io.BytesIO(big.content)).load()  # a real JPEG: only its size is wrong
        assert get("truncated_jpeg").status_code == 200


def test_variant_bytes_are_what_they_claim(demo_dir, site, monkeypatch):
    def source(fault):
        return rows_of(site, fault)["demo_filename"].iloc[0]

    cmyk = Image.open(io.BytesIO(body(site, "cmyk")))
    assert cmyk.mode == "CMYK"
    assert np.abs(np.asarray(cmyk.convert("RGB"), float) - demo_pixels(demo_dir, source("cmyk"))).mean() < 3

    png16 = Image.open(io.BytesIO(body(site, "png_16bit")))
    assert png16.format == "PNG" and png16.mode == "I;16"
    values = np.asarray(png16, dtype=np.float64)
    assert values.max() > 255
    assert np.abs(values / 257 - demo_pixels(demo_dir, source("png_16bit"), "L")).mean() < 1

    pal = Image.open(io.BytesIO(body(site, "palette_transparency")))
    assert pal.mode == "P" and "transparency" in pal.info
    composited = pal.convert("RGBA")
    white = Image.new("RGBA", composited.size, (255, 255, 255, 255))
    flat = np.asarray(Image.alpha_composite(white, composited).convert("RGB"), float)
    assert np.abs(flat - demo_pixels(demo_dir, source("palette_transparency"))).mean() < 3

    for _, row in rows_of(site, "exif_rotated").iterrows():
        rotated = Image.open(io.BytesIO(site.routes[row["path"]].payload()))
        assert rotated.getexif().get(0x0112) in (3, 6, 8)
        upright = np.asarray(ImageOps.exif_transpose(rotated).convert("RGB"), float)
        assert np.abs(upright - demo_pixels(demo_dir, row["demo_filename"])).mean() < 4

    assert Image.open(io.BytesIO(body(site, "tiny"))).size == (8, 8)

    bomb = body(site, "huge_header")
    assert len(bomb) < 2000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert Image.open(io.BytesIO(bomb)).size == (60000, 60000)  # header only; nothing decoded
    monkeypatch.undo()

    cut = body(site, "truncated_jpeg")
    whole = (demo_dir / "images" / source("truncated_jpeg")).read_bytes()
    assert whole.startswith(cut) and 0.5 < len(cut) / len(whole) < 0.7
    with pytest.raises(OSError):
        Image.open(io.BytesIO(cut)).load()


def test_duplicates_and_placeholders(demo_dir, site):
    demo_bytes = {p.name: p.read_bytes() for p in (demo_dir / "images").iterdir()}
    gt = load_ground_truth(demo_dir).assign(name=lambda d: d["image_path"].map(lambda p: p.rsplit("/", 1)[1]))
    objects = dict(zip(gt["name"], gt["objects"]))
    e = site.expected.set_index("path")
    texts = site.manifest_rows.groupby("path")["text"].apply(set)
    for path, row in e[e["fault"] == "duplicate"].iterrows():
        twin = e.loc[row["duplicate_of"]]
        assert twin["fault"] == "ok" and twin.name != path and twin["filename"] < row["filename"]
        assert (
            site.routes[path].payload()
            == site.routes[twin.name].payload()
            == demo_bytes[row["demo_filename"]]
        )
        assert row["demo_filename"] == twin["demo_filename"]
        # Described twice: other captions, all of them true of the shared picture.
        assert texts[path] != texts[twin.name]
        truth = objects[row["demo_filename"]]
        for text in texts[path]:
            claims = caption_attributes(text, "zh")
            assert claims["colours"] <= {o["colour"] for o in truth} and claims["shapes"] <= {
                o["shape"] for o in truth
            }
    assert e.loc[e["fault"] == "duplicate", "duplicate_of"].is_unique  # two copies each, never a crowd

    placeholders = {site.routes[p].payload() for p in e.index[e["fault"] == "placeholder"]}
    assert len(placeholders) == 1 and (e["fault"] == "placeholder").sum() >= 6
    placeholder = placeholders.pop()
    assert placeholder not in demo_bytes.values()
    assert Image.open(io.BytesIO(placeholder)).size == (48, 48)


def test_manifest_rows_map_back_to_the_demo_set(demo_dir, site, tmp_path):
    captions = pd.read_csv(demo_dir / "captions.csv", dtype=str, keep_default_na=False)
    m = manifest(site, "http://127.0.0.1:8765/")
    assert list(m.columns) == ["url", "filename", "text"] and len(m) == len(captions)
    assert m["url"].str.startswith("http://127.0.0.1:8765/images/").all()
    # One url per image, one filename per url, several captions per url.
    assert m.groupby("url")["filename"].nunique().eq(1).all() and m["url"].nunique() == N_IMAGES
    assert m.groupby("filename")["url"].nunique().eq(1).all()
    assert m.groupby("url").size().eq(captions.groupby("image_path").size().iloc[0]).all()
    assert all(re.fullmatch(r"\d{6}\.(jpg|png)", f) for f in m["filename"])
    png = site.expected["filename"].str.endswith(".png")
    assert set(site.expected.loc[png, "fault"]) == {"png_16bit", "palette_transparency", "huge_header"}

    e = site.expected
    assert set(e["filename"]) == set(m["filename"]) and e["path"].is_unique
    assert all((demo_dir / "images" / name).is_file() for name in e["demo_filename"])
    own = e[e["fault"] != "duplicate"]
    assert (own["filename"].str[:6] == own["demo_filename"].str[:6]).all()
    kept = m.merge(e[e["fault"] == "ok"], on="filename")
    assert set(zip(kept["demo_filename"], kept["text"])) <= set(
        zip(captions["image_path"].str.rsplit("/", n=1).str[1], captions["text"])
    )

    out = write_manifest(site, "http://127.0.0.1:8765", tmp_path / "raw" / "manifest.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype=str, keep_default_na=False, encoding="utf-8"), m)
    with pytest.raises(ValueError, match="base_url"):
        manifest(site, "127.0.0.1:8765")


def test_bad_demo_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="captions.csv: not found"):
        build_demo_site(tmp_path / "nowhere")


def test_compare_downloads_flags_each_mismatch(tmp_path):
    from nbutils.demo.scenes import generate_demo_dataset
    from nbutils.demo.website import build_demo_site, compare_downloads

    demo = tmp_path / "demo_cmp"
    generate_demo_dataset(demo, n_images=120, image_size=32, progress=False)
    site = build_demo_site(demo)
    base = "http://127.0.0.1:1"
    exp = site.expected
    status = pd.DataFrame(
        {
            "url": base + exp["path"],
            "status": np.where(exp["expect_download"] == "ok", "ok", "error"),
            "error_kind": exp["expect_download"].where(exp["expect_download"] != "ok", ""),
        }
    )
    assert compare_downloads(site, status, base)["as_expected"].all()
    # A 404 that came back ok, and a url never attempted, are both caught.
    first_404 = exp.index[exp["fault"] == "http_404"][0]
    status.loc[first_404, ["status", "error_kind"]] = ["ok", ""]
    cmp = compare_downloads(
        site, status.drop(index=exp.index[0] if exp.index[0] != first_404 else exp.index[1]), base
    )
    assert (~cmp["as_expected"]).sum() == 2 and "not attempted" in set(cmp["got"])


def test_serve_keeps_a_stable_port_and_falls_back_when_taken(tmp_path):
    from nbutils.demo.scenes import generate_demo_dataset
    from nbutils.demo.website import build_demo_site, serve

    demo = tmp_path / "demo_port"
    generate_demo_dataset(demo, n_images=120, image_size=32, progress=False)
    site = build_demo_site(demo)
    with serve(site, port=0) as first:  # a free port, held by `first`
        port = int(first.base_url.rsplit(":", 1)[1])
        with serve(site, port=port) as second:  # taken: falls back to another free port
            assert second.base_url != first.base_url
    with serve(site, port=port) as again:  # free again: the same urls as before
        assert again.base_url == first.base_url


def test_opt_in_generic_content_types_leave_the_demo_mix_alone(demo_dir, site, tmp_path):
    from nbutils.data.download import DownloadConfig, download_images

    extra = {k: 1 for k in EXTRA_FAULT_KINDS}
    opted = build_demo_site(demo_dir, seed=0, extra_faults=extra, **SITE)
    counts = opted.expected["fault"].value_counts()
    assert {k: counts[k] for k in EXTRA_FAULT_KINDS} == extra
    # Only "ok" images change: every other fault is where it was.
    changed = opted.expected["fault"] != site.expected["fault"]
    assert set(site.expected.loc[changed, "fault"]) == {"ok"} and changed.sum() == len(EXTRA_FAULT_KINDS)
    assert "extra_faults" not in site.params and opted.params["extra_faults"] == extra
    with pytest.raises(ValueError, match="unknown kind"):
        build_demo_site(demo_dir, seed=0, extra_faults={"gif_as_text": 1}, **SITE)

    wanted = opted.expected[opted.expected["fault"].isin(EXTRA_FAULT_KINDS)]
    with serve(opted, port=0) as server:
        urls = [server.url(p) for p in wanted["path"]]
        types = {
            p: requests.get(server.url(p), timeout=5).headers.get("Content-Type") for p in wanted["path"]
        }
        config = DownloadConfig(connect_timeout=2.0, read_timeout=2.0, retries=0, workers=4)
        result = download_images(pd.DataFrame({"url": urls, "text": "x"}), tmp_path, config, progress=False)
        compared = compare_downloads(opted, result.status, server.base_url)
    assert sorted(types.values(), key=str) == sorted(
        ["application/octet-stream", "binary/octet-stream", None, "application/octet-stream"], key=str
    )
    compared = compared[compared["fault"].isin(EXTRA_FAULT_KINDS)].set_index("fault")
    assert compared["got"].to_dict() == {
        "jpeg_as_octet_stream": "ok",
        "jpeg_as_binary_octet_stream": "ok",
        "jpeg_without_content_type": "ok",
        "html_as_octet_stream": "not_an_image",
    }
