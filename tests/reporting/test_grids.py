"""Image grids: HTML grids with captions, safe thumbnails, and the grids each notebook shows."""

import base64
import html as html_lib
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nbutils.data.cache import ImageGeometry, build_image_cache
from nbutils.data.images import load_rgb
from nbutils.data.validate import ValidationConfig, validate_images
from nbutils.reporting import grids

GREY = 200  # safe_thumbnail's tile for what it will not draw


def grid_images(page: str) -> list[np.ndarray]:
    """The images embedded in an HTML grid, decoded, in cell order."""
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"))
        for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def grid_captions(page: str) -> list[list[str]]:
    """Each cell's caption lines, unescaped, in cell order."""
    return [
        [html_lib.unescape(line) for line in cell.split("<br>")]
        for cell in re.findall(r'border:1px solid #ccc"><br>(.*?)</div>', page)
    ]


def solid_png(path, colour, size=(40, 40)):
    Image.new("RGB", size, colour).save(path)
    return str(path)


# ----------------------------------------------------------------------------- the building blocks


def test_image_grid_html_embeds_every_image_and_escapes_captions():
    images = [np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)]
    html = grids.image_grid_html(images, ["一个<红色>圆形", ["a", "b"]], ncols=2)
    assert html.count("<img ") == 2 and html.count("data:image/png;base64,") == 2
    assert "一个&lt;红色&gt;圆形" in html and "<红色>" not in html
    assert "grid-template-columns:repeat(2" in html


def test_safe_thumbnail_never_decodes_a_bomb_and_never_raises(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((200, 100, 3), 7, np.uint8)).save(good)
    thumb = grids.safe_thumbnail(good, size=50)
    assert thumb.shape == (50, 25, 3) and (thumb == 7).all()

    html_page = tmp_path / "page.jpg"
    html_page.write_bytes(b"<html>error</html>")
    assert (grids.safe_thumbnail(html_page, size=10) == 200).all()

    big = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(big)
    decoded = []
    monkeypatch.setattr("nbutils.reporting.grids.load_rgb", lambda p: decoded.append(p))
    assert (grids.safe_thumbnail(big, size=10, max_pixels=1000) == 200).all()
    assert decoded == []  # refused from the header alone


def test_grid_helpers_read_back_what_image_grid_html_wrote():
    images = [np.full((3, 5, 3), (10 * i, 20, 30), np.uint8) for i in range(3)]
    page = grids.image_grid_html(images, ["a & b", ["x", "<y>"], []])
    assert [im.tolist() for im in grid_images(page)] == [im.tolist() for im in images]
    assert grid_captions(page) == [["a & b"], ["x", "<y>"], [""]]


# ----------------------------------------------------------------------------- processdata_02's grids


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """validate_images on rejects of three kinds, two images to normalise and clean ones (distinct bytes)."""
    root = tmp_path_factory.mktemp("validated")
    paths = []
    for i, side in enumerate((8, 10, 12, 9)):  # "too small: WxH": one category, four reasons
        paths.append(solid_png(root / f"tiny{i}.png", (60 * i, 250, 0), (side, side + 1)))
    for i in range(3):  # HTML error pages saved as .jpg
        (root / f"page{i}.jpg").write_bytes(f"<html><body>error {i}</body></html>".encode())
        paths.append(str(root / f"page{i}.jpg"))
    (root / "cut.png").write_bytes(Image.new("RGB", (64, 64)).tobytes()[:10] + b"\x89PNG")  # not a PNG
    paths.append(str(root / "cut.png"))
    cmyk = root / "cmyk.jpg"
    Image.new("CMYK", (48, 48), (0, 200, 200, 0)).save(cmyk, quality=95)
    palette = root / "palette.png"
    Image.new("RGB", (48, 48), (20, 40, 220)).quantize(8).save(palette)
    paths += [str(cmyk), str(palette)]
    paths += [solid_png(root / f"clean{i}.png", (i * 40, 100, 100)) for i in range(3)]
    table = pd.DataFrame({"image_path": paths, "text": [f"caption {i}" for i in range(len(paths))]})
    return validate_images(table, root / "out", ValidationConfig(num_workers=1), progress=False)


def test_rejects_grid_html_shows_a_few_of_each_reason_safely(validated):
    rejects = validated.rejects
    category = rejects["reason"].str.split(":").str[0]
    assert (category == "too small").sum() == 4 and rejects["reason"].nunique() > category.nunique()
    assert len(set(category)) >= 2

    page = grids.rejects_grid_html(rejects, per_reason=2)
    shown = pd.concat([rejects[category == c].head(2) for c in category.unique()]).sort_index()
    assert grid_captions(page) == [[r] for r in shown["reason"]]  # table order, at most 2 per category
    assert category[shown.index].value_counts().max() == 2
    for image, (_, row) in zip(grid_images(page), shown.iterrows(), strict=True):
        if row["reason"].startswith("too small"):  # small enough to show: the image itself
            np.testing.assert_array_equal(image, np.asarray(load_rgb(row["image_path"])))
        else:  # not an image: a grey tile, not a traceback
            assert (image == GREY).all()

    assert len(grid_captions(grids.rejects_grid_html(rejects, per_reason=2, limit=3))) == 3
    assert len(grid_captions(grids.rejects_grid_html(rejects))) == len(
        pd.concat([rejects[category == c].head(3) for c in category.unique()])
    )


def test_normalised_grid_html_shows_the_rewritten_copies(validated):
    checks = validated.checks
    fixed = checks[checks["needs_normalising"] & checks["ok"]]
    assert sorted(fixed["mode"]) == ["CMYK", "P"] and (fixed["normalised_path"] != "").all()

    page = grids.normalised_grid_html(checks)
    assert grid_captions(page) == [[f"{m} {f}"] for m, f in zip(fixed["mode"], fixed["format"])]
    for image, path in zip(grid_images(page), fixed["normalised_path"], strict=True):
        assert path.endswith(".jpg") and path != fixed.set_index("normalised_path").at[path, "path"]
        np.testing.assert_array_equal(image, np.asarray(load_rgb(path)))  # the copy, not the original
    assert len(grid_images(grids.normalised_grid_html(checks, limit=1))) == 1
    clean_only = checks[~checks["needs_normalising"]]
    assert grid_images(grids.normalised_grid_html(clean_only)) == []


# ----------------------------------------------------------------------------- processdata_03, train_clip


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A cache of 10 distinct 16 px images; a table of their captions, interleaved."""
    root = tmp_path_factory.mktemp("cached")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    cache = build_image_cache(paths, root / "cache", ImageGeometry(16, 16), num_workers=0, progress=False)
    order = [3, 7, 0, 9, 1, 5, 8, 2, 6, 4]
    rows = [(paths[i], f"{i}-{k}") for k in range(4) for i in order]  # image i's k-th caption "i-k"
    return cache, pd.DataFrame(rows, columns=["image_path", "text"]), paths


def test_cache_samples_reads_the_chosen_images_back_from_the_cache(cached):
    cache, table, paths = cached
    pixels, captions = grids.cache_samples(table, cache, n=4, seed=1, captions_per_image=3)
    assert pixels.shape == (4, 16, 16, 3) and pixels.dtype == np.uint8 and len(captions) == 4
    everything = cache.uint8(np.arange(len(cache)))
    chosen = []
    for image in pixels:  # which cached image each one is (the 10 are distinct)
        (row,) = [r for r in range(len(cache)) if np.array_equal(everything[r], image)]
        chosen.append(cache.paths[row])
    assert len(set(chosen)) == 4 and set(chosen) <= set(table["image_path"])
    np.testing.assert_array_equal(pixels, cache.uint8(cache.index_of(chosen)))
    for path, caps in zip(chosen, captions):
        number = paths.index(path)
        assert caps == [f"{number}-{k}" for k in range(3)]  # its own captions, in table order

    again = grids.cache_samples(table, cache, n=4, seed=1, captions_per_image=3)
    np.testing.assert_array_equal(again[0], pixels)
    assert again[1] == captions
    others = [grids.cache_samples(table, cache, n=4, seed=s)[1] for s in range(2, 6)]
    assert any([c[0].split("-")[0] for c in o] != [c[0].split("-")[0] for c in captions] for o in others)

    all_of_them, caps = grids.cache_samples(table, cache, n=50, captions_per_image=10)
    assert len(all_of_them) == 10 and sorted(c[0].split("-")[0] for c in caps) == [str(i) for i in range(10)]
    assert all(len(c) == 4 for c in caps)


def test_search_results_html_marks_the_target(cached):
    from nbutils.data.datasets import ImageTextDataset

    cache, table, _ = cached
    dataset = ImageTextDataset(cache, table)
    results = [
        {"query": "一个<红色>圆形", "target": 2, "scores": [0.91234, 0.5, 0.25], "images": [5, 2, 7]},
        {"query": "missed", "target": 0, "scores": [0.3, 0.2], "images": [1, 3]},
    ]
    page = grids.search_results_html(results, dataset)
    assert "<p><b>一个&lt;红色&gt;圆形</b></p>" in page and "<p><b>missed</b></p>" in page
    assert grid_captions(page) == [["0.912"], ["✓ 0.500"], ["0.250"], ["0.300"], ["0.200"]]
    want = [cache.uint8(int(dataset.rows[j])) for r in results for j in r["images"]]
    assert [im.tolist() for im in grid_images(page)] == [w.tolist() for w in want]
    assert page.count("grid-template-columns:repeat(3") == page.count("grid-template-columns:repeat(2") == 1
    assert "ok 0.500" in grids.search_results_html(results[:1], dataset, k_label="ok ")


def test_grids_of_a_clean_input_are_empty(tmp_path):
    # Nothing rejected, nothing to normalise: processdata_02 draws both grids anyway.
    paths = [solid_png(tmp_path / f"clean{i}.png", (i * 40, 100, 100)) for i in range(3)]
    result = validate_images(
        pd.DataFrame({"image_path": paths, "text": ["a", "b", "c"]}),
        tmp_path / "out",
        ValidationConfig(num_workers=1),
        progress=False,
    )
    assert len(result.rejects) == 0 and not result.checks["needs_normalising"].any()
    for page in (grids.rejects_grid_html(result.rejects), grids.normalised_grid_html(result.checks)):
        assert grid_images(page) == [] and page.startswith('<div style="display:grid')


def test_captions_grid_html_shows_prediction_then_references(cached):
    from nbutils.data.datasets import ImageTextDataset

    cache, table, _ = cached
    dataset = ImageTextDataset(cache, table)
    chosen = [dataset.image_paths[3], dataset.image_paths[0]]
    predictions = pd.DataFrame({"image_path": chosen, "prediction": ["一个<蓝色>方块", "x"]})
    page = grids.captions_grid_html(dataset, predictions, n=2, references=1)
    assert grid_captions(page) == [
        ["✎ 一个<蓝色>方块", dataset.captions[3][0]],
        ["✎ x", dataset.captions[0][0]],
    ]
    want = [cache.uint8(int(dataset.rows[i])) for i in (3, 0)]
    assert [im.tolist() for im in grid_images(page)] == [w.tolist() for w in want]
