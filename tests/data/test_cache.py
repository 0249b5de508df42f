"""The packed image cache must give exactly what transformers' PIL image processors give.

We compare against the *Pil classes explicitly: plain `ViTImageProcessor` is the torchvision backend
when torchvision is installed (and only falls back to PIL without it), and the cache replays PIL.
"""

import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import ChineseCLIPImageProcessorPil, CLIPImageProcessorPil, ViTImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from nbutils.data import cache as image_cache
from nbutils.data.cache import (
    ImageCache,
    ImageGeometry,
    build_image_cache,
    processor_mean_std,
    transform_uint8,
)
from nbutils.data.datasets import normalize_pixel_values
from nbutils.data.images import load_rgb
from nbutils.files import read_json

# -----------------------------------------------------------------------------
# Equality with transformers' processors

PROCESSORS = {
    "vit_32": lambda: ViTImageProcessorPil(size={"height": 32, "width": 32}),
    "vit_24x40_imagenet": lambda: ViTImageProcessorPil(
        size={"height": 24, "width": 40}, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD
    ),
    "clip_36_crop_32": lambda: CLIPImageProcessorPil(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ),
    "clip_28_crop_32_padded": lambda: CLIPImageProcessorPil(
        size={"shortest_edge": 28},
        crop_size={"height": 31, "width": 29},  # odd padding
    ),
    "chinese_clip_30_crop_24x30": lambda: ChineseCLIPImageProcessorPil(
        size={"shortest_edge": 30}, crop_size={"height": 24, "width": 30}
    ),
    "chinese_clip_hub_style_28": lambda: ChineseCLIPImageProcessorPil(
        size={"height": 28, "width": 28}, do_center_crop=False
    ),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_pixel_values_equal_processor(images, tmp_path, name):
    good, corrupt, rgb = images
    processor = PROCESSORS[name]()
    geometry = ImageGeometry.from_processor(processor)
    mean, std = processor_mean_std(processor)
    expected = processor(rgb, return_tensors="np").pixel_values

    cache = build_image_cache(good + corrupt, tmp_path / "cache", geometry, num_workers=2, progress=False)
    assert cache.paths == good
    assert expected.shape == (len(good), 3, geometry.height, geometry.width)
    got = cache.pixel_values(np.arange(len(cache)), mean, std)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5
    # single index, and the GPU-side normaliser on uint8
    assert np.abs(cache.pixel_values(3, mean, std) - expected[3]).max() < 1e-5
    uint8 = torch.from_numpy(cache.uint8(np.arange(len(cache)))).permute(0, 3, 1, 2)
    assert np.abs(normalize_pixel_values(uint8, mean, std).numpy() - expected).max() < 1e-5
    # the stored rows are transform_uint8 itself
    assert np.array_equal(cache.uint8(0), transform_uint8(rgb[0], geometry))


def test_geometry_from_processor():
    clip = CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 30})
    assert ImageGeometry.from_processor(clip) == ImageGeometry(32, 30, "shortest_edge", 36, "bicubic")
    vit = ImageGeometry.from_processor(ViTImageProcessorPil(size=224))
    assert vit == ImageGeometry(224, 224, "exact", None, "bilinear")
    assert ImageGeometry.from_dict(vit.to_dict()) == vit
    assert processor_mean_std(ViTImageProcessorPil()) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="center crop"):
        ImageGeometry.from_processor(CLIPImageProcessorPil(do_center_crop=False))
    with pytest.raises(ValueError, match="rescale"):
        processor_mean_std(ViTImageProcessorPil(do_rescale=False))
    with pytest.raises(ValueError, match="shortest_edge"):
        ImageGeometry(32, 32, "shortest_edge")


# -----------------------------------------------------------------------------
# Rebuild, failures, interruption


def _stamp(cache_dir):
    return {
        name: (os.stat(cache_dir / name).st_ino, os.stat(cache_dir / name).st_mtime_ns)
        for name in ("meta.json", "images.u8")
    }


def test_rebuild_only_when_inputs_or_geometry_change(tmp_path, make_varied_images, make_photo):
    good, corrupt = make_varied_images(tmp_path / "images")
    cache_dir = tmp_path / "cache"
    geometry = ImageGeometry(16, 16)
    first = build_image_cache(good, cache_dir, geometry, num_workers=0, progress=False)
    before, first_row = _stamp(cache_dir), first.uint8(0)

    again = build_image_cache(list(reversed(good)) + good, cache_dir, geometry, num_workers=0, progress=False)
    assert _stamp(cache_dir) == before and again.paths == first.paths

    Image.fromarray(make_photo(50, 30, 99, noise=25)).save(good[0], quality=92)  # same path, new content
    changed = build_image_cache(good, cache_dir, geometry, num_workers=0, progress=False)
    assert _stamp(cache_dir) != before
    assert not np.array_equal(changed.uint8(0), first_row)
    assert np.array_equal(changed.uint8(0), transform_uint8(load_rgb(good[0]), geometry))

    resized = build_image_cache(good, cache_dir, ImageGeometry(8, 12), num_workers=0, progress=False)
    assert resized.uint8(np.arange(len(good))).shape == (len(good), 8, 12, 3)
    assert os.path.getsize(cache_dir / "images.u8") == len(good) * 8 * 12 * 3


def test_failed_images_are_listed_not_fatal(tmp_path, make_varied_images):
    good, corrupt = make_varied_images(tmp_path / "images")
    missing = str(tmp_path / "images" / "missing.jpg")
    cache = build_image_cache(
        good + corrupt + [missing], tmp_path / "cache", ImageGeometry(8, 8), progress=False
    )
    assert len(cache) == len(good) and cache.paths == good
    failed = pd.read_csv(tmp_path / "cache" / "failed.csv")
    assert failed["image_path"].tolist() == corrupt + [missing]
    assert failed["reason"].str.len().min() > 0
    assert "truncated" in failed["reason"][0]
    assert cache.failed.equals(failed)
    meta = read_json(tmp_path / "cache" / "meta.json")
    assert meta["count"] == len(good) and meta["geometry"] == ImageGeometry(8, 8).to_dict()
    index = pd.read_csv(tmp_path / "cache" / "index.csv")
    assert index["image_path"].tolist() == good and index["row"].tolist() == list(range(len(good)))


def test_interrupted_build_leaves_nothing_trusted(tmp_path, monkeypatch, make_varied_images):
    good, _ = make_varied_images(tmp_path / "images")
    cache_dir = tmp_path / "caches" / "cache"
    calls = []

    decode = image_cache.decode_chunk

    def failing_decode(paths, geometry):  # the second chunk fails after the first was written
        calls.append(paths)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return decode(paths, geometry)

    monkeypatch.setattr(image_cache, "CHUNK_SIZE", 2)
    monkeypatch.setattr(image_cache, "decode_chunk", failing_decode)
    with pytest.raises(RuntimeError, match="disk full"):
        build_image_cache(good, cache_dir, ImageGeometry(8, 8), num_workers=0, progress=False)
    assert os.listdir(tmp_path / "caches") == []

    # An interrupted rebuild keeps the previous, complete cache.
    monkeypatch.undo()
    build_image_cache(good[:3], cache_dir, ImageGeometry(8, 8), num_workers=0, progress=False)
    before = _stamp(cache_dir)
    monkeypatch.setattr(image_cache, "CHUNK_SIZE", 2)
    monkeypatch.setattr(image_cache, "decode_chunk", failing_decode)
    calls.clear()
    with pytest.raises(RuntimeError):
        build_image_cache(good, cache_dir, ImageGeometry(8, 8), num_workers=0, progress=False)
    assert os.listdir(tmp_path / "caches") == ["cache"]
    assert _stamp(cache_dir) == before and ImageCache(cache_dir).paths == good[:3]


# -----------------------------------------------------------------------------
# Reading: index, pickling


def test_index_of_and_pickling(small_cache):
    cache = ImageCache.open(small_cache.cache_dir)
    assert cache.index_of(cache.paths[2]) == 2
    assert cache.index_of(cache.paths[::-1]).tolist() == list(range(len(cache)))[::-1]
    with pytest.raises(KeyError, match="nowhere.jpg"):
        cache.index_of([cache.paths[0], "nowhere.jpg"])
    cache.uint8(0)  # opens the memmap
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._images is None and len(pickle.dumps(cache)) < 10_000
    assert np.array_equal(clone.uint8([1, 0]), cache.uint8([1, 0]))
