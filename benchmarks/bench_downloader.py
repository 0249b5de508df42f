"""Benchmark: processdata_01's downloader against a baseline on the faulty local site, interleaved.

    python -m benchmarks.bench_downloader [--n 3000] [--rounds 2] [--workers 16] [--baseline HEAD]
                                          [--img2dataset /tmp/i2d/bin/img2dataset] [--profile]

A FaultServer in a separate process serves N distinct urls per run with the demo site's fault mix
(`fault_counts(n, slow_count=0)`: 404s, flaky 500s, cut-off bodies, HTML pages, redirect loops,
oversized bodies, ...; no slow hosts, whose fixed timeouts would measure nothing but the clock).
Each run downloads its own fresh urls in a fresh process, so the runs share neither connections nor
a GIL. The runs alternate, round after round: the downloader of this tree, the one of git revision
`--baseline` (copied at run time from `git show`), and img2dataset if its executable is given
(`python -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset==1.47.0`). Figures per run:
rows/s (distinct urls / wall seconds) and CPU ms per url (the client process's user + system time).
The script fails unless this tree's downloader classifies every url as the baseline does.
img2dataset's outcomes are not compared (it has its own failure categories). `--profile` runs this
tree's downloader once more under cProfile, one profiler per thread on that thread's CPU clock, and
prints the top functions. Results: a table on stdout and benchmarks/results/downloader.json.

On this site the retries dominate the wall time: a flaky or cut-off url waits 0.5 s, 1 s, 2 s before
its retries (the defaults). A thread that sleeps through them (the HEAD downloader) serves no other
url meanwhile; this tree's downloader parks such urls and keeps its threads busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nbutils.demo.fault_server import FaultServer, Route
from nbutils.demo.website import _routes_for, fault_counts
from nbutils.files import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "downloader.json"
MAX_BYTES = 2_000_000  # the demo's max_bytes: "oversized" bodies are this plus 100 KB
DISTINCT_IMAGES = 16
IMAGE_SIZE = 64  # the demo's image size


def demo_like_jpeg(seed: int) -> bytes:
    """A 64 px JPEG of a few kB, like the demo set's images."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def write_images(folder: Path) -> list[Path]:
    """The DISTINCT_IMAGES JPEGs every run's urls serve, as files (the site reads its bodies per request)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{seed:02d}.jpg" for seed in range(DISTINCT_IMAGES)]
    for seed, file in enumerate(files):
        file.write_bytes(demo_like_jpeg(seed))
    return files


def site_routes(n: int, prefix: str, images: list[Path]) -> tuple[dict[str, Route], list[str]]:
    """Routes of one run's N urls (under `prefix`) with the demo's fault mix, and the url paths in order."""
    counts = fault_counts(n, slow_count=0)
    kinds = [k for k, c in counts.items() for _ in range(c)]
    kinds = [kinds[j] for j in np.random.default_rng(0).permutation(n)]
    routes, paths = {}, []
    for i, kind in enumerate(kinds):
        path = f"/images/{i:06d}.jpg"
        fault = "ok" if kind == "duplicate" else kind
        for p, route in _routes_for(
            fault, path, images[i % len(images)], IMAGE_SIZE, MAX_BYTES, 3.0, 0, i
        ).items():
            if route.redirect_to:  # both halves of a redirect loop live under the run's prefix
                route = dataclasses.replace(route, redirect_to=prefix + route.redirect_to)
            routes[prefix + p] = route
        paths.append(prefix + path)
    return routes, paths


def _serve(routes: dict, conn) -> None:
    with FaultServer(routes) as server:
        conn.send(server.base_url)
        while conn.recv() == "cpu":  # serve until the parent says stop; tell it the CPU spent so far
            usage = resource.getrusage(resource.RUSAGE_SELF)
            conn.send(usage.ru_utime + usage.ru_stime)


# ----------------------------------------------------------------------------- one run, in its own process

RUNNER = r"""
import importlib.util, json, resource, sys, time
import pandas as pd
module_path, urls_file, out_dir, workers, max_bytes, profile = sys.argv[1:7]
if module_path == "-":
    from nbutils.data import download
else:  # the baseline's copy, loaded inside the package so its relative imports resolve
    spec = importlib.util.spec_from_file_location("nbutils.data._baseline_download", module_path)
    download = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = download
    spec.loader.exec_module(download)
urls = open(urls_file, encoding="utf-8").read().split()
manifest = pd.DataFrame({"url": urls, "text": ["x"] * len(urls)})
config = download.DownloadConfig(workers=int(workers), max_bytes=int(max_bytes))
profilers = []
if profile != "-":  # one cProfile per thread, on the thread's CPU clock: waiting costs nothing
    import cProfile, threading
    def per_thread(*args):
        profilers.append(cProfile.Profile(time.thread_time))
        profilers[-1].enable()  # replaces this hook in the new thread
    threading.setprofile(per_thread)
    profilers.append(cProfile.Profile(time.thread_time))
    profilers[-1].enable()
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
result = download.download_images(manifest, out_dir, config, progress=False)
seconds = time.perf_counter() - start
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
if profilers:
    import pstats
    profilers[0].disable()
    stats = pstats.Stats(*profilers)
    stats.dump_stats(profile)
cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
kinds = dict(zip(result.status["url"], result.status["error_kind"].where(result.status["status"] != "ok", "ok")))
print(json.dumps({"seconds": seconds, "cpu": cpu, "kinds": kinds}))
"""


def run_nbutils(module_path: str, urls: list[str], workers: int, profile: str = "-") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        urls_file = Path(tmp) / "urls.txt"
        urls_file.write_text("\n".join(urls), encoding="utf-8")
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                RUNNER,
                module_path,
                str(urls_file),
                str(Path(tmp) / "out"),
                str(workers),
                str(MAX_BYTES),
                profile,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode:
        raise RuntimeError(f"downloader run ({module_path}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_img2dataset(executable: str, urls: list[str], workers: int) -> dict:
    """img2dataset with 2 processes x `workers` threads, files kept as served (no re-encoding)."""
    with tempfile.TemporaryDirectory() as tmp:
        urls_file = Path(tmp) / "urls.txt"
        urls_file.write_text("\n".join(urls), encoding="utf-8")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        out = subprocess.run(
            [
                executable,
                f"--url_list={urls_file}",
                f"--output_folder={Path(tmp) / 'out'}",
                "--input_format=txt",
                "--output_format=files",
                "--processes_count=2",
                f"--thread_count={workers}",
                "--resize_mode=no",
                "--disable_all_reencoding=True",
                "--retries=3",
                "--timeout=20",
                "--number_sample_per_shard=1000",
                "--enable_wandb=False",
                "--distributor=multiprocessing",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode:
            raise RuntimeError(f"img2dataset failed:\n{out.stderr[-3000:]}")
        ok = sum(json.loads(p.read_text())["successes"] for p in (Path(tmp) / "out").glob("*_stats.json"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu": cpu, "ok": ok}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="distinct urls per run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every contender")
    parser.add_argument("--workers", type=int, default=16, help="threads (img2dataset: per process)")
    parser.add_argument("--baseline", default="HEAD", help="git revision of the baseline downloader")
    parser.add_argument("--img2dataset", default="", help="img2dataset executable; empty: leave it out")
    parser.add_argument(
        "--profile", action="store_true", help="profile one more run of this tree's downloader"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_downloader_"))
    baseline = work / "baseline_download.py"
    baseline.write_bytes(
        subprocess.run(
            ["git", "show", f"{args.baseline}:nbutils/data/download.py"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    )
    contenders = {"baseline": str(baseline), "this tree": "-"}
    if args.img2dataset:
        contenders["img2dataset"] = args.img2dataset
    runs = [(r, name) for r in range(args.rounds) for name in contenders] + (
        [(args.rounds, "profile")] if args.profile else []
    )
    routes, plan = {}, []
    images = write_images(work / "site")
    for k, (r, name) in enumerate(runs):
        run_routes, paths = site_routes(args.n, f"/run{k}", images)
        routes.update(run_routes)
        plan.append((r, name, paths))
    parent, child = mp.Pipe()
    server = mp.get_context("fork").Process(target=_serve, args=(routes, child), daemon=True)
    server.start()
    figures: dict[str, list[dict]] = {name: [] for name in contenders}
    kinds: dict[str, dict] = {}
    try:
        base_url = parent.recv()
        for r, name, paths in plan:
            urls = [base_url + p for p in paths]
            parent.send("cpu")
            server_cpu = parent.recv()
            if name == "img2dataset":
                got = run_img2dataset(args.img2dataset, urls, args.workers)
            else:
                profile = str(work / "profile.pstats") if name == "profile" else "-"
                got = run_nbutils(contenders.get(name, "-"), urls, args.workers, profile)
                kinds[name] = {u[len(base_url) :].split("/", 2)[2]: k for u, k in got.pop("kinds").items()}
            parent.send("cpu")
            server_cpu = parent.recv() - server_cpu
            if name == "profile":
                continue
            got.update(
                rows_per_second=args.n / got["seconds"],
                cpu_ms_per_url=1000 * got["cpu"] / args.n,
                server_cpu_ms_per_url=1000 * server_cpu / args.n,
            )
            figures[name].append(got)
            print(
                f"round {r}: {name:<12} {got['rows_per_second']:8.1f} rows/s  {got['cpu_ms_per_url']:6.2f} ms CPU/url"
                f"  (server {got['server_cpu_ms_per_url']:.2f} ms/url)",
                flush=True,
            )
    finally:
        parent.send("stop")
        server.join(timeout=10)
    differ = {
        p: (kinds["baseline"][p], k) for p, k in kinds["this tree"].items() if kinds["baseline"][p] != k
    }
    if differ:
        raise RuntimeError(
            f"{len(differ)} urls classified differently from the baseline, e.g. {list(differ.items())[:5]}"
        )

    def median(name, key):
        return statistics.median(f[key] for f in figures[name])

    report = {
        "n": args.n,
        "rounds": args.rounds,
        "workers": args.workers,
        "baseline": args.baseline,
        "fault_mix": fault_counts(args.n, slow_count=0),
        "runs": figures,
        "median": {
            name: {
                "rows_per_second": round(median(name, "rows_per_second"), 1),
                "cpu_ms_per_url": round(median(name, "cpu_ms_per_url"), 3),
            }
            for name in figures
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    base = report["median"]["baseline"]
    print(f"\n{args.n} urls per run, demo fault mix, {args.workers} threads, {os.cpu_count()} CPUs (medians)")
    print(f"{'downloader':<12} {'rows/s':>8} {'vs baseline':>12} {'CPU ms/url':>11} {'vs baseline':>12}")
    for name, m in report["median"].items():
        print(
            f"{name:<12} {m['rows_per_second']:>8.1f} {m['rows_per_second'] / base['rows_per_second']:>11.2f}x "
            f"{m['cpu_ms_per_url']:>11.2f} {m['cpu_ms_per_url'] / base['cpu_ms_per_url']:>11.2f}x"
        )
    if args.profile:
        out = io.StringIO()
        pstats.Stats(str(work / "profile.pstats"), stream=out).sort_stats("cumulative").print_stats(45)
        print(out.getvalue())
    write_json(RESULTS, report)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
