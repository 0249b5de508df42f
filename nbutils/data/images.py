"""Decode an image file to plain 8-bit RGB, and tell image formats from their first bytes.

Every stage that reads pixels (validation, the image cache, thumbnails in reports) decodes through
`load_rgb`, so an image that passes processdata_02 decodes the same way everywhere after it. No torch
here: stages 01 and 02 import this module.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

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


def image_format(head: bytes) -> str | None:
    """The image format that the first bytes of a file announce ("JPEG", "WEBP", ...), or None."""
    for signature, name in IMAGE_SIGNATURES.items():
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB: EXIF rotation applied, transparency composited on white.

    Raises (OSError, PIL errors, ValueError) when the file cannot be decoded.
    """
    with Image.open(path) as image:
        image.load()  # only a full decode catches truncated files
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """The part of `load_rgb` after decoding: EXIF rotation, 16-bit rescale, alpha on white, RGB.

    `image` must be loaded. Shared with `nbutils.data.validate`, which decodes once and must accept exactly
    the images this function handles.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale: PIL's convert clips to 255 instead of rescaling.
        array = np.asarray(image, dtype=np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")
