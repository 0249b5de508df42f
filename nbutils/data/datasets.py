"""The one image–text Dataset over the image cache, and the collator of each task (contrastive, captioning).

Items are uint8 CHW tensors straight from the cache's memmap: a DataLoader worker only copies bytes,
and the batch goes to the device as uint8 (4x less to move than float32) to be normalised there with
`normalize_pixel_values`. This is the path training runs and `benchmarks/bench_image_cache.py` times.
With a JPEG shard cache (`nbutils.data.shards`) the worker decodes each item's JPEG instead
(`benchmarks/bench_shards.py` times both).

Two sampling modes:
    "image"    one item per image; its caption is picked from (seed, epoch, index), so each epoch sees
               a different caption, every process picks the same one, and a resumed run repeats the
               picks (contrastive training: one caption per image keeps duplicates out of a batch).
               `fixed_caption=True` always takes the image's first caption (validation, test).
    "caption"  one item per caption row (captioning: every reference caption is a training target).
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from .cache import ImageCache, normalization_affine, open_image_cache
from .shards import ShardCache

SAMPLING = ("image", "caption")


class ImageTextDataset(torch.utils.data.Dataset):
    """Image–caption items from a table with image_path,text whose images are all in `cache`.

    Attributes: `image_paths` (distinct images, sorted), `captions` (each image's captions in table
    order), `rows` (each image's cache row). Items: {"pixel_values": uint8 (3, H, W), "text": str,
    "image_index": position in `image_paths`}.
    """

    def __init__(
        self,
        cache: ImageCache | ShardCache | str | os.PathLike,
        table: pd.DataFrame,
        sampling: str = "image",
        seed: int = 0,
        fixed_caption: bool = False,
        source: str = "table",
    ):
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        # A folder is opened in whichever format it holds; an open cache (memmap or JPEG shards) is used as is.
        self.cache = open_image_cache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        for column in ("image_path", "text"):
            if column not in table.columns:
                raise DataError(f"{source}: missing column {column!r} (have {list(table.columns)})")
        if table.empty:
            raise DataError(f"{source} is empty: nothing to train or evaluate on")
        keys = [os.fspath(p) if isinstance(p, os.PathLike) else str(p) for p in table["image_path"]]
        cached = self.cache._index.get_indexer(keys)
        missing = np.flatnonzero(cached < 0)
        if len(missing):
            shown = ", ".join(f"row {table.index[i]}: {keys[i]!r}" for i in missing[:5])
            raise DataError(
                f"{source}: {len(missing)} image_path value(s) not in the image cache "
                f"{self.cache.cache_dir} ({shown})"
            )
        texts = table["text"].tolist()
        bad_text = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad_text:
            raise DataError(f"{source}: column 'text' is not a string at row {table.index[bad_text[0]]}")

        self.image_paths: list[str] = sorted(set(keys))
        number = {path: i for i, path in enumerate(self.image_paths)}
        self.captions: list[list[str]] = [[] for _ in self.image_paths]
        self._items: list[tuple[int, int]] = []  # (image, caption) per caption row, in table order
        for path, text in zip(keys, texts):
            i = number[path]
            self._items.append((i, len(self.captions[i])))
            self.captions[i].append(text)
        self.rows = self.cache.index_of(self.image_paths)
        self.sampling, self.seed, self.fixed_caption, self.epoch = sampling, seed, fixed_caption, 0

    def set_epoch(self, epoch: int) -> None:
        """Which epoch is running: with sampling="image" it chooses each image's caption."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_paths) if self.sampling == "image" else len(self._items)

    def caption_of(self, k: int) -> tuple[int, str]:
        """Item `k`'s (image number, caption): its caption row, or with sampling="image" the epoch's caption."""
        if self.sampling == "caption":
            i, j = self._items[k]
        elif self.fixed_caption:
            i, j = k, 0
        else:
            i = k
            j = int(np.random.default_rng([self.seed, self.epoch, k]).integers(len(self.captions[k])))
        return i, self.captions[i][j]

    def __getitem__(self, k: int) -> dict:
        i, text = self.caption_of(k)
        pixels = torch.from_numpy(self.cache.uint8(int(self.rows[i]))).permute(2, 0, 1)
        return {"pixel_values": pixels, "text": text, "image_index": i}


class ImageEmbeddingDataset(torch.utils.data.Dataset):
    """An `ImageTextDataset`'s items with a precomputed image embedding in place of the pixels.

    `embeddings` (cache rows, D) holds one row per image of the dataset's image cache
    (nbutils.data.image_embeddings). Items: {"image_embeds": (D,), "text": str, "image_index": int}.
    """

    def __init__(self, dataset: ImageTextDataset, embeddings: torch.Tensor):
        if len(embeddings) != len(dataset.cache):
            raise ValueError(
                f"{len(embeddings)} embeddings for an image cache of {len(dataset.cache)} images: "
                "they were computed for another cache"
            )
        self.dataset, self.embeddings, self.cache = dataset, embeddings, dataset.cache
        self.image_paths, self.captions, self.rows = dataset.image_paths, dataset.captions, dataset.rows

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def image_embeds(self) -> torch.Tensor:
        """(images, D): every image's embedding, in `image_paths` order."""
        return self.embeddings[torch.as_tensor(self.rows)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> dict:
        i, text = self.dataset.caption_of(k)
        return {"image_embeds": self.embeddings[int(self.rows[i])], "text": text, "image_index": i}


def normalize_pixel_values(
    images: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalise uint8 (B, 3, H, W) or (3, H, W) on its own device, like the image processor would."""
    scale, shift = normalization_affine(mean, std)
    scale = torch.from_numpy(scale).to(images.device)
    shift = torch.from_numpy(shift).to(images.device)
    return torch.addcmul(shift, images.to(torch.float32), scale).to(dtype)  # never modifies `images`


@dataclass
class ContrastiveCollator:
    """Stack uint8 images, tokenize captions, and give identical captions the same `text_groups` id.

    `text_groups` is a hash of the caption text, so the ids agree across processes: the contrastive
    loss masks identical captions out of each other's softmax (see nbutils.training.clip_loss).
    With `hard_negatives` (a `nbutils.data.hard_negatives.HardNegatives`) each caption also gets
    `negatives_per_caption` negatives, each with a different word replaced (`negative_input_ids`,
    `negative_attention_mask`, `negative_groups`: rows k * i ... k * i + k - 1 belong to caption i), padded
    together with the captions; the words are drawn seeded by the batch's texts, so a resumed run repeats them.
    """

    tokenizer: object
    max_length: int = 64
    hard_negatives: object = None
    negatives_per_caption: int = 1

    def __call__(self, items: list[dict]) -> dict:
        texts = [item["text"] for item in items]
        negatives = []
        if self.hard_negatives is not None:
            rng = random.Random(zlib.crc32("\n".join(texts).encode("utf-8")))
            negatives = self.hard_negatives.negatives(texts, rng, self.negatives_per_caption)
        batch = self.tokenizer(
            texts + negatives, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        n = len(texts)
        out = {
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
            "input_ids": batch["input_ids"][:n],
            "attention_mask": batch["attention_mask"][:n],
            "text_groups": _text_groups(texts),
            "image_index": torch.tensor([item["image_index"] for item in items], dtype=torch.long),
        }
        if negatives:
            out["negative_input_ids"] = batch["input_ids"][n:]
            out["negative_attention_mask"] = batch["attention_mask"][n:]
            out["negative_groups"] = _text_groups(negatives)
        return out


def _text_groups(texts: list[str]) -> torch.Tensor:
    return torch.tensor([zlib.crc32(t.encode("utf-8")) for t in texts], dtype=torch.long)


@dataclass
class CaptionCollator:
    """Stack uint8 images (or `image_embeds`) and make a caption decoder's inputs and labels (VisionEncoderDecoder,
    BLIP-style, ClipCap).

    Per caption: `ids = prompt + caption + [end]`, `decoder_input_ids = [start] + ids[:-1]`, and
    `labels = ids` with -100 on the prompt and on padding. Padding is found by position, never by id:
    GPT-2's pad is its end token, and the end token must be learned or the model never stops. Labels never
    hold the start token (a doubled "[CLS][CLS]" would be learned). `decoder_input_ids` is always given, so
    the loss does not depend on the model's own label shifting, and label smoothing under the Trainer (which
    pops `labels`) still finds decoder inputs. `max_length` counts prompt, caption and end token.
    Ids come from `nbutils.models.tokenizer.caption_special_ids(tokenizer)`.

    `start_token_id=None` is a prefix captioner that feeds no start token (the reference ClipCap): then
    `decoder_input_ids = ids[:-1]`, one column narrower than `labels`, and the last prefix position predicts
    the first label. A caption whose text already ends with the end token (the reference's stop token ".")
    gets no second one.
    """

    tokenizer: object
    start_token_id: int | None
    end_token_id: int
    pad_token_id: int
    max_length: int = 32
    prompt: str = ""

    def __post_init__(self):
        self.prompt_ids = (
            self.tokenizer(self.prompt, add_special_tokens=False)["input_ids"] if self.prompt else []
        )
        if len(self.prompt_ids) + 2 > self.max_length:
            raise ValueError(
                f"prompt={self.prompt!r} is {len(self.prompt_ids)} tokens: max_length={self.max_length} "
                "leaves no room for a caption"
            )

    def __call__(self, items: list[dict]) -> dict:
        captions = self.tokenizer([item["text"] for item in items], add_special_tokens=False)["input_ids"]
        end, rows = self.end_token_id, []
        for ids in captions:
            if ids[-1:] == [end]:  # the text already ends with the stop token (the reference ClipCap's ".")
                ids = ids[:-1]
            rows.append((self.prompt_ids + ids)[: self.max_length - 1] + [end])
        width = max(len(ids) for ids in rows)
        start = [] if self.start_token_id is None else [self.start_token_id]
        fed = width - 1 + len(start)  # the inputs: [start] + ids[:-1], or ids[:-1] after a prefix alone
        decoder_input_ids = torch.full((len(rows), fed), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), fed), dtype=torch.long)
        for b, ids in enumerate(rows):
            n = len(ids) - 1 + len(start)
            decoder_input_ids[b, :n] = torch.tensor([*start, *ids[:-1]], dtype=torch.long)
            labels[b, len(self.prompt_ids) : len(ids)] = torch.tensor(ids[len(self.prompt_ids) :])
            mask[b, :n] = 1
        image_key = "pixel_values" if "pixel_values" in items[0] else "image_embeds"  # a prefix captioner's
        return {
            image_key: torch.stack([item[image_key] for item in items]),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": mask,
            "labels": labels,
            "image_index": torch.tensor([item["image_index"] for item in items], dtype=torch.long),
        }
