"""CLIP image embeddings of an image cache: computed once, kept in safetensors, recomputed when the encoder or an
image changes."""

import os

import pytest
import torch
from safetensors.torch import load_file

from nbutils.data.cache import ImageGeometry, build_image_cache
from nbutils.data.datasets import normalize_pixel_values
from nbutils.data.image_embeddings import cached_image_embeddings, model_fingerprint
from nbutils.data.shards import build_shard_cache
from nbutils.models import clip as clip_models
from nbutils.models.tokenizer import train_tokenizer

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture
def setting(make_jpeg, make_tiny_dual_encoder, tmp_path):
    paths = [make_jpeg(tmp_path / "images" / f"{i}.jpg", 40, 40, seed=i) for i in range(5)]
    geometry = ImageGeometry(height=32, width=32)
    cache = build_image_cache(paths, tmp_path / "cache", geometry, num_workers=0, progress=False)
    model = make_tiny_dual_encoder(train_tokenizer(["一个红色的圆形", "蓝色的方形"]), 32).eval()
    return {
        "paths": paths,
        "geometry": geometry,
        "cache": cache,
        "model": model,
        "dir": tmp_path / "embeddings",
    }


class CountingForward:
    """Counts the image tower's forward calls."""

    def __init__(self, model):
        self.calls = 0
        model.vision_model.register_forward_hook(self.hook)

    def hook(self, *args):
        self.calls += 1


def test_computed_once_then_read_back(setting):
    model, cache = setting["model"], setting["cache"]
    counter = CountingForward(model)
    first, path, reused = cached_image_embeddings(model, cache, MEAN, STD, setting["dir"], progress=False)
    assert not reused and counter.calls == 1 and path.suffix == ".safetensors"
    # the values: the model's projected embeddings of the cached pixels, in cache row order
    pixels = normalize_pixel_values(
        torch.from_numpy(cache.uint8(list(range(5)))).permute(0, 3, 1, 2), MEAN, STD
    )
    with torch.no_grad():
        torch.testing.assert_close(first, clip_models.image_features(model, pixels))
    torch.testing.assert_close(load_file(str(path))["image_embeds"], first)  # a safetensors file, no pickle
    counter.calls = 0
    second, path2, reused = cached_image_embeddings(model, cache, MEAN, STD, setting["dir"], progress=False)
    assert reused and path2 == path and counter.calls == 0
    assert torch.equal(second, first)
    assert [p.name for p in setting["dir"].iterdir()] == [path.name]  # no temporaries left behind


def test_a_changed_encoder_gets_new_embeddings(setting):
    model, cache = setting["model"], setting["cache"]
    first, path, _ = cached_image_embeddings(model, cache, MEAN, STD, setting["dir"], progress=False)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.visual_projection.weight.mul_(2.0)
    assert model_fingerprint(model) != before
    second, path2, reused = cached_image_embeddings(model, cache, MEAN, STD, setting["dir"], progress=False)
    assert not reused and path2 != path
    torch.testing.assert_close(second, 2.0 * first)


def test_a_changed_image_gets_new_embeddings(setting, make_jpeg):
    model, paths = setting["model"], setting["paths"]
    first, path, _ = cached_image_embeddings(
        model, setting["cache"], MEAN, STD, setting["dir"], progress=False
    )
    make_jpeg(paths[2], 40, 40, seed=99)  # the image file is replaced
    os.utime(paths[2], ns=(1, 1))  # a different modification time even within the clock's resolution
    cache = build_image_cache(
        paths, setting["cache"].cache_dir, setting["geometry"], num_workers=0, progress=False
    )
    second, path2, reused = cached_image_embeddings(model, cache, MEAN, STD, setting["dir"], progress=False)
    assert not reused and path2 != path
    row = cache.index_of(os.fspath(paths[2]))
    assert not torch.allclose(second[row], first[row])
    others = [cache.index_of(os.fspath(p)) for i, p in enumerate(paths) if i != 2]
    torch.testing.assert_close(
        second[others], first[[setting["cache"].index_of(os.fspath(paths[i])) for i in (0, 1, 3, 4)]]
    )


def test_other_normalisation_is_another_file(setting):
    model, cache = setting["model"], setting["cache"]
    _, path, _ = cached_image_embeddings(model, cache, MEAN, STD, setting["dir"], progress=False)
    _, path2, reused = cached_image_embeddings(
        model, cache, (0.4, 0.4, 0.4), STD, setting["dir"], progress=False
    )
    assert not reused and path2 != path


def test_a_shard_cache_gives_the_embeddings_of_its_decoded_pixels_close_to_the_memmaps(setting, tmp_path):
    """ClipCap's embeddings read either cache format through the same interface (uint8 rows, meta)."""
    model, memmap = setting["model"], setting["cache"]
    shards = build_shard_cache(
        setting["paths"], tmp_path / "shards", setting["geometry"], num_workers=0, progress=False
    )
    from_shards, path, _ = cached_image_embeddings(model, shards, MEAN, STD, tmp_path / "emb", progress=False)
    from_memmap, other, _ = cached_image_embeddings(
        model, memmap, MEAN, STD, tmp_path / "emb", progress=False
    )
    assert path != other  # keyed by each cache's own fingerprint
    pixels = normalize_pixel_values(
        torch.from_numpy(shards.uint8(list(range(5)))).permute(0, 3, 1, 2), MEAN, STD
    )
    with torch.no_grad():
        torch.testing.assert_close(from_shards, clip_models.image_features(model, pixels))
    cosine = torch.nn.functional.cosine_similarity(from_shards, from_memmap)
    assert cosine.min() > 0.99  # JPEG at quality 94 moves the pixels by about 2 levels
