"""The one image–text Dataset over the image cache, the GPU-side normaliser, and the contrastive collator."""

import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, ViTImageProcessorPil
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from nbutils.data.cache import ImageGeometry, build_image_cache, processor_mean_std
from nbutils.data.datasets import ContrastiveCollator, ImageTextDataset, normalize_pixel_values
from nbutils.errors import DataError

TEXTS = ["一只猫 on a mat", "a dog", "两个人在公园里散步", "x", "red car", "蓝天", "b", "c", "d", "e", "f"]


def _table(cache) -> pd.DataFrame:
    """One caption per cached image, in the cache's order."""
    return pd.DataFrame({"image_path": cache.paths, "text": TEXTS[: len(cache)]})


def _captions_table(cache, n: int = 3) -> pd.DataFrame:
    """`n` captions per image, interleaved: caption j of every image (reverse cache order), then j + 1."""
    rows = [
        (path, f"图{i} caption {j}") for j in range(n) for i, path in reversed(list(enumerate(cache.paths)))
    ]
    return pd.DataFrame(rows, columns=["image_path", "text"])


def _captions_of(table: pd.DataFrame, path: str) -> list[str]:
    return table.loc[table["image_path"] == path, "text"].tolist()


def _pixels(cache, path) -> torch.Tensor:
    """The cached uint8 image of `path` as (3, H, W): what an item must carry."""
    return torch.from_numpy(cache.uint8(cache.index_of(path))).permute(2, 0, 1)


def _char_tokenizer(texts):
    """A tokenizer with one token per character of `texts`; returns (tokenizer, vocab)."""
    chars = sorted(set("".join(texts)))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]"), vocab


def _batches(dataset, collate, workers: int) -> list[dict]:
    return list(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate))


# -----------------------------------------------------------------------------
# Indexing and items


def test_images_are_sorted_and_keep_their_captions_in_table_order(small_cache):
    table = _captions_table(small_cache)
    dataset = ImageTextDataset(small_cache, table)
    assert dataset.image_paths == sorted(small_cache.paths) and len(dataset) == len(small_cache)
    assert dataset.captions == [_captions_of(table, path) for path in dataset.image_paths]
    assert dataset.rows.tolist() == [small_cache.index_of(path) for path in dataset.image_paths]
    by_folder = ImageTextDataset(small_cache.cache_dir, table)  # a cache folder opens the same cache
    assert (by_folder.image_paths, by_folder.captions) == (dataset.image_paths, dataset.captions)
    assert by_folder.rows.tolist() == dataset.rows.tolist()


def test_dataloader_workers_give_same_batches(small_cache):
    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    dataset = ImageTextDataset(small_cache.cache_dir, _table(small_cache))
    k = dataset.image_paths.index(small_cache.paths[1])  # the image captioned "a dog"
    item = dataset[k]
    assert item["pixel_values"].shape == (3, 16, 20) and item["pixel_values"].dtype == torch.uint8
    assert item["text"] == "a dog" and item["image_index"] == k
    assert torch.equal(item["pixel_values"], _pixels(small_cache, small_cache.paths[1]))
    normalised = normalize_pixel_values(item["pixel_values"], mean, std)
    assert np.abs(normalised.numpy() - small_cache.pixel_values(1, mean, std)).max() < 1e-6

    collate = ContrastiveCollator(_char_tokenizer(TEXTS)[0], max_length=12)
    serial, parallel = _batches(dataset, collate, 0), _batches(dataset, collate, 2)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert a["pixel_values"].shape[1:] == (3, 16, 20)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert torch.cat([b["image_index"] for b in serial]).tolist() == list(range(len(small_cache)))
    captions = dict(zip(small_cache.paths, TEXTS))
    assert torch.cat([b["text_groups"] for b in serial]).tolist() == [
        zlib.crc32(captions[path].encode("utf-8")) for path in dataset.image_paths
    ]


def test_dataloader_workers_see_the_epoch(small_cache):
    """set_epoch before iterating reaches the worker processes: their picks equal the main process's."""
    table = _captions_table(small_cache)
    dataset = ImageTextDataset(small_cache, table, seed=3)
    tokenizer, _ = _char_tokenizer(table["text"])
    collate = ContrastiveCollator(tokenizer)
    for epoch in (0, 5):
        dataset.set_epoch(epoch)
        expected = [dataset[k]["text"] for k in range(len(dataset))]
        serial, parallel = _batches(dataset, collate, 0), _batches(dataset, collate, 2)
        for a, b in zip(serial, parallel):
            for key in a:
                assert torch.equal(a[key], b[key]), (epoch, key)
        assert torch.cat([b["text_groups"] for b in parallel]).tolist() == [
            zlib.crc32(t.encode("utf-8")) for t in expected
        ]


# -----------------------------------------------------------------------------
# Sampling modes


def test_image_sampling_picks_each_caption_from_seed_epoch_and_index(small_cache):
    table = _captions_table(small_cache)
    a = ImageTextDataset(small_cache, table, seed=7)
    b = ImageTextDataset(small_cache, table.copy(), seed=7)  # another process, or a resumed run
    picks = {}
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        texts = []
        for k in range(len(a)):
            item = a[k]
            captions = _captions_of(table, a.image_paths[k])
            assert item["text"] == captions[int(np.random.default_rng([7, epoch, k]).integers(len(captions)))]
            assert item["image_index"] == k
            assert torch.equal(item["pixel_values"], _pixels(small_cache, a.image_paths[k]))
            assert b[k]["text"] == item["text"]
            texts.append(item["text"])
        # no hidden state: reading again, backwards, gives the same picks
        assert [a[k]["text"] for k in reversed(range(len(a)))] == texts[::-1]
        picks[epoch] = texts
    assert len({tuple(texts) for texts in picks.values()}) == 4  # every epoch sees other captions
    other = ImageTextDataset(small_cache, table, seed=8)
    assert [other[k]["text"] for k in range(len(other))] != picks[0]


def test_fixed_caption_is_always_the_first(small_cache):
    table = _captions_table(small_cache)
    dataset = ImageTextDataset(small_cache, table, seed=7, fixed_caption=True)
    first = [_captions_of(table, path)[0] for path in dataset.image_paths]
    for epoch in (0, 1, 9):
        dataset.set_epoch(epoch)
        assert [dataset[k]["text"] for k in range(len(dataset))] == first


def test_caption_sampling_gives_one_item_per_row_in_table_order(small_cache):
    table = _captions_table(small_cache)
    dataset = ImageTextDataset(small_cache, table, sampling="caption", seed=7)
    assert len(dataset) == len(table) == 3 * len(small_cache)
    for epoch in (0, 4):  # the epoch does not change caption items
        dataset.set_epoch(epoch)
        for i, row in enumerate(table.itertuples()):
            item = dataset[i]
            assert item["text"] == row.text and dataset.image_paths[item["image_index"]] == row.image_path
            assert torch.equal(item["pixel_values"], _pixels(small_cache, row.image_path))
    with pytest.raises(ValueError, match="sampling must be one of"):
        ImageTextDataset(small_cache, table, sampling="row")


# -----------------------------------------------------------------------------
# Normalising uint8 batches


def test_uint8_batch_normalised_equals_cache_pixel_values(small_cache):
    dataset = ImageTextDataset(small_cache, _table(small_cache))
    batch = ContrastiveCollator(_char_tokenizer(TEXTS)[0])([dataset[0], dataset[2]])
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (2, 3, 16, 20)
    expected = small_cache.pixel_values(dataset.rows[[0, 2]], (0.5,) * 3, (0.5,) * 3)
    before = batch["pixel_values"].clone()
    normalised = normalize_pixel_values(batch["pixel_values"], (0.5,) * 3, (0.5,) * 3)
    assert normalised.dtype == torch.float32 and np.abs(normalised.numpy() - expected).max() < 1e-6
    assert torch.equal(batch["pixel_values"], before)  # the input is left as it was
    half = normalize_pixel_values(batch["pixel_values"], (0.5,) * 3, (0.5,) * 3, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and np.abs(half.float().numpy() - expected).max() < 1e-2


def test_normalised_items_equal_the_image_processor(images, tmp_path):
    """Cache + uint8 item + normalize_pixel_values == transformers' processor on the decoded image."""
    good, _, rgb = images
    processor = ViTImageProcessorPil(
        size={"height": 24, "width": 40}, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD
    )
    cache = build_image_cache(
        good, tmp_path / "cache", ImageGeometry.from_processor(processor), 0, progress=False
    )
    expected = dict(zip(good, processor(rgb, return_tensors="np").pixel_values))
    dataset = ImageTextDataset(cache, pd.DataFrame({"image_path": good, "text": TEXTS[: len(good)]}))
    for k in range(len(dataset)):
        got = normalize_pixel_values(dataset[k]["pixel_values"], *processor_mean_std(processor)).numpy()
        assert np.abs(got - expected[dataset.image_paths[k]]).max() < 1e-5


# -----------------------------------------------------------------------------
# Bad tables


def test_dataset_rejects_uncached_images(small_cache):
    table = _table(small_cache)
    table.loc[3, "image_path"] = "/data/not_cached.jpg"
    with pytest.raises(DataError, match=r"row 3: '/data/not_cached.jpg'"):
        ImageTextDataset(small_cache, table)
    with pytest.raises(DataError, match="'text'"):
        ImageTextDataset(small_cache, table[["image_path"]])


def test_dataset_rejects_non_string_captions_and_empty_tables(small_cache):
    table = _table(small_cache)
    table.loc[2, "text"] = None
    with pytest.raises(DataError, match=r"^split 'val' of t: column 'text' is not a string at row 2$"):
        ImageTextDataset(small_cache, table, source="split 'val' of t")
    with pytest.raises(DataError, match=r"^val.csv is empty"):
        ImageTextDataset(small_cache, _table(small_cache).iloc[:0], source="val.csv")


# -----------------------------------------------------------------------------
# Collator


def test_collator_tokenizes(small_cache):
    table = _table(small_cache)
    tokenizer, vocab = _char_tokenizer(table["text"])
    dataset = ImageTextDataset(small_cache, table, sampling="caption")
    items = [dataset[i] for i in range(4)]
    texts = [item["text"] for item in items]
    assert texts == TEXTS[:4]
    batch = ContrastiveCollator(tokenizer, max_length=12)(items)
    lengths = [min(len(t), 12) for t in texts]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][1, :5].tolist() == [vocab[c] for c in "a dog"]
    assert batch["pixel_values"].shape == (4, 3, 16, 20) and batch["image_index"].dtype == torch.long
    assert batch["image_index"].tolist() == [dataset.image_paths.index(p) for p in table["image_path"][:4]]
    assert batch["text_groups"].tolist() == [zlib.crc32(t.encode("utf-8")) for t in texts]


def test_collator_gives_identical_captions_one_group(small_cache):
    """The contrastive loss masks identical captions of different images out of each other's softmax."""
    paths = small_cache.paths[:4]
    table = pd.DataFrame({"image_path": paths, "text": ["a dog", "a cat", "a dog", "a dog "]})
    dataset = ImageTextDataset(small_cache, table, sampling="caption")
    batch = ContrastiveCollator(_char_tokenizer(table["text"])[0])([dataset[i] for i in range(4)])
    groups = batch["text_groups"].tolist()
    assert groups[0] == groups[2] and len({groups[0], groups[1], groups[3]}) == 3
    assert len(set(batch["image_index"].tolist())) == 4
