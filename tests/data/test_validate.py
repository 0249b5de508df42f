"""The image validator: exact reasons for bad files, pixel-exact normalisation, duplicates, parallel == serial."""

import shutil
import struct
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from nbutils.data.cache import ImageGeometry, transform_uint8
from nbutils.data.images import load_rgb
from nbutils.data.importers import read_text_image_csv
from nbutils.data.validate import ValidationConfig, check_image, normalise_image, validate_images
from nbutils.errors import DataError

# The helpers below make files from the shared fixtures: `photo` is make_photo (64x48 gradients plus
# mild noise: realistic for JPEG, so round-trip errors stay small), `jpeg` is make_jpeg.
QUALITY = 92  # of the photo JPEGs written here


def _png_header_only(path, width, height):
    """A valid PNG signature + IHDR claiming width x height, with a tiny IDAT: a decompression bomb's header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
    return path


def _close(actual, reference, mean_tol=3.5, max_tol=24):
    """Equal within a JPEG q95 4:4:4 round trip of a noisy photo (~3 mean, under 24 everywhere).

    Every mistake this stage guards against is far off: clipped 16-bit (~120), alpha on black or a
    missed rotation (~100), CMYK read as RGB (~150).
    """
    actual, reference = np.asarray(actual, np.int16), np.asarray(reference, np.int16)
    assert actual.shape == reference.shape
    diff = np.abs(actual - reference)
    assert diff.mean() < mean_tol and diff.max() <= max_tol, (diff.mean(), diff.max())


# -----------------------------------------------------------------------------
# check_image: one exact reason per kind of bad file


def _truncated_jpeg(path, photo, jpeg):
    data = jpeg(path.with_name("whole.jpg"), quality=QUALITY).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_jpeg(path, photo, jpeg):
    # A stray start-of-image marker in the middle of the entropy-coded scan makes libjpeg fail.
    # (Random bytes in the scan usually decode to garbage silently: PIL cannot detect that.)
    data = bytearray(jpeg(path.with_name("whole.jpg"), quality=QUALITY).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2] = b"\xff\xd8"
    path.write_bytes(bytes(data))


def _truncated_png(path, photo, jpeg):
    Image.fromarray(photo(64, 48)).save(path.with_name("whole.png"))
    data = path.with_name("whole.png").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _jpeg_bad_header(path, photo, jpeg):
    data = bytearray(jpeg(path.with_name("whole.jpg"), quality=QUALITY).read_bytes())
    huffman = data.find(b"\xff\xc4")
    data[huffman + 5 : huffman + 40] = b"\xff" * 35  # PIL no longer recognises it at all
    path.write_bytes(bytes(data))


BAD_FILES = {  # case: (make(path, photo, jpeg), expected reason)
    "empty": (lambda p, photo, jpeg: p.write_bytes(b""), "empty file"),
    "html_as_jpg": (
        lambda p, photo, jpeg: p.write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>"),
        "not an image: HTML page",
    ),
    "json_error": (
        lambda p, photo, jpeg: p.write_text('{"error": "rate limited"}'),
        "not an image: JSON document",
    ),
    "plain_text": (lambda p, photo, jpeg: p.write_text("Access denied.\n"), "not an image: text"),
    "random_bytes": (
        lambda p, photo, jpeg: p.write_bytes(b"\0\x01" + np.random.default_rng(0).bytes(2000)),
        "not an image: unknown format",
    ),
    "tiny": (lambda p, photo, jpeg: Image.fromarray(photo(8, 8)).save(p, "PNG"), "too small: 8x8"),
    "thin": (
        lambda p, photo, jpeg: Image.fromarray(photo(400, 20)).save(p, "PNG"),
        "too small: 400x20",
    ),  # side first
    "banner": (
        lambda p, photo, jpeg: Image.fromarray(photo(700, 100)).save(p, "PNG"),
        "extreme aspect ratio: 700x100",
    ),
    "truncated_jpeg": (_truncated_jpeg, "truncated or corrupt: image file is truncated"),
    "corrupt_jpeg": (_corrupt_jpeg, "truncated or corrupt: broken data stream when reading image file"),
    "truncated_png": (_truncated_png, "truncated or corrupt: image file is truncated"),
    "jpeg_cut_in_header": (
        lambda p, photo, jpeg: p.write_bytes(
            jpeg(p.with_name("whole.jpg"), quality=QUALITY).read_bytes()[:100]
        ),
        "truncated or corrupt: Truncated File Read",
    ),
    "jpeg_bad_header": (_jpeg_bad_header, "truncated or corrupt: JPEG signature but unreadable header"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_rejected_with_exact_reason(tmp_path, case, make_photo, make_jpeg):
    make, expected = BAD_FILES[case]
    path = tmp_path / "image.jpg"
    make(path, make_photo, make_jpeg)
    check = check_image(path)
    assert not check.ok and not check.needs_normalising
    if expected.startswith("truncated or corrupt: image file is truncated"):
        assert check.reason.startswith(expected), check.reason  # "(N bytes not processed)" may follow
    else:
        assert check.reason == expected
    if case not in ("empty",):
        assert check.sha1 and check.file_bytes == path.stat().st_size


def test_missing_file_and_aspect_with_smaller_min_side(tmp_path, make_photo):
    assert check_image(tmp_path / "nope.jpg").reason == "missing file"
    Image.fromarray(make_photo(400, 20)).save(tmp_path / "thin.png")
    assert (
        check_image(tmp_path / "thin.png", ValidationConfig(min_side=16)).reason
        == "extreme aspect ratio: 400x20"
    )
    Image.fromarray(make_photo(120, 20)).save(tmp_path / "ok.png")  # aspect exactly 6: allowed
    assert check_image(tmp_path / "ok.png", ValidationConfig(min_side=16)).ok


def test_too_large_rejected_from_header_without_decoding(tmp_path, monkeypatch, make_jpeg):
    photo = make_jpeg(tmp_path / "photo.jpg", quality=QUALITY)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        # 3.6e9 pixels: PIL itself refuses to open it (DecompressionBombError); we still say W x H
        bomb = check_image(_png_header_only(tmp_path / "bomb.png", 60000, 60000))
        # 100M pixels: PIL only warns; 56M: PIL is silent, our 50M cap rejects it
        warned = check_image(_png_header_only(tmp_path / "warned.png", 10000, 10000))
        over_cap = check_image(_png_header_only(tmp_path / "over.png", 8000, 7000))
        small_cap = check_image(photo, ValidationConfig(max_pixels=64 * 48 - 1))
    assert bomb.reason == "too large: 60000x60000 pixels"
    assert warned.reason == "too large: 10000x10000 pixels"
    assert over_cap.reason == "too large: 8000x7000 pixels"
    assert small_cap.reason == "too large: 64x48 pixels"
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's own protection is back in place


def test_truncation_caught_even_when_pil_is_told_to_allow_it(tmp_path, monkeypatch, make_photo, make_jpeg):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _truncated_jpeg(tmp_path / "cut.jpg", make_photo, make_jpeg)
    assert check_image(tmp_path / "cut.jpg").reason.startswith(
        "truncated or corrupt: image file is truncated"
    )
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_plain_images_are_kept_as_they_are(tmp_path, make_photo, make_jpeg):
    rgb = check_image(make_jpeg(tmp_path / "rgb.jpg", quality=QUALITY))
    Image.fromarray(make_photo(64, 48)).save(tmp_path / "rgb.png")
    png = check_image(tmp_path / "rgb.png")
    assert (rgb.ok, rgb.mode, rgb.format, rgb.width, rgb.height) == (True, "RGB", "JPEG", 64, 48)
    assert png.ok and png.format == "PNG"
    assert not (rgb.needs_normalising or png.needs_normalising)


# -----------------------------------------------------------------------------
# Normalisation: output pixels == a reference built here, within JPEG tolerance


def _cmyk(folder, photo, jpeg):
    path = folder / "cmyk.jpg"
    Image.fromarray(photo(64, 48, 1)).convert("CMYK").save(path, quality=95)
    return path, np.asarray(Image.open(path).convert("RGB")), "mode CMYK"  # PIL's own CMYK -> RGB


def _sixteen_bit(folder, photo, jpeg):
    path = folder / "deep.png"
    values = np.tile(np.linspace(0, 65535, 64), (48, 1)).astype(np.uint16)
    values[::2] = 65535 - values[::2]
    Image.fromarray(values).save(path)
    # PIL's plain convert clips 16-bit values to white: the trap this stage exists for
    assert np.asarray(Image.open(path).convert("RGB")).mean() > 250
    return path, np.dstack([np.rint(values / 257).astype(np.uint8)] * 3), "mode I;16"


def _grey_jpeg(folder, photo, jpeg):
    path = folder / "grey.jpg"
    Image.fromarray(photo(64, 48, 12)[..., 0], "L").save(path, quality=QUALITY)
    stored = np.asarray(Image.open(path))
    return path, np.dstack([stored] * 3), "mode L"


def _thirty_two_bit(folder, photo, jpeg):
    path = folder / "deep.tif"
    values = np.tile(np.linspace(0, 2**31 - 1, 64), (48, 1)).astype(np.int32)  # beyond 16 bits: 32-bit data
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    return path, np.dstack([np.rint(values * (255 / (2**31 - 1))).astype(np.uint8)] * 3), "mode I"


def _float_grey(folder, photo, jpeg):
    path = folder / "float.tif"
    values = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))  # floats on the 0-1 scale
    Image.fromarray(values).save(path)
    assert np.asarray(Image.open(path).convert("L")).max() <= 1  # PIL's convert: black
    return path, np.dstack([np.rint(values * 255).astype(np.uint8)] * 3), "mode F"


def _palette_transparent(folder, photo, jpeg):
    path = folder / "palette.png"
    rng = np.random.default_rng(2)
    index = np.repeat(np.repeat(rng.integers(0, 16, (6, 8)), 8, axis=0), 8, axis=1).astype(np.uint8)
    colours = np.array([(i * 16, 255 - i * 16, (i * 40) % 256) for i in range(16)], np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(colours.flatten().tolist())
    image.save(path, transparency=0)
    reference = colours[index]
    reference[index == 0] = 255  # transparent -> white
    assert (index == 0).any()
    return path, reference, "mode P"


def _rgba(folder, photo, jpeg):
    path = folder / "alpha.png"
    rgb = photo(64, 48, 3)
    alpha = np.tile(np.linspace(0, 255, 64), (48, 1)).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    a = alpha[..., None] / 255
    return path, np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8), "mode RGBA"


def _gray_alpha(folder, photo, jpeg):
    path = folder / "la.png"
    gray = photo(64, 48, 4)[..., 0]
    alpha = np.where(np.arange(64) < 32, 0, 255).astype(np.uint8)[None].repeat(48, 0)
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)
    return path, np.dstack([np.where(alpha == 0, 255, gray)] * 3).astype(np.uint8), "mode LA"


def _exif_rotated(folder, photo, jpeg):
    path = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64x48; shown after a 90 degree clockwise turn: 48 wide, 64 high
    jpeg(path, seed=5, quality=QUALITY, exif=exif.tobytes())
    stored = np.asarray(Image.open(path).convert("RGB"))  # PIL does not rotate on open
    return path, np.rot90(stored, k=-1), "EXIF orientation 6"


def _webp(folder, photo, jpeg):
    path = folder / "photo.webp"
    rgb = photo(64, 48, 6)
    Image.fromarray(rgb).save(path, lossless=True)
    return path, rgb, "format WEBP"


def _gif(folder, photo, jpeg):
    path = folder / "photo.gif"
    Image.fromarray(photo(64, 48, 7)).save(path)
    return path, np.asarray(Image.open(path).convert("RGB")), "format GIF"


def _animated_gif(folder, photo, jpeg):
    path = folder / "animated.gif"
    frames = [Image.fromarray(photo(64, 48, s)).quantize(64) for s in (8, 9)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 2
    return path, np.asarray(Image.open(path).convert("RGB")), "animated 2"  # the first frame


def _bmp(folder, photo, jpeg):
    path = folder / "photo.bmp"
    rgb = photo(64, 48, 10)
    Image.fromarray(rgb).save(path)
    return path, rgb, "format BMP"


def _one_bit(folder, photo, jpeg):
    path = folder / "bits.png"
    bits = photo(64, 48, 11)[..., 0] > 128
    Image.fromarray(bits).save(path)
    return path, np.dstack([bits.astype(np.uint8) * 255] * 3), "mode 1"


NEEDS_NORMALISING = {
    f.__name__[1:]: f
    for f in (
        _cmyk,
        _grey_jpeg,
        _sixteen_bit,
        _thirty_two_bit,
        _float_grey,
        _palette_transparent,
        _rgba,
        _gray_alpha,
        _exif_rotated,
        _webp,
        _gif,
        _animated_gif,
        _bmp,
        _one_bit,
    )
}


@pytest.mark.parametrize("case", sorted(NEEDS_NORMALISING))
def test_normalised_output_matches_reference(tmp_path, case, make_photo, make_jpeg):
    path, reference, why = NEEDS_NORMALISING[case](tmp_path, make_photo, make_jpeg)
    check = check_image(path)
    assert check.ok and check.needs_normalising and why in check.normalise_reason.split("; "), check
    # the shared decode path (load_rgb) against the reference built here, before any JPEG loss
    rgb = load_rgb(path)
    assert np.abs(np.asarray(rgb, np.int16) - reference).max() <= 1  # alpha blending rounds either way
    out = normalise_image(path, tmp_path / "out" / "normalised.jpg")
    with Image.open(out) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert JpegImagePlugin.get_sampling(image) == 0  # 4:4:4: no chroma blur on small images
        assert image.getexif().get(0x0112) is None  # the rotation is in the pixels now
        _close(image, reference)
        # exactly load_rgb's pixels, encoded at quality 95, 4:4:4
        again = tmp_path / "again.jpg"
        rgb.save(again, quality=95, subsampling=0)
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(again)))
    assert check_image(out).ok and not check_image(out).needs_normalising
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["normalised.jpg"]  # no temporaries left


# -----------------------------------------------------------------------------
# validate_images on a whole table

CATEGORIES = {
    "placeholder": 7,
    "empty file": 1,
    "not an image": 1,
    "too small": 1,
    "truncated or corrupt": 1,
    "missing file": 1,
}


def _dataset(root, photo, jpeg):
    """A downloaded table with every situation. Returns (table, expected output path per input path)."""
    root.mkdir(parents=True, exist_ok=True)
    rows, expected = [], {}

    def add(name, captions, output=None, urls=None):
        path = str(root / name)
        for k in range(captions):
            url = urls[k] if urls else f"http://example.com/{name}"
            rows.append({"image_path": path, "text": f"{name} caption {k}", "url": url, "sha1": ""})
        expected[path] = output if output is None or output == "rejected" else str(output)

    for i in range(4):
        jpeg(root / f"good{i}.jpg", seed=i, quality=QUALITY)
        add(f"good{i}.jpg", 2, output=root / f"good{i}.jpg")
    Image.fromarray(photo(64, 48, 20)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    shutil.copy(root / "cmyk.jpg", root / "cmyk_copy.jpg")  # a duplicate of a normalised image
    add("cmyk.jpg", 1, output="NORMALISED/cmyk.jpg")
    add("cmyk_copy.jpg", 1, output="NORMALISED/cmyk.jpg")
    Image.fromarray(photo(64, 48, 23)[..., 0], "L").save(root / "grey.jpg", quality=QUALITY)
    add("grey.jpg", 1, output="NORMALISED/grey.jpg")
    (root / "x").mkdir()
    (root / "y").mkdir()
    Image.fromarray(np.dstack([photo(64, 48, 21), np.full((48, 64), 128, np.uint8)]), "RGBA").save(
        root / "x/pic.png"
    )
    Image.fromarray(photo(64, 48, 22)).save(root / "y/pic.gif")
    add("x/pic.png", 1, output="NORMALISED/pic.jpg")  # same stem: the second gets pic_1.jpg
    add("y/pic.gif", 1, output="NORMALISED/pic_1.jpg")
    for name in ("dup_b.jpg", "dup_a.jpg", "dup_c.jpg"):  # 3 copies: one image with three captions
        jpeg(root / name, seed=30, quality=QUALITY)
        add(name, 1, output=root / "dup_a.jpg")
    for i in range(6):  # 6 copies: a placeholder
        jpeg(root / f"ph_{i}.jpg", seed=40, quality=QUALITY)
        add(f"ph_{i}.jpg", 1, output="rejected")
    jpeg(root / "stored_once.jpg", seed=41, quality=QUALITY)  # one file behind 5 urls: also a placeholder
    add("stored_once.jpg", 5, output="rejected", urls=[f"http://cdn{k}.example.com/na.jpg" for k in range(5)])
    (root / "empty.jpg").write_bytes(b"")
    (root / "page.jpg").write_text("<html><head><title>Error</title></head></html>")
    Image.fromarray(photo(8, 8)).save(root / "tiny.png")
    _truncated_jpeg(root / "truncated.jpg", photo, jpeg)
    for name in ("empty.jpg", "page.jpg", "tiny.png", "truncated.jpg"):
        add(name, 1, output="rejected")
    add("missing.jpg", 2, output="rejected")
    return pd.DataFrame(rows), expected


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_photo, make_jpeg):
    return _dataset(tmp_path_factory.mktemp("downloads"), make_photo, make_jpeg)


def test_validate_images_end_to_end(dataset, tmp_path):
    table, expected = dataset
    result = validate_images(table, tmp_path / "out", ValidationConfig(num_workers=1), progress=False)
    normalised = str((tmp_path / "out" / "normalised").absolute())

    # clean: every row of a clean image, in input order, pointed at its final file
    target = {
        p: (o.replace("NORMALISED", normalised) if o != "rejected" else None) for p, o in expected.items()
    }
    keep = table["image_path"].map(target).notna()
    want = pd.DataFrame(
        {
            "image_path": table["image_path"][keep].map(target),
            "text": table["text"][keep],
            "url": table["url"][keep],
        }
    ).reset_index(drop=True)
    pd.testing.assert_frame_equal(result.clean, want)
    dup_a = str(next(p for p in expected if p.endswith("dup_a.jpg")))
    assert (result.clean["image_path"] == dup_a).sum() == 3  # one image, all three captions

    # rejects: one row per image, with its reason
    reasons = dict(
        zip(result.rejects["image_path"].map(lambda p: p.rsplit("/", 1)[1]), result.rejects["reason"])
    )
    assert reasons == {
        **{f"ph_{i}.jpg": "placeholder: same bytes behind 6 urls" for i in range(6)},
        "stored_once.jpg": "placeholder: same bytes behind 5 urls",
        "empty.jpg": "empty file",
        "page.jpg": "not an image: HTML page",
        "tiny.png": "too small: 8x8",
        "missing.jpg": "missing file",
        "truncated.jpg": reasons["truncated.jpg"],
    }
    assert reasons["truncated.jpg"].startswith("truncated or corrupt: image file is truncated")
    assert list(result.rejects.columns) == ["image_path", "url", "reason"]
    assert (
        result.rejects.set_index("image_path")["url"][str(next(p for p in expected if "stored_once" in p))]
        == "http://cdn0.example.com/na.jpg"
    )

    summary = result.summary
    assert {k: summary[k] for k in ("checked", "clean", "rejected", "duplicates", "normalised")} == {
        "checked": 24,
        "clean": 9,
        "rejected": 12,
        "duplicates": 3,
        "normalised": 4,
    }
    assert summary["rejected_by_reason"] == CATEGORIES
    assert (summary["rows_in"], summary["rows_clean"]) == (33, 16)
    assert summary["normalised_by_reason"] == {
        "format GIF": 1,
        "mode P": 1,
        "mode CMYK": 1,
        "mode RGBA": 1,
        "mode L": 1,
    }

    checks = result.checks.set_index("path")
    assert len(checks) == 24 and checks.index.is_unique
    assert checks["status"].value_counts().to_dict() == {"clean": 9, "duplicate": 3, "rejected": 12}
    assert checks.loc[str(next(p for p in expected if p.endswith("dup_c.jpg"))), "duplicate_of"] == dup_a
    assert (
        checks.loc[checks["normalised_path"] != "", "normalised_path"].str.startswith(normalised)
    ).sum() == 5

    # the files on disk say the same, and processdata_03 reads clean.csv back unchanged
    back = read_text_image_csv(tmp_path / "out" / "clean.csv")
    pd.testing.assert_frame_equal(back[["image_path", "text"]], want[["image_path", "text"]])
    assert len(pd.read_csv(tmp_path / "out" / "rejects.csv")) == 12
    assert len(pd.read_csv(tmp_path / "out" / "checks.csv")) == 24
    assert sorted(p.name for p in (tmp_path / "out" / "normalised").iterdir()) == [
        "cmyk.jpg",
        "grey.jpg",
        "pic.jpg",
        "pic_1.jpg",
    ]

    # no later stage may crash on a clean image
    for path in result.clean["image_path"].unique():
        rgb = load_rgb(path)
        assert rgb.mode == "RGB"
        for geometry in (
            ImageGeometry(32, 32),
            ImageGeometry(24, 24, resize="shortest_edge", shortest_edge=28),
        ):
            assert transform_uint8(rgb, geometry).shape == (geometry.height, geometry.width, 3)
    for path in (tmp_path / "out" / "normalised").iterdir():
        with Image.open(path) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")


def test_parallel_equals_serial_and_rerun_reuses_normalised(dataset, tmp_path):
    table, _ = dataset
    out = tmp_path / "out"
    serial = validate_images(table, out, ValidationConfig(num_workers=1), progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "normalised").iterdir()}
    parallel = validate_images(table, out, ValidationConfig(num_workers=2), progress=False)
    assert parallel.summary["num_workers"] == 2
    pd.testing.assert_frame_equal(serial.clean, parallel.clean)
    pd.testing.assert_frame_equal(serial.rejects, parallel.rejects)
    pd.testing.assert_frame_equal(serial.checks, parallel.checks)
    for key in ("checked", "clean", "rejected", "rejected_by_reason", "duplicates", "normalised"):
        assert serial.summary[key] == parallel.summary[key]
    # the second run found its normalised copies current and did not rewrite them
    assert (serial.summary["normalised_reused"], parallel.summary["normalised_reused"]) == (0, 4)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "normalised").iterdir()} == stamps


def test_changed_source_is_normalised_again(tmp_path, make_photo):
    source = tmp_path / "photo.webp"
    Image.fromarray(make_photo(64, 48, 1)).save(source, lossless=True)
    table = pd.DataFrame({"image_path": [str(source)], "text": ["a photo"]})
    first = validate_images(table, tmp_path / "out", progress=False)
    Image.fromarray(make_photo(64, 48, 2)).save(source, lossless=True)  # same name, new bytes
    second = validate_images(table, tmp_path / "out", progress=False)
    assert (first.summary["normalised_reused"], second.summary["normalised_reused"]) == (0, 0)
    assert list(first.clean.columns) == ["image_path", "text"]  # no url column in, none out
    _close(load_rgb(second.clean["image_path"][0]), make_photo(64, 48, 2))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="min_side"):
        ValidationConfig(min_side=0)
    with pytest.raises(ValueError, match="max_pixels"):
        ValidationConfig(max_pixels=10**12)  # later stages (PIL's own limit) would refuse such images
    with pytest.raises(ValueError, match="placeholder_min_urls"):
        ValidationConfig(placeholder_min_urls=1)
    with pytest.raises(DataError, match="'text'"):
        validate_images(pd.DataFrame({"image_path": ["a.jpg"]}), "unused")
    with pytest.raises(DataError, match="no rows"):
        validate_images(pd.DataFrame({"image_path": [], "text": []}), "unused")


def test_headline_says_what_happened_in_one_sentence():
    from nbutils.data import validate

    summary = {"checked": 2810, "clean": 2670, "rejected": 107, "duplicates": 33, "normalised": 87,
               "rejected_by_reason": {"placeholder": 53, "too large": 18, "too small": 18,
                                      "truncated or corrupt": 18}}  # fmt: skip
    assert validate.headline(summary) == (
        "2,670 of 2,810 images are valid (87 normalised to RGB); 107 rejected (placeholder 53, too large 18, "
        "too small 18, truncated or corrupt 18); 33 duplicates merged."
    )
    few = {"checked": 2810, "clean": 2790, "rejected": 20, "duplicates": 0, "normalised": 0,
           "rejected_by_reason": {"truncated or corrupt": 12, "not an image": 8}}  # fmt: skip
    assert validate.headline(few) == (
        "2,790 of 2,810 images are valid; 20 rejected (truncated or corrupt 12, not an image 8)."
    )
    assert validate.headline({**few, "clean": 2810, "rejected": 0, "rejected_by_reason": {}}) == (
        "All 2,810 images are valid."
    )


def test_a_csv_source_s_relative_image_paths_start_at_the_csv(tmp_path, make_jpeg, monkeypatch):
    from nbutils.data.validate import load_input

    folder = tmp_path / "my_photos"
    make_jpeg(folder / "images" / "a.jpg")
    (folder / "captions.csv").write_text("image_path,text\nimages/a.jpg,一只猫\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # the notebook runs elsewhere (notebooks/)
    table, _ = load_input(ValidationConfig(source=str(folder / "captions.csv")))
    assert table["image_path"].tolist() == [str(folder / "images" / "a.jpg")]
    result = validate_images(table, tmp_path / "out", ValidationConfig(num_workers=1), progress=False)
    assert result.summary["clean"] == 1


def test_nothing_usable_is_an_error_with_examples(tmp_path):
    table = pd.DataFrame({"image_path": [str(tmp_path / "gone.jpg")], "text": ["猫"]})
    with pytest.raises(
        DataError, match=r"no usable image: 0 of 1 images are valid.*For example .*gone.jpg: missing file"
    ):
        validate_images(table, tmp_path / "out", ValidationConfig(num_workers=1), progress=False)
    assert not (
        tmp_path / "out" / "clean.csv"
    ).exists()  # processdata_03 never reads a stage that found nothing
