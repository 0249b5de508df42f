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
from transformers import (
    ChineseCLIPImageProcessorPil,
    CLIPImageProcessorPil,
    PreTrainedTokenizerFast,
    ViTImageProcessorPil,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from nbutils import image_cache
from nbutils.image_cache import (
    CachedImageTextDataset,
    ImageCache,
    ImageGeometry,
    ImageTextCollator,
    build_image_cache,
    load_rgb,
    normalize_pixel_values,
    processor_mean_std,
    transform_uint8,
)
from nbutils.io import DataError


def _photo(width, height, seed):
    """Gradient plus noise, so resampling filters have something to get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x * 7 + y * 3) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def make_images(folder):
    """Small varied inputs. Returns (decodable paths, corrupt paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = {}

    def path(name):
        good[name] = str(folder / name)
        return good[name]

    Image.fromarray(_photo(50, 30, 0)).save(path("landscape.jpg"), quality=92)
    Image.fromarray(_photo(23, 47, 1)).save(path("portrait.png"))
    Image.fromarray(_photo(64, 64, 2)).save(path("square.png"))
    Image.fromarray(_photo(7, 5, 3)).save(path("tiny.png"))  # upscaled by every geometry
    Image.fromarray(_photo(200, 150, 8)).save(path("large.jpg"), quality=90)  # strong downscale

    rgba = np.dstack([_photo(40, 36, 4), np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (36, 1))])
    Image.fromarray(rgba, "RGBA").save(path("alpha.png"))

    palette = Image.fromarray((_photo(31, 19, 5)[..., 0] // 16).astype(np.uint8), "P")
    palette.putpalette([v for i in range(16) for v in (i * 16, 255 - i * 16, (i * 40) % 256)])
    palette.save(path("palette_transparent.png"), transparency=0)
    palette.save(path("palette.png"))

    Image.fromarray(_photo(17, 29, 6)[..., 1], "L").save(path("gray.png"))

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 40x24, shown 24x40
    Image.fromarray(_photo(40, 24, 7)).save(path("rotated.jpg"), quality=95, exif=exif.tobytes())

    corrupt = folder / "corrupt.jpg"
    data = (folder / "landscape.jpg").read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # truncated: only a full decode notices
    not_an_image = folder / "error_page.jpg"
    not_an_image.write_text("<html>404 Not Found</html>")
    return list(good.values()), [str(corrupt), str(not_an_image)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    good, corrupt = make_images(folder)
    return good, corrupt, [load_rgb(p) for p in good]


# -----------------------------------------------------------------------------
# Decoding


def test_load_rgb_handles_modes_and_exif(images):
    good, corrupt, rgb = images
    by_name = {os.path.basename(p): im for p, im in zip(good, rgb)}
    assert all(im.mode == "RGB" for im in rgb)
    assert by_name["rotated.jpg"].size == (24, 40)  # EXIF orientation applied
    alpha = np.asarray(by_name["alpha.png"])
    assert (alpha[:, 0] == 255).all()  # alpha 0 column composited on white
    original = _photo(40, 36, 4)
    assert np.abs(alpha[:, -1].astype(int) - original[:, -1]).max() <= 1  # opaque column kept
    transparent = np.asarray(Image.open(next(p for p in good if p.endswith("palette.png")))) == 0
    assert (np.asarray(by_name["palette_transparent.png"])[transparent] == 255).all()
    assert not (np.asarray(by_name["palette.png"])[transparent] == 255).all()
    for path in corrupt:
        with pytest.raises(Exception):
            load_rgb(path)


def test_load_rgb_rescales_16_bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert np.asarray(load_rgb(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 100, 255]


# -----------------------------------------------------------------------------
# Equality with transformers' processors

PROCESSORS = {
    "vit_32": lambda: ViTImageProcessorPil(size={"height": 32, "width": 32}),
    "vit_24x40_imagenet": lambda: ViTImageProcessorPil(
        size={"height": 24, "width": 40}, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD
    ),
    "clip_36_crop_32": lambda: CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
    "clip_28_crop_32_padded": lambda: CLIPImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 31, "width": 29}  # odd padding
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
    return {name: (os.stat(cache_dir / name).st_ino, os.stat(cache_dir / name).st_mtime_ns)
            for name in ("meta.json", "images.u8")}


def test_rebuild_only_when_inputs_or_geometry_change(tmp_path):
    good, corrupt = make_images(tmp_path / "images")
    cache_dir = tmp_path / "cache"
    geometry = ImageGeometry(16, 16)
    first = build_image_cache(good, cache_dir, geometry, num_workers=0, progress=False)
    before, first_row = _stamp(cache_dir), first.uint8(0)

    again = build_image_cache(list(reversed(good)) + good, cache_dir, geometry, num_workers=0, progress=False)
    assert _stamp(cache_dir) == before and again.paths == first.paths

    Image.fromarray(_photo(50, 30, 99)).save(good[0], quality=92)  # same path, new content
    changed = build_image_cache(good, cache_dir, geometry, num_workers=0, progress=False)
    assert _stamp(cache_dir) != before
    assert not np.array_equal(changed.uint8(0), first_row)
    assert np.array_equal(changed.uint8(0), transform_uint8(load_rgb(good[0]), geometry))

    resized = build_image_cache(good, cache_dir, ImageGeometry(8, 12), num_workers=0, progress=False)
    assert resized.uint8(np.arange(len(good))).shape == (len(good), 8, 12, 3)
    assert os.path.getsize(cache_dir / "images.u8") == len(good) * 8 * 12 * 3


def test_failed_images_are_listed_not_fatal(tmp_path):
    good, corrupt = make_images(tmp_path / "images")
    missing = str(tmp_path / "images" / "missing.jpg")
    cache = build_image_cache(good + corrupt + [missing], tmp_path / "cache", ImageGeometry(8, 8), progress=False)
    assert len(cache) == len(good) and cache.paths == good
    failed = pd.read_csv(tmp_path / "cache" / "failed.csv")
    assert failed["image_path"].tolist() == corrupt + [missing]
    assert failed["reason"].str.len().min() > 0
    assert "truncated" in failed["reason"][0]
    assert cache.failed.equals(failed)
    meta = image_cache.read_json(tmp_path / "cache" / "meta.json")
    assert meta["count"] == len(good) and meta["geometry"] == ImageGeometry(8, 8).to_dict()
    index = pd.read_csv(tmp_path / "cache" / "index.csv")
    assert index["image_path"].tolist() == good and index["row"].tolist() == list(range(len(good)))


def test_interrupted_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    good, _ = make_images(tmp_path / "images")
    cache_dir = tmp_path / "caches" / "cache"
    calls = []

    def failing_store(images, start, arrays):
        calls.append(start)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        images[start : start + len(arrays)] = np.stack(arrays)

    monkeypatch.setattr(image_cache, "CHUNK_SIZE", 2)
    monkeypatch.setattr(image_cache, "_store_rows", failing_store)
    with pytest.raises(RuntimeError, match="disk full"):
        build_image_cache(good, cache_dir, ImageGeometry(8, 8), num_workers=0, progress=False)
    assert os.listdir(tmp_path / "caches") == []

    # An interrupted rebuild keeps the previous, complete cache.
    monkeypatch.undo()
    build_image_cache(good[:3], cache_dir, ImageGeometry(8, 8), num_workers=0, progress=False)
    before = _stamp(cache_dir)
    monkeypatch.setattr(image_cache, "CHUNK_SIZE", 2)
    monkeypatch.setattr(image_cache, "_store_rows", failing_store)
    calls.clear()
    with pytest.raises(RuntimeError):
        build_image_cache(good, cache_dir, ImageGeometry(8, 8), num_workers=0, progress=False)
    assert os.listdir(tmp_path / "caches") == ["cache"]
    assert _stamp(cache_dir) == before and ImageCache(cache_dir).paths == good[:3]


# -----------------------------------------------------------------------------
# Reading: index, pickling, dataset, DataLoader, collator


@pytest.fixture(scope="module")
def small_cache(images, tmp_path_factory):
    good, _, _ = images
    return build_image_cache(good, tmp_path_factory.mktemp("c") / "cache", ImageGeometry(16, 20), 0, progress=False)


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


def _table(cache):
    texts = ["一只猫 on a mat", "a dog", "两个人在公园里散步", "x", "red car", "蓝天", "b", "c", "d", "e", "f"]
    return pd.DataFrame({"image_path": cache.paths, "text": texts[: len(cache)]})


def test_dataloader_workers_give_same_batches(small_cache):
    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    dataset = CachedImageTextDataset(small_cache.cache_dir, _table(small_cache), mean, std)
    item = dataset[1]
    assert item["pixel_values"].shape == (3, 16, 20) and item["pixel_values"].dtype == torch.float32
    assert item["text"] == "a dog" and item["image_index"] == 1
    assert torch.equal(item["pixel_values"], torch.from_numpy(small_cache.pixel_values(1, mean, std)))

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=4, num_workers=workers, collate_fn=ImageTextCollator()
        )
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert a["pixel_values"].shape[1:] == (3, 16, 20)
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert a["texts"] == b["texts"] and torch.equal(a["image_index"], b["image_index"])
    assert torch.cat([b["image_index"] for b in serial]).tolist() == list(range(len(small_cache)))


def test_dataset_uint8_mode(small_cache):
    dataset = CachedImageTextDataset(small_cache, _table(small_cache), (0.5,) * 3, (0.5,) * 3, return_uint8=True)
    batch = ImageTextCollator()([dataset[0], dataset[2]])
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (2, 3, 16, 20)
    expected = small_cache.pixel_values([0, 2], (0.5,) * 3, (0.5,) * 3)
    assert np.abs(normalize_pixel_values(batch["pixel_values"], (0.5,) * 3, (0.5,) * 3).numpy() - expected).max() < 1e-6


def test_dataset_rejects_uncached_images(small_cache):
    table = _table(small_cache)
    table.loc[3, "image_path"] = "/data/not_cached.jpg"
    with pytest.raises(DataError, match=r"row 3: '/data/not_cached.jpg'"):
        CachedImageTextDataset(small_cache, table, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(DataError, match="'text'"):
        CachedImageTextDataset(small_cache, table[["image_path"]], (0.5,) * 3, (0.5,) * 3)


def test_collator_tokenizes(small_cache):
    from tokenizers import Tokenizer, models, pre_tokenizers

    table = _table(small_cache)
    chars = sorted(set("".join(table["text"])))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")

    dataset = CachedImageTextDataset(small_cache, table, (0.5,) * 3, (0.5,) * 3)
    items = [dataset[i] for i in range(4)]
    batch = ImageTextCollator(tokenizer, max_length=12)(items)
    lengths = [min(len(t), 12) for t in batch["texts"]]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][1, :5].tolist() == [vocab[c] for c in "a dog"]
    assert batch["pixel_values"].shape == (4, 3, 16, 20) and batch["image_index"].dtype == torch.long
