"""Fixtures of the decoding, cache and dataset tests: a set of awkward image files, and a cache of them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nbutils.data.cache import ImageGeometry, build_image_cache
from nbutils.data.images import load_rgb

NOISE = 25  # strong noise: resampling filters have something to get wrong


@pytest.fixture(scope="session")
def make_varied_images(make_photo):
    """`make_varied_images(folder) -> (decodable paths, corrupt paths)`: small inputs of every awkward kind.

    Photos are `make_photo(w, h, seed, noise=25)`; a test can rebuild any of them from its size and seed.
    """

    def make(folder):
        folder.mkdir(parents=True, exist_ok=True)
        good = {}

        def path(name):
            good[name] = str(folder / name)
            return good[name]

        def photo(width, height, seed):
            return make_photo(width, height, seed, noise=NOISE)

        Image.fromarray(photo(50, 30, 0)).save(path("landscape.jpg"), quality=92)
        Image.fromarray(photo(23, 47, 1)).save(path("portrait.png"))
        Image.fromarray(photo(64, 64, 2)).save(path("square.png"))
        Image.fromarray(photo(7, 5, 3)).save(path("tiny.png"))  # upscaled by every geometry
        Image.fromarray(photo(200, 150, 8)).save(path("large.jpg"), quality=90)  # strong downscale

        rgba = np.dstack([photo(40, 36, 4), np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (36, 1))])
        Image.fromarray(rgba, "RGBA").save(path("alpha.png"))

        palette = Image.fromarray((photo(31, 19, 5)[..., 0] // 16).astype(np.uint8), "P")
        palette.putpalette([v for i in range(16) for v in (i * 16, 255 - i * 16, (i * 40) % 256)])
        palette.save(path("palette_transparent.png"), transparency=0)
        palette.save(path("palette.png"))

        Image.fromarray(photo(17, 29, 6)[..., 1], "L").save(path("gray.png"))

        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to display": stored 40x24, shown 24x40
        Image.fromarray(photo(40, 24, 7)).save(path("rotated.jpg"), quality=95, exif=exif.tobytes())

        corrupt = folder / "corrupt.jpg"
        data = (folder / "landscape.jpg").read_bytes()
        corrupt.write_bytes(data[: len(data) // 2])  # truncated: only a full decode notices
        not_an_image = folder / "error_page.jpg"
        not_an_image.write_text("<html>404 Not Found</html>")
        return list(good.values()), [str(corrupt), str(not_an_image)]

    return make


@pytest.fixture(scope="session")
def images(make_varied_images, tmp_path_factory):
    """(decodable paths, corrupt paths, load_rgb of each decodable one), shared read-only."""
    good, corrupt = make_varied_images(tmp_path_factory.mktemp("images"))
    return good, corrupt, [load_rgb(p) for p in good]


@pytest.fixture(scope="session")
def small_cache(images, tmp_path_factory):
    """A 16x20 cache of the decodable images, in their order (read-only)."""
    good, _, _ = images
    folder = tmp_path_factory.mktemp("c")
    return build_image_cache(good, folder / "cache", ImageGeometry(16, 20), 0, progress=False)
