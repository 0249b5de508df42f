"""The processdata_03 stage: a caption table in; clean image-level splits and an image cache out.

Everything a training notebook needs is written to `<run_dir>/processdata_03/`:
    train.csv val.csv test.csv train_small.csv test_small.csv   image_path,text (one row per caption)
    dropped.csv        row,image_path,text,reason for every row that was left out
    image_processor/   the processor (save_pretrained) whose geometry the cache was built with
    dataset.json       what `load_prepared(run_dir)` reads: tables, cache folder, language, ground truth
The cache itself lives under `data/cache/` so that later runs reuse it (it is rebuilt only when its
inputs or resolution change).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import demo_data, image_cache, importers, splits
from .image_processors import load_image_processor
from .io import DataError, read_json, write_json, write_table

STAGE = "processdata_03"
TABLES = ("train", "val", "test", "train_small", "test_small")


def load_source(source: str, input_format: str = "text_image_csv", images_root: str = "",
                run_dir: str = "", data_dir: str = "data", language: str = "zh", n_images: int = 3000,
                image_size: int = 64, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Read the caption table processdata_03 starts from; returns `(table, info)`.

    `source` is "demo" (generate the demo set under `<data_dir>/demo/`), "processdata_02" (the clean
    table the validator wrote in this run), or a path read with the importer `input_format`.
    `info` has `name` (used to name the cache), `language` and `ground_truth` (demo only).
    """
    if source == "demo":
        out = demo_data.demo_dir(data_dir, language, n_images, image_size, seed)
        table = demo_data.generate_demo_dataset(out, n_images=n_images, image_size=image_size,
                                                language=language, seed=seed)
        return table, {"name": f"demo-{out.name}", "language": language,
                       "ground_truth": str((out / "objects.jsonl").resolve())}
    if source == "processdata_02":
        stage = Path(run_dir) / "processdata_02"
        if not (stage / "clean.csv").is_file():
            raise DataError(f"source='processdata_02' but {stage / 'clean.csv'} does not exist: run processdata_02 first")
        # source.json travels 01 -> 02 -> 03: the demo's ground truth survives the round trip over HTTP.
        origin = read_json(stage / "source.json") if (stage / "source.json").is_file() else {}
        return importers.read_text_image_csv(stage / "clean.csv"), {
            "name": f"{Path(run_dir).resolve().name}-clean", "language": origin.get("language", language),
            "ground_truth": origin.get("ground_truth")}
    if not os.path.exists(source):
        raise DataError(f"source={source!r}: no such file or folder (or use 'demo' / 'processdata_02')")
    table = importers.import_captions(input_format, source, images_root=images_root or None)
    return table, {"name": Path(source).stem, "language": language, "ground_truth": None}


@dataclass
class PreparedDataset:
    """The splits, drops, cache and processor of one processdata_03 run."""

    tables: dict[str, pd.DataFrame]
    dropped: pd.DataFrame
    cache: "image_cache.ImageCache"
    image_processor: object
    info: dict = field(default_factory=dict)

    @property
    def counts(self) -> pd.DataFrame:
        return splits.split_counts({s: self.tables[s] for s in splits.SPLITS})

    @property
    def mean_std(self):
        return image_cache.processor_mean_std(self.image_processor)

    def dataset(self, split: str, return_uint8: bool = False):
        """A torch Dataset of `split` ("train", "val", "test", "train_small", "test_small") read from the cache."""
        mean, std = self.mean_std
        return image_cache.CachedImageTextDataset(self.cache, self.tables[split], mean, std,
                                                  return_uint8=return_uint8)

    def summary(self) -> dict:
        out = {}
        for s in splits.SPLITS:
            out[f"{s}_images"] = int(self.tables[s]["image_path"].nunique())
            out[f"{s}_rows"] = int(len(self.tables[s]))
        out["dropped_rows"] = int(len(self.dropped))
        out["dropped_by_reason"] = {str(k): int(v) for k, v in self.dropped["reason"].value_counts().items()}
        out["cache_format"] = "memmap-uint8"
        out["image_size"] = int(self.cache.geometry.height)
        out["cache_dir"] = str(self.cache.cache_dir)
        out["language"] = self.info.get("language")
        return out


def prepare_dataset(table: pd.DataFrame, output_dir, *, dataset_name: str, image_processor: str = "vit",
                    image_size: int = 64, data_dir="data", cache_dir: str = "", val_fraction: float = 0.05,
                    test_fraction: float = 0.1, small_train_images: int = 500, small_test_images: int = 100,
                    seed: int = 0, num_workers: int = 0, max_caption_chars: int = 0, language: str = "zh",
                    ground_truth: str | None = None, source_label: str = "input table") -> PreparedDataset:
    """Clean `table`, cache its images, split by image, and write everything to `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    processor = load_image_processor(image_processor, image_size)
    geometry = image_cache.ImageGeometry.from_processor(processor)

    clean, dropped = splits.clean_captions(table, source=source_label, max_caption_chars=max_caption_chars)
    if clean.empty:
        raise DataError(f"{source_label}: no usable rows left after cleaning "
                        f"({dropped['reason'].value_counts().to_dict()})")

    if not cache_dir:
        cache_dir = Path(data_dir) / "cache" / f"{dataset_name}-{geometry.height}x{geometry.width}-{geometry.resize}"
    cache_dir = Path(cache_dir).resolve()
    cache = image_cache.build_image_cache(clean["image_path"].unique(), cache_dir, geometry,
                                          num_workers=num_workers or None)
    clean, unreadable = splits.drop_images(clean, cache.failed)
    dropped = pd.concat([dropped, unreadable], ignore_index=True)

    tables = splits.split_by_image(clean, val_fraction, test_fraction, seed)
    splits.assert_no_leakage(tables)
    tables["train_small"] = splits.image_subset(tables["train"], small_train_images, seed)
    tables["test_small"] = splits.image_subset(tables["test"], small_test_images, seed)

    for name in TABLES:
        write_table(tables[name], output_dir / f"{name}.csv")
    write_table(dropped, output_dir / "dropped.csv")
    processor.save_pretrained(output_dir / "image_processor")
    info = {"name": dataset_name, "language": language, "ground_truth": ground_truth,
            "tables": {name: f"{name}.csv" for name in TABLES}, "cache_dir": str(Path(cache_dir).resolve()),
            "image_processor": "image_processor", "geometry": geometry.to_dict()}
    write_json(output_dir / "dataset.json", info)
    return PreparedDataset(tables, dropped, cache, processor, info)


def load_prepared(run_dir) -> PreparedDataset:
    """Reopen what processdata_03 wrote in `run_dir` (for the training notebooks)."""
    stage = Path(run_dir) / STAGE
    if not (stage / "dataset.json").is_file():
        raise DataError(f"{stage / 'dataset.json'} not found: run processdata_03 for this run first")
    info = read_json(stage / "dataset.json")
    tables = {name: pd.read_csv(stage / f, dtype=str, keep_default_na=False) for name, f in info["tables"].items()}
    dropped = pd.read_csv(stage / "dropped.csv", dtype={"text": str}, keep_default_na=False)
    processor = load_image_processor(str(stage / info["image_processor"]))
    return PreparedDataset(tables, dropped, image_cache.ImageCache(info["cache_dir"]), processor, info)
