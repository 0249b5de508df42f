"""Benchmark: validate_images (processdata_02) on one core vs all cores.

    python -m benchmarks.bench_validate [--n 400] [--repeats 2]

Generates --n photo-like 640x480 JPEGs (the same generator as bench_image_cache) plus a handful of
faulty and odd files (empty, HTML page, truncated, tiny, CMYK, RGBA PNG, duplicates), then times the
whole `validate_images` call (check every image with a full decode, normalise, write the tables) with
num_workers=1 and with all cores, best of --repeats runs, each into a fresh output folder.
Results: stdout and benchmarks/results/validate.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
from PIL import Image

from benchmarks.bench_image_cache import _cpu_name, make_jpegs
from nbutils.data.validate import ValidationConfig, validate_images
from nbutils.files import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "validate.json"


def make_faulty(folder: Path, photo: str) -> list[str]:
    """The kinds of file a web download leaves behind, one each (three duplicates)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(photo).read_bytes()
    files = {
        "empty.jpg": b"",
        "error_page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "truncated.jpg": data[: len(data) // 2],
        "copy_1.jpg": data,
        "copy_2.jpg": data,
        "copy_3.jpg": data,
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    rgb = Image.open(photo).convert("RGB")
    rgb.resize((16, 12)).save(folder / "thumbnail.jpg")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    return sorted(str(p) for p in folder.iterdir())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="number of 640x480 JPEGs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="bench_validate_") as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp / "jpeg", args.n) + make_faulty(
            tmp / "faulty", str(tmp / "jpeg" / "00000.jpg")
        )
        # two captions per image, like a real caption table
        table = pd.DataFrame(
            {
                "image_path": [p for p in paths for _ in range(2)],
                "text": [f"caption {k}" for k in range(2 * len(paths))],
            }
        )
        mean_jpeg_kb = float(np.mean([os.path.getsize(p) for p in paths[: args.n]]) / 1024)

        def run(num_workers):
            times, result = [], None
            for _ in range(args.repeats):
                out = tmp / "out"
                shutil.rmtree(out, ignore_errors=True)  # fresh: nothing to reuse from the last run
                start = time.perf_counter()
                result = validate_images(
                    table, out, ValidationConfig(num_workers=num_workers), progress=False
                )
                times.append(time.perf_counter() - start)
            return min(times), result

        serial_s, serial = run(1)
        parallel_s, parallel = run(0)
        pd.testing.assert_frame_equal(serial.clean, parallel.clean)  # same answer either way
        pd.testing.assert_frame_equal(serial.rejects, parallel.rejects)

    n_images = len(paths)
    summary = {
        k: serial.summary[k]
        for k in ("checked", "clean", "rejected", "rejected_by_reason", "duplicates", "normalised")
    }
    results = {
        "n_images": n_images,
        "n_rows": len(table),
        "source": f"{args.n} x 640x480 JPEG quality 90 + {n_images - args.n} faulty/odd files",
        "mean_jpeg_kb": mean_jpeg_kb,
        "repeats": args.repeats,
        "serial_img_per_s": n_images / serial_s,
        "parallel_img_per_s": n_images / parallel_s,
        "parallel_workers": cores,
        "speedup": serial_s / parallel_s,
        "serial_s": serial_s,
        "parallel_s": parallel_s,
        "summary": summary,
        "machine": {
            "cpu": _cpu_name(),
            "cores": cores,
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(args.out, results)

    print(
        f"validate_images: {n_images} images ({args.n} x 640x480 JPEG ~{mean_jpeg_kb:.0f} KB + faulty), "
        f"{len(table)} rows, best of {args.repeats}"
    )
    print(f"{'num_workers=1':24s} {n_images / serial_s:8.0f} img/s  ({serial_s:.2f} s)")
    print(f"{f'all cores ({cores})':24s} {n_images / parallel_s:8.0f} img/s  ({parallel_s:.2f} s)")
    print(f"speed-up {serial_s / parallel_s:.2f}x; {summary}")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
