"""The JPEG shard cache: webdataset layout, pixels close to the memmap's, the same Dataset items, reuse."""

import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import webdataset

from nbutils.data import shards as shard_cache
from nbutils.data.cache import ImageCache, ImageGeometry, build_image_cache, open_image_cache
from nbutils.data.datasets import ImageTextDataset
from nbutils.data.shards import ShardCache, build_shard_cache, bytes_per_image
from nbutils.errors import DataError
from nbutils.files import read_json

# Measured at the default quality (94) on the photos below at 224 px: MAE ~1.0 uint8 levels, PSNR ~44.8 dB.
# benchmarks/bench_shards.py's noisier 640x480 photos give ~1.9 and ~40 dB.
MAX_MAE_224 = 1.5
MIN_PSNR_224 = 42.0
SIZES = [(200, 150), (150, 200), (320, 240), (96, 96), (240, 180), (180, 240), (400, 300), (64, 48)]


def _captions(paths) -> dict:
    return {p: [f"第{i}张图 caption {j}" for j in range(1 + i % 3)] for i, p in enumerate(paths)}


def _table(captions: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [(p, t) for p, texts in captions.items() for t in texts], columns=["image_path", "text"]
    )


def _agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(mean absolute error in uint8 levels, PSNR in dB)."""
    difference = reference.astype(np.float64) - other.astype(np.float64)
    return float(np.abs(difference).mean()), float(10 * np.log10(255.0**2 / np.mean(difference**2)))


@pytest.fixture(scope="module")
def photos(tmp_path_factory, make_jpeg):
    """Photo-like JPEGs of several sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("photos")
    return [str(make_jpeg(folder / f"{i}.jpg", w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def caches_224(photos, tmp_path_factory):
    """(memmap, shard cache with shard_size 3) of `photos` at 224 px (read-only)."""
    folder = tmp_path_factory.mktemp("caches")
    geometry = ImageGeometry(224, 224)
    memmap = build_image_cache(photos, folder / "memmap", geometry, num_workers=0, progress=False)
    shards = build_shard_cache(
        photos, folder / "shards", geometry, _captions(photos), shard_size=3, num_workers=2, progress=False
    )
    return memmap, shards


# -----------------------------------------------------------------------------
# Layout


def test_shards_are_webdataset_tars_with_each_images_captions(images, tmp_path):
    good, corrupt, _ = images
    captions = _captions(good)
    geometry = ImageGeometry(16, 20)
    cache = build_shard_cache(
        good + corrupt, tmp_path / "cache", geometry, captions, shard_size=4, num_workers=2, progress=False
    )
    assert isinstance(cache, ShardCache) and cache.paths == good
    assert cache.failed["image_path"].tolist() == corrupt
    meta = read_json(tmp_path / "cache" / "meta.json")
    assert (meta["format"], meta["count"], meta["failed"], meta["quality"]) == ("shards", len(good), 2, 94)
    assert meta["shards"] == [f"shard-{i:06d}.tar" for i in range((len(good) + 3) // 4)]
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # no temporary left

    # webdataset itself reads the shards: keys in row order, the json names the image and its captions
    urls = [str(tmp_path / "cache" / name) for name in meta["shards"]]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == [f"{row:09d}" for row in range(len(good))]
    assert [s["json"]["image_path"] for s in samples] == good
    assert [s["json"]["captions"] for s in samples] == [captions[p] for p in good]
    for row, sample in enumerate(samples):
        assert sample["jpg"].shape == (16, 20, 3)
        assert np.array_equal(sample["jpg"], cache.uint8(row))  # the index points at the same bytes
    assert (tmp_path / "cache" / meta["shards"][0]).read_bytes()[:9] == b"000000000"  # first member's name


def test_open_image_cache_opens_either_format_and_each_class_refuses_the_other(caches_224):
    memmap, shards = caches_224
    assert type(open_image_cache(memmap.cache_dir)) is ImageCache
    assert type(open_image_cache(shards.cache_dir)) is ShardCache
    assert (memmap.cache_format, shards.cache_format) == ("memmap-uint8", "shards-jpeg")
    with pytest.raises(DataError, match="open_image_cache"):
        ShardCache(memmap.cache_dir)
    with pytest.raises(DataError, match="open_image_cache"):
        ImageCache(shards.cache_dir)
    with pytest.raises(DataError, match="meta.json: missing"):
        open_image_cache(memmap.cache_dir.parent)


# -----------------------------------------------------------------------------
# Pixels and items


def test_pixels_are_within_jpeg_error_of_the_memmap(caches_224):
    memmap, shards = caches_224
    assert shards.paths == memmap.paths and shards.geometry == memmap.geometry
    rows = np.arange(len(memmap))
    got = shards.uint8(rows)
    assert got.shape == memmap.uint8(rows).shape and got.dtype == np.uint8
    mae, psnr = _agreement(memmap.uint8(rows), got)
    assert mae < MAX_MAE_224 and psnr > MIN_PSNR_224, (mae, psnr)
    assert np.array_equal(shards.uint8(2), got[2]) and np.array_equal(shards.uint8(-1), got[-1])
    # pixel_values normalises the decoded pixels like the memmap's own
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    expected = (got.transpose(0, 3, 1, 2) / 255 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    assert np.abs(shards.pixel_values(rows, mean, std) - expected).max() < 1e-5
    assert shards.pixel_values(1, mean, std).shape == (3, 224, 224)
    with pytest.raises(IndexError):
        shards.uint8(len(shards))


def test_bytes_per_image_at_224_px(caches_224):
    memmap, shards = caches_224
    memmap_bytes, shard_bytes = bytes_per_image(memmap), bytes_per_image(shards)
    print(
        f"bytes per image at 224 px: memmap {memmap_bytes:,.0f}, shards {shard_bytes:,.0f} "
        f"({memmap_bytes / shard_bytes:.1f}x smaller)"
    )
    assert memmap_bytes > 224 * 224 * 3
    # These smooth photos compress far better than 1/5; each 3-image shard carries a 10 KB tar end record.
    assert shard_bytes < memmap_bytes / 5


@pytest.mark.parametrize("sampling", ["image", "caption"])
def test_dataset_items_equal_the_memmaps_but_for_jpeg_error(caches_224, photos, sampling):
    memmap, shards = caches_224
    table = _table(_captions(photos))
    on_memmap = ImageTextDataset(memmap, table, sampling=sampling, seed=3)
    on_shards = ImageTextDataset(shards.cache_dir, table, sampling=sampling, seed=3)  # a folder opens too
    assert isinstance(on_shards.cache, ShardCache)
    assert (on_shards.image_paths, on_shards.captions) == (on_memmap.image_paths, on_memmap.captions)
    assert len(on_shards) == len(on_memmap)
    for epoch in (0, 1):
        on_memmap.set_epoch(epoch)
        on_shards.set_epoch(epoch)
        for k in range(len(on_memmap)):
            a, b = on_memmap[k], on_shards[k]
            assert (a["text"], a["image_index"]) == (b["text"], b["image_index"])
            assert b["pixel_values"].dtype == torch.uint8 and b["pixel_values"].shape == (3, 224, 224)
            mae, _ = _agreement(a["pixel_values"].numpy(), b["pixel_values"].numpy())
            assert mae < MAX_MAE_224 * 1.5  # one image; the bound above is over all


def test_dataloader_workers_decode_the_same_batches(caches_224, photos):
    _, shards = caches_224
    shards.uint8(0)  # opens a shard file in this process: it must not travel to the workers
    assert shards._files and len(pickle.dumps(shards)) < 10_000
    clone = pickle.loads(pickle.dumps(shards))
    assert clone._files == {} and np.array_equal(clone.uint8([1, 0]), shards.uint8([1, 0]))

    dataset = ImageTextDataset(shards, _table(_captions(photos)), fixed_caption=True)
    loader = lambda workers: torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers)  # noqa: E731
    serial, parallel = list(loader(0)), list(loader(2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["text"] == b["text"]
    assert torch.cat([b["image_index"] for b in parallel]).tolist() == list(range(len(photos)))


# -----------------------------------------------------------------------------
# Reuse and interruption


def _stamp(cache_dir):
    return {name: os.stat(cache_dir / name).st_mtime_ns for name in os.listdir(cache_dir)}


def test_a_complete_cache_is_reused_until_its_inputs_change(photos, tmp_path):
    cache_dir, geometry = tmp_path / "cache", ImageGeometry(32, 32)
    captions = _captions(photos)
    first = build_shard_cache(
        photos, cache_dir, geometry, captions, shard_size=4, num_workers=0, progress=False
    )
    before = _stamp(cache_dir)
    again = build_shard_cache(
        list(reversed(photos)) + photos,
        cache_dir,
        geometry,
        captions,
        shard_size=4,
        num_workers=0,
        progress=False,
    )
    assert _stamp(cache_dir) == before and again.paths == first.paths

    for change in ({"quality": 80}, {"shard_size": 5}, {"captions": {**captions, photos[0]: ["另一个"]}}):
        arguments = {"captions": captions, "shard_size": 4, **change}
        rebuilt = build_shard_cache(photos, cache_dir, geometry, num_workers=0, progress=False, **arguments)
        assert _stamp(cache_dir) != before, change
        before = _stamp(cache_dir)
        assert rebuilt.meta["quality"] == arguments.get("quality", 94)


def test_an_interrupted_build_is_never_taken_as_complete(photos, tmp_path, monkeypatch):
    cache_dir, geometry = tmp_path / "caches" / "cache", ImageGeometry(16, 16)
    added = []
    original_add = shard_cache._ShardWriter.add

    def failing_add(self, path, jpeg, captions):
        added.append(path)
        if len(added) == 5:
            raise RuntimeError("disk full")
        original_add(self, path, jpeg, captions)

    monkeypatch.setattr(shard_cache._ShardWriter, "add", failing_add)
    with pytest.raises(RuntimeError, match="disk full"):
        build_shard_cache(photos, cache_dir, geometry, shard_size=2, num_workers=0, progress=False)
    assert os.listdir(tmp_path / "caches") == []  # the temporary folder is gone, nothing was renamed
    monkeypatch.undo()

    # A folder a killed process left without meta.json, or with a cut-off shard, is rebuilt.
    complete = build_shard_cache(photos, cache_dir, geometry, shard_size=2, num_workers=0, progress=False)
    expected = complete.uint8(np.arange(len(photos)))
    shard = cache_dir / complete.shards[-1]
    shard.write_bytes(shard.read_bytes()[:600])
    with pytest.raises(DataError, match="shorter than its index"):
        ShardCache(cache_dir)
    rebuilt = build_shard_cache(photos, cache_dir, geometry, shard_size=2, num_workers=0, progress=False)
    assert np.array_equal(rebuilt.uint8(np.arange(len(photos))), expected)
    (cache_dir / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json: missing"):
        open_image_cache(cache_dir)
    rebuilt = build_shard_cache(photos, cache_dir, geometry, shard_size=2, num_workers=0, progress=False)
    assert (cache_dir / "meta.json").is_file() and len(rebuilt) == len(photos)
    shutil.rmtree(cache_dir)
