"""Benchmark: the JPEG shard cache against the uint8 memmap and the original PIL + processor path.

    python -m benchmarks.bench_shards [--n 500] [--size 224] [--quality 94]

Measures, on the photo-like 640x480 JPEGs of `bench_image_cache.make_jpegs`:
    disk   bytes per image of each cache folder (every file in it; goal: shards at most 1/5 of the memmap)
    speed  images/s of the training path on ONE core, in this process (what one DataLoader worker does):
           `ImageTextDataset` items + `ContrastiveCollator` to the uint8 batch, for the shards (JPEG decode per
           item) and the memmap; and the original path, PIL decode + ViTImageProcessor per image
           (goal: shards >= 800 images/s)
    pixels mean absolute error (uint8 levels) and PSNR of the shards' pixels against the memmap's, which are
           the processor's own pixels
Best of --repeats passes over all N images; the one-off builds use every core. Speeds depend on what else runs
on the machine; ratios within one run compare like with like. Results: a table on stdout and
benchmarks/results/shards.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from nbutils.data.cache import ImageGeometry, build_image_cache
from nbutils.data.datasets import ContrastiveCollator, ImageTextDataset
from nbutils.data.shards import JPEG_QUALITY, build_shard_cache, bytes_per_image
from nbutils.files import write_json
from nbutils.models.tokenizer import train_tokenizer

from .bench_image_cache import best_of, machine_info, make_jpegs

RESULTS = Path(__file__).resolve().parent / "results" / "shards.json"
TARGET_BYTES_RATIO = 5.0  # memmap bytes / shard bytes
TARGET_SHARDS_IMG_PER_S = 800.0


def pixel_agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(mean absolute error in uint8 levels, PSNR in dB) of `other` against `reference`."""
    difference = reference.astype(np.float64) - other.astype(np.float64)
    mse = float(np.mean(difference**2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    return float(np.mean(np.abs(difference))), psnr


def training_path(cache, table: pd.DataFrame, collate, batch_size: int):
    """A pass of the training path over `cache`: Dataset items one by one, collated to uint8 batches."""
    dataset = ImageTextDataset(cache, table, sampling="image")
    batches = [range(i, min(i + batch_size, len(dataset))) for i in range(0, len(dataset), batch_size)]

    def run():
        for rows in batches:
            batch = collate([dataset[k] for k in rows])
            assert batch["pixel_values"].dtype == torch.uint8 and len(batch["pixel_values"]) == len(rows)

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=500, help="number of 640x480 JPEGs")
    parser.add_argument("--size", type=int, default=224, help="ViTImageProcessor size")
    parser.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality of the shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per tar shard")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    processor = ViTImageProcessorPil(size=args.size)
    geometry = ImageGeometry.from_processor(processor)

    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp / "jpeg", args.n)
        texts = [f"一张照片，第{i}张 photo {i}" for i in range(len(paths))]
        table = pd.DataFrame({"image_path": paths, "text": texts})

        start = time.perf_counter()
        memmap = build_image_cache(paths, tmp / "memmap", geometry, progress=False)
        memmap_build_s = time.perf_counter() - start
        start = time.perf_counter()
        shards = build_shard_cache(
            paths,
            tmp / "shards",
            geometry,
            captions={p: [t] for p, t in zip(paths, texts)},
            quality=args.quality,
            shard_size=args.shard_size,
            progress=False,
        )
        shards_build_s = time.perf_counter() - start
        assert shards.paths == memmap.paths == paths
        memmap_bytes, shard_bytes = bytes_per_image(memmap), bytes_per_image(shards)

        rows = np.arange(len(paths))
        mae, psnr = pixel_agreement(memmap.uint8(rows), shards.uint8(rows))

        torch.set_num_threads(1)
        collate = ContrastiveCollator(train_tokenizer(table["text"]))

        def original():
            for path in paths:
                pixel_values = processor(Image.open(path).convert("RGB"), return_tensors="np").pixel_values
                assert pixel_values.shape == (1, 3, args.size, args.size)

        original_s = best_of(args.repeats, original)
        memmap_s = best_of(args.repeats, training_path(memmap, table, collate, args.batch_size))
        shards_s = best_of(args.repeats, training_path(shards, table, collate, args.batch_size))

    rate = lambda seconds: args.n / seconds  # noqa: E731
    results = {
        "n_images": args.n,
        "source": "640x480 JPEG, quality 90",
        "size": args.size,
        "jpeg_quality": args.quality,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "memmap_bytes_per_image": memmap_bytes,
        "shards_bytes_per_image": shard_bytes,
        "bytes_ratio": memmap_bytes / shard_bytes,
        "target_bytes_ratio": TARGET_BYTES_RATIO,
        "original_img_per_s": rate(original_s),
        "memmap_training_img_per_s": rate(memmap_s),
        "shards_training_img_per_s": rate(shards_s),
        "target_shards_img_per_s": TARGET_SHARDS_IMG_PER_S,
        "mae_uint8_levels": mae,
        "psnr_db": psnr,
        "memmap_build_img_per_s": rate(memmap_build_s),
        "shards_build_img_per_s": rate(shards_build_s),
        "build_workers": os.cpu_count(),
        "machine": machine_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(args.out, results)

    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"{args.n} x 640x480 JPEG -> {args.size}x{args.size}; shards at quality {args.quality}")
    print(
        f"disk: memmap {memmap_bytes / 1024:.1f} KB/image, shards {shard_bytes / 1024:.1f} KB/image, "
        f"{memmap_bytes / shard_bytes:.1f}x smaller (goal >= {TARGET_BYTES_RATIO:.0f}x: "
        f"{met(memmap_bytes / shard_bytes >= TARGET_BYTES_RATIO)})"
    )
    print(f"training path, one core, best of {args.repeats}:")
    print(f"  {'original: PIL decode + ViTImageProcessor':42s} {rate(original_s):8.0f} img/s")
    print(f"  {'memmap: Dataset + collator, uint8 batch':42s} {rate(memmap_s):8.0f} img/s")
    print(
        f"  {'shards: Dataset + collator, uint8 batch':42s} {rate(shards_s):8.0f} img/s "
        f"(goal >= {TARGET_SHARDS_IMG_PER_S:.0f}: {met(rate(shards_s) >= TARGET_SHARDS_IMG_PER_S)}; "
        f"{original_s / shards_s:.1f}x the original, {shards_s / memmap_s:.1f}x the memmap's time)"
    )
    print(f"pixels vs the memmap: MAE {mae:.2f} uint8 levels, PSNR {psnr:.1f} dB")
    print(
        f"one-off builds, {os.cpu_count()} cores: memmap {rate(memmap_build_s):.0f} img/s, "
        f"shards {rate(shards_build_s):.0f} img/s"
    )
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
