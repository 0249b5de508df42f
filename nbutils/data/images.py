"""Decode an image file to plain 8-bit RGB, and tell image formats from their first bytes.

Every stage that reads pixels (validation, the image cache, thumbnails in reports) decodes through
`load_rgb`, so an image that passes processdata_02 decodes the same way everywhere after it. No torch
here: stages 01 and 02 import this module.

An image path is a file, or the pseudo path of an image stored inside another file: a row of a Hugging Face
dataset file, `<file>.arrow::<column>[<row>]` (`nbutils.data.hf_datasets`), or a member of a tar file,
`<file>.tar::<member name>` (`nbutils.data.tar_members`). `load_rgb`, `read_image_bytes`, `image_exists` and
`image_file` take all three.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import hf_datasets, tar_members

# The kinds of pseudo path. Each module offers is_embedded, parse_embedded (None for other paths, else a tuple whose
# first item is the file holding the image), embedded_bytes and embedded_exists.
EMBEDDED_KINDS = (hf_datasets, tar_members)

# First bytes of the formats PIL reads (WEBP is "RIFF" + size + "WEBP", see `image_format`).
IMAGE_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
SIGNATURE_BYTES = 12  # enough for every signature above and RIFF....WEBP

# The full-scale values a greyscale image deeper than 8 bits is read against, smallest first. The mode does not say
# which applies: "I" holds 16-bit PNGs (older Pillow) and 32-bit TIFFs, "F" floats scaled 0-1 or in integer units.
FULL_SCALE = {"I;16": (65535,), "I": (65535, 2**31 - 1), "F": (1.0, 255.0, 65535.0, 2**31 - 1)}


def image_format(head: bytes) -> str | None:
    """The image format that the first bytes of a file announce ("JPEG", "WEBP", ...), or None."""
    for signature, name in IMAGE_SIGNATURES.items():
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def embedded_kind(path):
    """The module (of EMBEDDED_KINDS) whose pseudo path `path` is, or None for a file path or a file object."""
    return next((kind for kind in EMBEDDED_KINDS if kind.is_embedded(path)), None)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The encoded bytes of an image: a file's contents, or an embedded image's from its dataset row or tar member."""
    kind = embedded_kind(path)
    return kind.embedded_bytes(path) if kind else Path(path).read_bytes()


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB: EXIF rotation applied, transparency composited on white.

    `path` is a file, a file object, or an embedded image's pseudo path (decoded from the bytes it names).
    Raises (OSError, PIL errors, ValueError, IndexError) when the image cannot be read or decoded.
    """
    if embedded_kind(path):
        path = io.BytesIO(read_image_bytes(path))
    with Image.open(path) as image:
        image.load()  # only a full decode catches truncated files
        return to_rgb(image)


def image_exists(path: str | os.PathLike) -> bool:
    """True when `path` is a file, or a pseudo path whose dataset file has its row or whose tar has its member."""
    kind = embedded_kind(path)
    return kind.embedded_exists(path) if kind else os.path.isfile(path)


def image_file(path: str | os.PathLike) -> str:
    """The file holding an image's bytes: the dataset or tar file of a pseudo path, else `path` itself (for stat)."""
    kind = embedded_kind(path)
    return kind.parse_embedded(path)[0] if kind else os.fspath(path)


def to_rgb(image: Image.Image) -> Image.Image:
    """The part of `load_rgb` after decoding: EXIF rotation, deep greyscale to 8 bits, alpha on white, RGB.

    `image` must be loaded. Shared with `nbutils.data.validate`, which decodes once and must accept exactly
    the images this function handles.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        image = grey_to_8_bits(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def grey_to_8_bits(image: Image.Image) -> Image.Image:
    """An "I;16*", "I" or "F" greyscale image as 8-bit "L", rescaled from the smallest of its mode's
    `FULL_SCALE` values that holds every pixel (PIL's own convert clips at 255 instead: a 16-bit photo turns
    white). Negative values become 0."""
    array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    kind = "F" if image.mode == "F" else "I;16" if image.mode.startswith("I;16") else "I"
    scales = FULL_SCALE[kind]
    top = next((scale for scale in scales if array.max(initial=0.0) <= scale), scales[-1])
    return Image.fromarray(np.clip(np.rint(array * (255 / top)), 0, 255).astype(np.uint8), "L")
