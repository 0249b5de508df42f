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
from nbutils.data.datasets import (
    CaptionCollator,
    ContrastiveCollator,
    ImageTextDataset,
    normalize_pixel_values,
)
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


# ----------------------------------------------------------------------------- the captioning collator


def _caption_items(texts):
    return [
        {"pixel_values": torch.zeros(3, 8, 8, dtype=torch.uint8), "text": t, "image_index": i}
        for i, t in enumerate(texts)
    ]


def test_caption_collator_labels_bert_style_vocabulary():
    from nbutils.models.tokenizer import caption_special_ids, train_tokenizer

    tok = train_tokenizer(["一个红色的圆形", "蓝色方块"])
    ids = caption_special_ids(tok)
    batch = CaptionCollator(tok, ids["start"], ids["end"], ids["pad"])(
        _caption_items(["一个红色的圆形", "蓝色方块"])
    )
    caption = tok("一个红色的圆形", add_special_tokens=False).input_ids
    assert batch["labels"][0].tolist() == [*caption, tok.sep_token_id]  # the end token is trained
    assert batch["decoder_input_ids"][0].tolist() == [
        tok.cls_token_id,
        *caption,
    ]  # one start token, labels shifted
    short = tok("蓝色方块", add_special_tokens=False).input_ids
    pad = len(caption) - len(short)
    assert batch["labels"][1].tolist() == [*short, tok.sep_token_id] + [-100] * pad
    assert batch["decoder_attention_mask"][1].tolist() == [1] * (len(short) + 1) + [0] * pad
    assert tok.cls_token_id not in batch["labels"][batch["labels"] >= 0].tolist()
    assert batch["pixel_values"].dtype == torch.uint8 and batch["image_index"].tolist() == [0, 1]


def test_caption_collator_masks_padding_by_position_when_pad_is_the_end_token():
    from nbutils.models.tokenizer import caption_special_ids, train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a red circle", "a big blue square on a plain background"], vocab_size=280)
    ids = caption_special_ids(tok)
    assert ids["pad"] == ids["end"]
    batch = CaptionCollator(tok, ids["start"], ids["end"], ids["pad"])(
        _caption_items(["a red circle", "a big blue square on a plain background"])
    )
    n = len(tok("a red circle").input_ids)
    row = batch["labels"][0].tolist()
    assert row[n] == ids["end"] and set(row[n + 1 :]) == {
        -100
    }  # the real end is kept, padding after it is not


def test_caption_collator_prompt_is_fed_but_not_trained_and_truncation_keeps_the_end():
    from nbutils.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["一张图片：一个红色的圆形"])
    prompt = tok("一张图片：", add_special_tokens=False).input_ids
    collate = CaptionCollator(
        tok, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, max_length=10, prompt="一张图片："
    )
    batch = collate(_caption_items(["一个红色的圆形"]))
    caption = tok("一个红色的圆形", add_special_tokens=False).input_ids
    assert batch["decoder_input_ids"][0].tolist() == [
        tok.cls_token_id,
        *prompt,
        *caption[: 10 - 1 - len(prompt)],
    ]
    labels = batch["labels"][0].tolist()
    assert labels == [-100] * len(prompt) + caption[: 10 - 1 - len(prompt)] + [tok.sep_token_id]
    assert len(labels) == 10
    with pytest.raises(ValueError, match="prompt"):
        CaptionCollator(tok, 2, 3, 0, max_length=len(prompt) + 1, prompt="一张图片：")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_encoder_decoder_loss_on_collated_labels_equals_cross_entropy_by_hand(smoothing):
    """The loss that training minimises: CE over exactly the non-padded, non-prompt label positions."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    from nbutils.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["一张图片：一个红色的圆形", "两个蓝色方块在中间"])
    collate = CaptionCollator(tok, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, prompt="一张图片：")
    batch = collate(_caption_items(["一个红色的圆形", "两个蓝色方块在中间"]))
    torch.manual_seed(0)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(
            image_size=8,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        ),
        GPT2Config(
            vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64, add_cross_attention=True
        ),
    )
    model = VisionEncoderDecoderModel(config).eval()
    pixel_values = torch.randn(2, 3, 8, 8)
    out = model(
        pixel_values=pixel_values,
        decoder_input_ids=batch["decoder_input_ids"],
        decoder_attention_mask=batch["decoder_attention_mask"],
    )
    logits, labels = out.logits, batch["labels"]
    keep = labels != -100
    assert keep.sum() == sum(
        len(tok(t, add_special_tokens=False).input_ids) + 1 for t in ["一个红色的圆形", "两个蓝色方块在中间"]
    )
    log_probs = torch.log_softmax(logits[keep], dim=-1)
    target = labels[keep]
    nll = -log_probs[torch.arange(len(target)), target]
    expected = ((1 - smoothing) * nll - smoothing * log_probs.mean(dim=-1)).mean()
    got = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, label_smoothing=smoothing
    )
    torch.testing.assert_close(got, expected)
    if (
        smoothing == 0.0
    ):  # the model's own loss agrees (transformers >= 5: no double shift, see the field notes)
        torch.testing.assert_close(
            model(
                pixel_values=pixel_values,
                decoder_input_ids=batch["decoder_input_ids"],
                decoder_attention_mask=batch["decoder_attention_mask"],
                labels=labels,
            ).loss,
            expected,
        )
