"""The processdata_03 stage: a caption table in; clean image-level splits and an image cache out.

Everything a training notebook needs is written to `<run_dir>/processdata_03/` and read back with
`nbutils.stages.load_prepared(run_dir)`:
    train.csv val.csv test.csv train_small.csv test_small.csv   image_path,text (one row per caption)
    dropped.csv        row,image_path,text,reason for every row that was left out
    image_processor/   the processor (save_pretrained) whose geometry the cache was built with
    stage.json         the manifest: these files, the cache folder, the data's origin
The cache itself lives under `data/cache/` so that later runs reuse it (it is rebuilt only when its
inputs or resolution change).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import stages
from ..config import StageConfig, param
from ..demo import scenes
from ..demo.source import DemoSource, is_demo
from ..errors import DataError
from ..models.image_processors import load_image_processor
from ..reporting.tables import breakdown, count, counts_table, formatted
from . import cache as image_cache
from . import importers, shards, splits

LANGUAGES = ("", *scenes.LANGUAGES)  # "": the captions' language comes from the data
CACHE_FORMATS = ("memmap", "shards")


@dataclass(frozen=True)
class PrepareConfig(StageConfig):
    """processdata_03's parameters: where the captions come from, how to split them, the cache geometry."""

    stage = "processdata_03"
    source: str = param(
        "processdata_02",
        '"processdata_02" (this run\'s validated table), a caption file/folder, or "demo" / "demo?key=value&..." '
        "(generate the demo set here; keys language, n_images, image_size, data_dir: the last two default to this "
        "notebook's, image_size unless it is 0)",
    )
    input_format: str = param(
        "text_image_csv",
        "importer for a path source: original_csv, text_image_csv, "
        "flickr_tokens, coco_captions, coco_cn, ai_challenger, wukong, "
        "img2dataset, table, hf_dataset (nbutils.data.importers.IMPORTERS)",
    )
    images_root: str = param(
        "", "folder the table's image names are relative to (empty: the table's own folder)"
    )
    image_column: str = param("image", "hf_dataset: the column holding the images (embedded, or file paths)")
    caption_column: str = param(
        "",
        "hf_dataset: the column holding the captions (a string or a list of them); empty: the first of "
        "caption, captions, sentences, sentence, text, raw, caption_zh",
    )
    dataset_split: str = param(
        "", 'hf_dataset: the split to read; empty: "train", or the only split the dataset has'
    )
    extract_images: bool = param(
        False,
        "hf_dataset, img2dataset: write the images held in dataset files or webdataset tars as files under "
        "images_root (empty: <dataset folder>/_extracted) instead of reading them in place",
    )
    language: str = param(
        "",
        "the captions' language: \"\" reads it from the data (the demo's, else detected from the captions); "
        '"zh" or "en" sets it, and must match the demo\'s',
    )
    image_size: int = param(
        64, "training resolution of the cache; 0 means the checkpoint processor's own size"
    )
    image_processor: str = param(
        "vit", '"vit", "clip", or a hub id / checkpoint folder whose processor the cache must match'
    )
    val_fraction: float = param(0.05, "share of IMAGES (not captions) held out for validation")
    test_fraction: float = param(0.1, "share of images held out for test")
    small_train_images: int = param(500, "images in train_small (quick experiments)")
    small_test_images: int = param(100, "images in test_small")
    data_dir: str = param(
        "../data", "image caches live here, and the demo set unless source sets its data_dir"
    )
    cache_dir: str = param(
        "", "empty: <data_dir>/cache/<dataset>-<size> (+ -shards-q<jpeg_quality> for shards)"
    )
    cache_format: str = param(
        "memmap",
        '"memmap" (raw uint8 pixels, fastest to read, 150 KB an image at 224 px) or "shards" (JPEG in '
        "webdataset tar shards, about a fifth of the disk, decoded in the DataLoader workers)",
    )
    jpeg_quality: int = param(shards.JPEG_QUALITY, 'JPEG quality (1-100) of cache_format="shards"')
    shard_size: int = param(shards.SHARD_SIZE, 'images per tar shard of cache_format="shards"')
    num_workers: int = param(0, "processes for building the cache; 0 means all cores")
    max_caption_chars: int = param(0, "drop captions longer than this; 0 keeps all")

    def __post_init__(self):
        super().__post_init__()
        if self.language not in LANGUAGES:
            raise ValueError(f'language must be "" (from the data), "zh" or "en"; got {self.language!r}')
        if self.cache_format not in CACHE_FORMATS:
            raise ValueError(f'cache_format must be "memmap" or "shards", got {self.cache_format!r}')
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {self.jpeg_quality!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be a positive number of images, got {self.shard_size!r}")
        self.demo()  # a wrong demo key fails here, before any work, naming the key

    def demo(self) -> DemoSource | None:
        """The demo set `source` names (None when it names none), with this config's data_dir and image_size
        where the source leaves them out; image_size 0 leaves the demo's own default."""
        if not is_demo(self.source):
            return None
        defaults = {"data_dir": self.data_dir}
        if self.image_size:
            defaults["image_size"] = self.image_size
        return DemoSource.parse(self.source, **defaults)


def load_source(config: PrepareConfig) -> tuple[pd.DataFrame, str, stages.DataOrigin]:
    """Read the caption table processdata_03 starts from; returns `(table, dataset name, origin)`.

    `config.source` is "demo" or "demo?key=value&..." (generate that demo set, `PrepareConfig.demo`),
    "processdata_02" (the clean table the validator wrote in this run), or a path read with the importer
    `input_format`. The dataset name names the image cache. The origin's language is `with_language`'s.
    """
    source, demo = config.source, config.demo()
    if demo is not None:
        out = demo.folder(config.seed)
        table = scenes.generate_demo_dataset(
            out, n_images=demo.n_images, image_size=demo.image_size, language=demo.language, seed=config.seed
        )
        origin = stages.DataOrigin(demo.language, str((out / "objects.jsonl").resolve()))
        return table, f"demo-{out.name}", with_language(origin, config)
    if source == "processdata_02":
        validated = stages.load_validated(config.run_dir)
        name = f"{Path(config.run_dir).resolve().name}-clean"
        return validated.table, name, with_language(validated.origin, config)
    if not os.path.exists(source):
        raise DataError(f"source={source!r}: no such file or folder (or use 'demo' / 'processdata_02')")
    options = {}
    if config.input_format == "hf_dataset":
        options = {
            "image_column": config.image_column,
            "caption_column": config.caption_column,
            "split": config.dataset_split,
            "extract_images": config.extract_images,
        }
    if config.input_format == "img2dataset":
        options = {"extract_images": config.extract_images}
    table = importers.import_captions(
        config.input_format, source, images_root=config.images_root or None, **options
    )
    name = Path(source).stem + (f"-{config.dataset_split}" if options.get("split") else "")
    return table, name, with_language(stages.DataOrigin(), config)


def with_language(origin: stages.DataOrigin, config: PrepareConfig) -> stages.DataOrigin:
    """`origin` with the language `config.language` asks for. A language the data records (the demo's) stays,
    and a different explicit one is a ValueError; otherwise an explicit one is taken, and "" leaves it to
    `prepare_dataset`, which detects it from the captions."""
    language = config.language
    if not language or language == origin.language:
        return origin
    if origin.language:
        raise ValueError(
            f"language={language!r}, but source={config.source!r} holds {origin.language!r} captions (the data "
            f'records it): set language to "", or generate {language!r} captions (demo?language={language})'
        )
    return dataclasses.replace(origin, language=language)


def prepare_dataset(
    table: pd.DataFrame, config: PrepareConfig, dataset_name: str, origin: stages.DataOrigin
) -> stages.PreparedDataset:
    """Clean `table`, cache its images, split by image, and write everything to `config.output_dir`."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    processor = load_image_processor(config.image_processor, config.image_size)
    geometry = image_cache.ImageGeometry.from_processor(processor)

    source_label = str(config.source)
    clean, dropped = splits.clean_captions(
        table, source=source_label, max_caption_chars=config.max_caption_chars
    )
    if clean.empty:
        raise DataError(
            f"{source_label}: no usable rows left after cleaning "
            f"({dropped['reason'].value_counts().to_dict()})"
        )

    name = f"{dataset_name}-{geometry.height}x{geometry.width}-{geometry.resize}"
    if config.cache_format == "shards":  # beside a memmap of the same images, never over it
        name += f"-shards-q{config.jpeg_quality}"
    cache_dir = Path(config.cache_dir or Path(config.data_dir) / "cache" / name).resolve()
    image_paths = clean["image_path"].unique()
    if config.cache_format == "shards":
        cache = shards.build_shard_cache(
            image_paths,
            cache_dir,
            geometry,
            captions=clean.groupby("image_path", sort=False)["text"].agg(list).to_dict(),
            quality=config.jpeg_quality,
            shard_size=config.shard_size,
            num_workers=config.num_workers or None,
        )
    else:
        cache = image_cache.build_image_cache(
            image_paths, cache_dir, geometry, num_workers=config.num_workers or None
        )
    clean, unreadable = splits.drop_images(clean, cache.failed)
    dropped = pd.concat([dropped, unreadable], ignore_index=True)

    tables = splits.split_by_image(clean, config.val_fraction, config.test_fraction, config.seed)
    splits.assert_no_leakage(tables)
    tables["train_small"] = splits.image_subset(tables["train"], config.small_train_images, config.seed)
    tables["test_small"] = splits.image_subset(tables["test"], config.small_test_images, config.seed)
    prepared = stages.PreparedDataset(tables, dropped, cache, processor, dataset_name, origin)
    if not origin.language:  # recorded in stage.json, so that the summary and every later stage agree on it
        prepared.origin = dataclasses.replace(origin, language=prepared.language)
    return stages.save_prepared(output_dir, prepared)


def summarise(prepared: stages.PreparedDataset) -> dict:
    """summary.json of processdata_03: `prepared.summary()` with its one-sentence `headline` first."""
    summary = prepared.summary()
    return {"headline": headline(summary), **summary}


def headline(summary: dict) -> str:
    """One sentence of what processdata_03 made, from its summary: "2,670 images (13,515 captions) split into
    2,269 train / 134 val / 267 test; image cache of 2,670 images at 64 px."."""
    images = {s: summary[f"{s}_images"] for s in splits.SPLITS}
    rows = sum(summary[f"{s}_rows"] for s in splits.SPLITS)
    total = sum(images.values())
    text = (
        f"{count(total)} images ({count(rows)} captions) split into "
        + " / ".join(f"{count(n)} {s}" for s, n in images.items())
        + f"; image cache of {count(total)} images at {summary['image_size']} px"
    )
    if summary.get("dropped_rows"):
        reasons = breakdown(reason_categories(summary.get("dropped_by_reason") or {}), limit=3)
        text += f"; {count(summary['dropped_rows'])} caption rows dropped" + (
            f" ({reasons})" if reasons else ""
        )
    return text + "."


def reason_categories(by_reason: dict) -> dict:
    """Counts by reason merged by category, the text before a reason's first ":" ("unreadable image: ..." ->
    "unreadable image")."""
    merged: dict[str, int] = {}
    for reason, n in by_reason.items():
        category = str(reason).split(":", 1)[0]
        merged[category] = merged.get(category, 0) + int(n)
    return merged


def splits_table(prepared: stages.PreparedDataset):
    """Images, caption rows and captions per image of each split, formatted for reading."""
    return formatted(prepared.counts, column_decimals={"captions_per_image": 2}, readable_headers=True)


def dropped_table(prepared: stages.PreparedDataset):
    """Dropped caption rows by reason (merged by category, `reason_categories`): reason, rows, share of all rows
    read."""
    reasons = reason_categories(prepared.dropped["reason"].value_counts().to_dict())
    kept = sum(len(prepared.tables[s]) for s in splits.SPLITS)
    return counts_table(reasons, "reason", "rows", total=kept + len(prepared.dropped))
