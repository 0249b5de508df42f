"""Benchmark: JPEG decode + ViTImageProcessor (the original path) vs reading the packed image cache.

    python -m benchmarks.bench_image_cache [--n 300] [--size 224]

(d) and (e) time the path training runs: `ImageTextDataset` items one by one, the `ContrastiveCollator`
(tokenising the captions too), and for (d) `normalize_pixel_values` to float32 on the host (a CPU run);
(e) stops at the uint8 batch that a GPU run sends to the device.
All read timings run on ONE core (torch.set_num_threads(1), no workers), best of --repeats passes over
all N images. The one-off build uses every core. Results: a table on stdout and
benchmarks/results/image_cache.json. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import torch
import transformers
from PIL import Image, ImageDraw

# The slow, PIL-based processor: that is what the original pipeline ran (plain ViTImageProcessor
# is the torchvision backend when torchvision is installed).
from transformers import ViTImageProcessorPil

from nbutils.data.cache import ImageGeometry, build_image_cache, processor_mean_std
from nbutils.data.datasets import ContrastiveCollator, ImageTextDataset, normalize_pixel_values
from nbutils.files import write_json
from nbutils.models.tokenizer import train_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "image_cache.json"
TARGET_RATIO = 25.0


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """N photo-like 640x480 JPEGs (quality 90, ~100 KB each, like real photos at that size).

    Natural images have a roughly 1/f spectrum: sum smooth random fields from coarse (strong) to fine
    (weak), add a few hard-edged objects and sensor-like noise. Flat synthetic images decode faster
    than photos and would flatter the original path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = np.zeros((480, 640, 3), np.float32) + rng.uniform(60, 190, 3)
        for k in range(1, 8):  # octave k: a (480 / 2**(7-k)) x (640 / 2**(7-k)) random field, upsampled
            field = rng.normal(128, 40, (max(2, 480 >> (7 - k)), max(2, 640 >> (7 - k)), 3))
            field = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).resize((640, 480), Image.BICUBIC)
            image += (np.asarray(field, np.float32) - 128) * (1.5 / 1.6**k)
        picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(rng.integers(4, 10)):
            x0, y0 = rng.uniform(-100, 640), rng.uniform(-100, 480)
            box = [x0, y0, x0 + rng.uniform(40, 300), y0 + rng.uniform(40, 250)]
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
        noisy = np.asarray(picture, np.float32) + rng.normal(0, 8, (480, 640, 3)).astype(np.float32)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="number of 640x480 JPEGs")
    parser.add_argument("--size", type=int, default=224, help="ViTImageProcessor size")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="rows per read; above ~32 at 224 px each float32 batch exceeds glibc's mmap threshold",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    processor = ViTImageProcessorPil(size=args.size)
    geometry = ImageGeometry.from_processor(processor)
    mean, std = processor_mean_std(processor)
    batches = [np.arange(i, min(i + args.batch_size, args.n)) for i in range(0, args.n, args.batch_size)]

    with tempfile.TemporaryDirectory(prefix="bench_image_cache_") as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp / "jpeg", args.n)
        mean_jpeg_kb = float(np.mean([os.path.getsize(p) for p in paths]) / 1024)

        # One-off build, all cores.
        start = time.perf_counter()
        cache = build_image_cache(paths, tmp / "cache", geometry, progress=False)
        build_s = time.perf_counter() - start
        assert len(cache) == args.n and cache.paths == paths

        torch.set_num_threads(1)

        # (a) original: decode JPEG, convert, processor -> (1, 3, size, size) per image.
        def original():
            for path in paths:
                pixel_values = processor(Image.open(path).convert("RGB"), return_tensors="np").pixel_values
                assert pixel_values.shape == (1, 3, args.size, args.size)

        # (b) cache -> normalised float32 pixel_values, batches of --batch-size.
        def cached_pixel_values():
            for rows in batches:
                pixel_values = cache.pixel_values(rows, mean, std)
                assert pixel_values.shape == (len(rows), 3, args.size, args.size)

        # (c) cache -> uint8 only (normalise later, on the device).
        def cached_uint8():
            for rows in batches:
                images = cache.uint8(rows)
                assert images.shape == (len(rows), args.size, args.size, 3)

        # (d), (e) the training path: what one DataLoader worker and the training step do with a batch.
        table = pd.DataFrame(
            {"image_path": paths, "text": [f"一张照片，第{i}张 photo {i}" for i in range(len(paths))]}
        )
        dataset = ImageTextDataset(cache, table, sampling="image")
        collate = ContrastiveCollator(train_tokenizer(table["text"]))
        assert list(dataset.rows) == list(range(len(paths)))  # item i is cache row i, as in `batches`

        def training_path(normalise):
            def run():
                for rows in batches:
                    batch = collate([dataset[int(i)] for i in rows])
                    pixel_values = batch["pixel_values"]
                    if normalise:
                        pixel_values = normalize_pixel_values(pixel_values, mean, std)
                    assert pixel_values.shape == (len(rows), 3, args.size, args.size)

            return run

        original_s = best_of(args.repeats, original)
        pixel_values_s = best_of(args.repeats, cached_pixel_values)
        uint8_s = best_of(args.repeats, cached_uint8)
        dataset_s = best_of(args.repeats, training_path(normalise=True))
        dataset_uint8_s = best_of(args.repeats, training_path(normalise=False))

        # Honesty check (untimed): both paths give the same numbers for every image.
        max_diff = 0.0
        for rows in batches:
            expected = np.concatenate(
                [
                    processor(Image.open(paths[i]).convert("RGB"), return_tensors="np").pixel_values
                    for i in rows
                ]
            )
            max_diff = max(max_diff, float(np.abs(cache.pixel_values(rows, mean, std) - expected).max()))
        assert max_diff < 1e-5, f"cache differs from ViTImageProcessor by {max_diff}"

    rate = lambda seconds: args.n / seconds  # noqa: E731
    results = {
        "n_images": args.n,
        "source": "640x480 JPEG, quality 90",
        "mean_jpeg_kb": mean_jpeg_kb,
        "size": args.size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "original_img_per_s": rate(original_s),
        "cache_pixel_values_img_per_s": rate(pixel_values_s),
        "cache_uint8_img_per_s": rate(uint8_s),
        "dataset_collate_img_per_s": rate(dataset_s),
        "dataset_collate_uint8_img_per_s": rate(dataset_uint8_s),
        "ratio_pixel_values": original_s / pixel_values_s,
        "ratio_uint8": original_s / uint8_s,
        "target_ratio_pixel_values": TARGET_RATIO,
        "meets_target": original_s / pixel_values_s >= TARGET_RATIO,
        "build_img_per_s": rate(build_s),
        "build_s": build_s,
        "build_workers": os.cpu_count(),
        "cache_bytes_per_image": args.size * args.size * 3,
        "max_abs_diff": max_diff,
        "machine": machine_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(args.out, results)

    print(
        f"{args.n} x 640x480 JPEG (~{mean_jpeg_kb:.0f} KB) -> {args.size}x{args.size}, one core, best of {args.repeats}"
    )
    print(f"{'path':44s} {'img/s':>10s} {'vs (a)':>8s}")
    print(f"{'(a) PIL decode + ViTImageProcessor':44s} {rate(original_s):10.0f} {1:8.1f}x")
    print(
        f"{'(b) ImageCache.pixel_values (float32)':44s} {rate(pixel_values_s):10.0f} "
        f"{original_s / pixel_values_s:8.1f}x"
    )
    print(
        f"{'(c) ImageCache.uint8 (normalise on device)':44s} {rate(uint8_s):10.0f} {original_s / uint8_s:8.1f}x"
    )
    print(
        f"{'(d) training: Dataset+collator+normalise':44s} {rate(dataset_s):10.0f} {original_s / dataset_s:8.1f}x"
    )
    print(
        f"{'(e) training, to the uint8 batch':44s} {rate(dataset_uint8_s):10.0f} "
        f"{original_s / dataset_uint8_s:8.1f}x"
    )
    print(f"one-off build, {os.cpu_count()} cores: {rate(build_s):.0f} img/s ({build_s:.1f} s)")
    print(
        f"max |(a) - (b)| = {max_diff:.2e}; target (b)/(a) >= {TARGET_RATIO:.0f}x: "
        f"{'met' if results['meets_target'] else 'NOT met'}"
    )
    print(f"wrote {args.out}")
    return results


def machine_info() -> dict:
    """What a benchmark's figures depend on: CPU, cores and library versions."""
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
