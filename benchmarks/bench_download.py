"""Benchmark: the downloader's throughput with 1, 8 and 32 worker threads against a slow-ish host.

    python -m benchmarks.bench_download [--n 300] [--delay 0.02] [--workers 1 8 32]

A FaultServer in a separate process (so it does not share the client's GIL) serves N distinct
~50 KB JPEGs, each answer held back by --delay seconds to model network latency. Each worker count
downloads all N into a fresh temporary folder; a last pass adds resize_shorter_side=224 at the
highest worker count (the CPU cost of shrinking at download time). Results: a table on stdout and
benchmarks/results/download.json. The original downloader managed ~38 img/s (FIELD_NOTES).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from nbutils.data.download import DownloadConfig, download_images
from nbutils.demo.fault_server import FaultServer, Route
from nbutils.files import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "download.json"
DISTINCT_IMAGES = 8  # bodies cycled over the N urls (the client cannot tell)
RESIZE_SIDE = 224


def make_jpeg(seed: int, size=(400, 300), quality: int = 88) -> bytes:
    """A photo-like JPEG of ~50 KB: a smooth random field plus fine noise (flat images are ~5 KB)."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)).resize(
        size, Image.BICUBIC
    )
    pixels = np.asarray(coarse, np.float32) + rng.normal(0, 13, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _serve(bodies: list[bytes], n: int, delay: float, conn) -> None:
    routes = {f"/img/{i:06d}.jpg": Route(body=bodies[i % len(bodies)], delay=delay) for i in range(n)}
    server = FaultServer(routes)
    with server:
        conn.send(server.base_url)
        conn.recv()  # serve until the parent says stop


def run(n: int, delay: float, worker_counts: list[int]) -> dict:
    bodies = [make_jpeg(seed) for seed in range(DISTINCT_IMAGES)]
    parent, child = mp.Pipe()
    server = mp.get_context("fork").Process(target=_serve, args=(bodies, n, delay, child), daemon=True)
    server.start()
    try:
        base_url = parent.recv()
        manifest = pd.DataFrame(
            {
                "url": [f"{base_url}/img/{i:06d}.jpg" for i in range(n)],
                "text": [f"caption {i}" for i in range(n)],
            }
        )
        runs = [(w, 0) for w in worker_counts] + [(max(worker_counts), RESIZE_SIDE)]
        results = []
        for workers, resize in runs:
            with tempfile.TemporaryDirectory() as tmp:
                config = DownloadConfig(workers=workers, resize_shorter_side=resize)
                start = time.perf_counter()
                result = download_images(manifest, tmp, config, progress=False)
                seconds = time.perf_counter() - start
            if result.summary["ok"] != n:
                raise RuntimeError(
                    f"{workers} workers: only {result.summary['ok']} of {n} ok: "
                    f"{result.summary['failed_by_kind']}"
                )
            results.append(
                {
                    "workers": workers,
                    "resize_shorter_side": resize,
                    "seconds": round(seconds, 3),
                    "rows_per_second": result.summary["rows_per_second"],
                    "mean_stored_kb": round(result.summary["bytes"] / n / 1000, 1),
                }
            )
    finally:
        parent.send("stop")
        server.join(timeout=10)
    base = results[0]["rows_per_second"]
    for r in results:
        r["speedup_vs_1_worker"] = round(r["rows_per_second"] / base, 2)
    return {
        "n": n,
        "delay_s": delay,
        "mean_image_kb": round(sum(map(len, bodies)) / len(bodies) / 1000, 1),
        "ideal_one_worker_rows_per_second": round(1 / delay, 1) if delay else None,
        "results": results,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="distinct urls to download per run")
    parser.add_argument(
        "--delay", type=float, default=0.02, help="seconds the server waits before each answer"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    report = run(args.n, args.delay, args.workers)
    print(
        f"{args.n} JPEGs of ~{report['mean_image_kb']} KB, {args.delay * 1000:.0f} ms server delay, "
        f"{report['machine']['cpu_count']} CPUs"
    )
    print(f"{'workers':>8} {'resize':>7} {'seconds':>8} {'rows/s':>8} {'speed-up':>9}")
    for r in report["results"]:
        print(
            f"{r['workers']:>8} {r['resize_shorter_side'] or '-':>7} {r['seconds']:>8.2f} "
            f"{r['rows_per_second']:>8.1f} {r['speedup_vs_1_worker']:>8.2f}x"
        )
    write_json(RESULTS, report)
    print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
