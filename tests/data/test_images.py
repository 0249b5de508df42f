"""Decoding to plain RGB (load_rgb / to_rgb), and telling formats from their first bytes."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from nbutils.data.images import (
    IMAGE_SIGNATURES,
    SIGNATURE_BYTES,
    image_exists,
    image_file,
    image_format,
    load_rgb,
    to_rgb,
)


def test_load_rgb_handles_modes_and_exif(images, make_photo):
    good, corrupt, rgb = images
    by_name = {os.path.basename(p): im for p, im in zip(good, rgb)}
    assert all(im.mode == "RGB" for im in rgb)
    assert by_name["rotated.jpg"].size == (24, 40)  # EXIF orientation applied
    alpha = np.asarray(by_name["alpha.png"])
    assert (alpha[:, 0] == 255).all()  # alpha 0 column composited on white
    original = make_photo(40, 36, 4, noise=25)  # the colour channels of alpha.png
    assert np.abs(alpha[:, -1].astype(int) - original[:, -1]).max() <= 1  # opaque column kept
    transparent = np.asarray(Image.open(next(p for p in good if p.endswith("palette.png")))) == 0
    assert (np.asarray(by_name["palette_transparent.png"])[transparent] == 255).all()
    assert not (np.asarray(by_name["palette.png"])[transparent] == 255).all()
    for path in corrupt:
        with pytest.raises(Exception):  # noqa: B017  (PIL raises several types)
            load_rgb(path)


def test_load_rgb_rescales_16_bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert np.asarray(load_rgb(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 100, 255]


def test_to_rgb_is_load_rgb_after_decoding(images):
    """Validation decodes once and calls to_rgb: it must give exactly load_rgb's pixels."""
    good, _, rgb = images
    for path, expected in zip(good, rgb):
        with Image.open(path) as image:
            image.load()
            converted = to_rgb(image)
        assert converted.mode == "RGB" and converted.size == expected.size, path
        assert np.array_equal(np.asarray(converted), np.asarray(expected)), path


@pytest.mark.parametrize(
    "fmt, save",
    [
        ("JPEG", {}),
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_image_format_names_what_pil_reads(make_photo, fmt, save):
    buf = io.BytesIO()
    Image.fromarray(make_photo(16, 12)).save(buf, fmt, **save)
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == fmt
    assert image_format(data[:SIGNATURE_BYTES]) == fmt


def test_image_format_signatures_and_non_images():
    assert all(len(signature) <= SIGNATURE_BYTES for signature in IMAGE_SIGNATURES)
    assert image_format(b"MM\x00*" + bytes(8)) == "TIFF"  # big-endian TIFF (PIL writes little-endian)
    assert image_format(b"GIF87a" + bytes(6)) == "GIF"
    wave = b"RIFF\x00\x00\x00\x00WAVEfmt "  # RIFF, but not WEBP
    for head in (b"", b"<!DOCTYPE html>", b'{"error": 1}', wave, b"\xff\xd8", b"RIFF"):
        assert image_format(head) is None, head


def test_image_exists_and_image_file_of_a_plain_file(tmp_path):
    """Plain paths: a file exists, a folder or a missing path does not; image_file is the path itself.
    (Pseudo paths of images inside dataset files: tests/data/test_hf_datasets.py.)"""
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert image_exists(tmp_path / "a.png") and image_file(tmp_path / "a.png") == str(tmp_path / "a.png")
    assert not image_exists(tmp_path) and not image_exists(tmp_path / "b.png")
    assert not image_exists(f"{tmp_path}/a.png::image[0]")  # "::" alone makes no pseudo path
