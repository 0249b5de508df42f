"""Benchmark: the data stages at scale, with both image cache formats. Large: not in `make bench` or the tests.

    python -m benchmarks.bench_scale [--n 10000 100000] [--image-size 256] [--cache-size 224]

For each N, a generated demo set of N images at --image-size is served by the faulty local demo site and run
through processdata_01 (download), processdata_02 (validate) and processdata_03 twice (a memmap cache, then a JPEG
shard cache, at --cache-size), each stage by `python -m nbutils run --only <stage>` in its own process, so that its
peak memory is that process's and its kernel's (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`). Reported per
stage: seconds, seconds per 1,000 images, peak memory, and the cache's disk size; then the cost per image of the
largest N against the smallest (goal: within 1.2x) and a projection to 1.37M images (hours, disk). Results: a
table on stdout and benchmarks/results/scale.json. Runs go to a temporary outputs folder and data folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nbutils.files import write_json

from .bench_image_cache import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
REPO = Path(__file__).resolve().parents[1]
PROJECT_SIZE = 1_370_000  # the original project's manifest


def run_stage(stage: str, run: str, outputs: Path, params: list[str]) -> dict:
    """One stage of `run` in a process of its own: seconds and peak memory (MB) of it and its kernel."""
    command = [sys.executable, "-m", "nbutils", "run", "--profile", "demo", "--run", run, "--only", stage]
    command += ["--outputs-dir", str(outputs)] + [x for p in params for x in ("-p", p)]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, *command], capture_output=True, text=True, cwd=REPO
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    peak_kb = json.loads(done.stdout.strip().splitlines()[-1])["peak_kb"]
    return {"seconds": seconds, "peak_mb": peak_kb / 1024}


# Runs a command and prints the largest resident set of it and its children (the kernel) as the last line.
_MEASURED = """
import json, resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
sys.exit(code)
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(n: int, image_size: int, cache_size: int, root: Path) -> dict:
    """The data stages on n generated images; both cache formats at processdata_03."""
    data, outputs = root / "data", root / "outputs"
    source = f"demo?n_images={n}&image_size={image_size}&data_dir={data}"
    stages = {
        "processdata_01": run_stage("processdata_01", f"n{n}", outputs, [f"processdata_01.source={source}"]),
        "processdata_02": run_stage("processdata_02", f"n{n}", outputs, []),
    }
    for cache_format in ("memmap", "shards"):
        params = [f"data_dir={data}", f"image_size={cache_size}", f"cache_format={cache_format}"]
        result = run_stage("processdata_03", f"n{n}", outputs, params)
        prepared = json.loads((outputs / f"n{n}" / "processdata_03" / "summary.json").read_text())
        result["cache_bytes"] = folder_bytes(Path(prepared["cache_dir"]))
        result["images"] = sum(prepared[f"{s}_images"] for s in ("train", "val", "test"))
        stages[f"processdata_03 ({cache_format})"] = result
    for result in stages.values():
        result["seconds_per_1000"] = 1000 * result["seconds"] / n
    return {"n": n, "stages": stages}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="images per run")
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--cache-size", type=int, default=224, help="processdata_03's image_size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    runs = []
    for n in sorted(args.n):
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as root:
            runs.append(measure(n, args.image_size, args.cache_size, Path(root)))
        for stage, r in runs[-1]["stages"].items():
            disk = (
                f", cache {r['cache_bytes'] / r['images'] / 1024:.1f} KB/image" if "cache_bytes" in r else ""
            )
            print(
                f"n={n:>7,}  {stage:<26} {r['seconds']:8.1f} s  {r['seconds_per_1000']:6.2f} s/1k  "
                f"peak {r['peak_mb']:6.0f} MB{disk}"
            )
    small, large = runs[0], runs[-1]
    ratios = {
        stage: large["stages"][stage]["seconds_per_1000"] / small["stages"][stage]["seconds_per_1000"]
        for stage in small["stages"]
    }
    projection = {
        stage: {
            "hours": r["seconds_per_1000"] * PROJECT_SIZE / 1000 / 3600,
            "cache_gb": r["cache_bytes"] / r["images"] * PROJECT_SIZE / 1e9 if "cache_bytes" in r else None,
        }
        for stage, r in large["stages"].items()
    }
    if len(runs) > 1:
        print(
            f"cost per image, n={large['n']:,} vs n={small['n']:,}: "
            + ", ".join(f"{s} {v:.2f}x" for s, v in ratios.items())
        )
    for stage, p in projection.items():
        disk = f", {p['cache_gb']:.0f} GB of cache" if p["cache_gb"] else ""
        print(f"projected to {PROJECT_SIZE:,} images: {stage} {p['hours']:.1f} h{disk}")
    write_json(
        args.out,
        {
            "machine": machine_info(),
            "max_rss_of_this_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "settings": vars(args) | {"out": str(args.out)},
            "runs": runs,
            "cost_ratio_largest_vs_smallest": ratios,
            "projection": projection,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
