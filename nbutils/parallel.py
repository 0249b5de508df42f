"""Map a function over chunks of work in a process pool, in order, with a progress bar.

Image work (decoding, validating, drawing the demo set) is CPU-bound Python, so it needs processes,
not threads. Work goes out in chunks (one pickle round trip per chunk, not per image), results come
back in input order (so outputs do not depend on timing), and an error or Ctrl-C drops the queued
chunks instead of finishing them first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from math import ceil

from .progress import tqdm


def split_into_chunks(items: Sequence, num_workers: int, max_chunk: int) -> list:
    """Consecutive slices of `items`: at most `max_chunk` long, and small runs still split over every worker."""
    size = max(1, min(max_chunk, ceil(len(items) / (4 * max(num_workers, 1)))))
    return [items[i : i + size] for i in range(0, len(items), size)]


@contextlib.contextmanager
def process_pool(num_workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of `num_workers` processes, or None for `num_workers <= 1` (then work runs in this process).

    On an error or Ctrl-C the queued chunks are dropped instead of being finished first.
    """
    if num_workers <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=num_workers)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def map_chunks(
    fn: Callable,
    chunks: Sequence,
    *args,
    pool: ProcessPoolExecutor | None,
    desc: str,
    unit: str = "img",
    progress: bool = True,
) -> Iterator:
    """Yield `fn(chunk, *args)` for each chunk, in order, from `pool` (or in this process if None).

    `fn` must be a module-level function (it is pickled to the workers). The bar counts items.
    """
    if pool is None or len(chunks) <= 1:
        results = (fn(chunk, *args) for chunk in chunks)
    else:
        results = pool.map(fn, chunks, *([arg] * len(chunks) for arg in args))
    with tqdm(total=sum(len(c) for c in chunks), unit=unit, desc=desc, disable=not progress) as bar:
        for chunk, result in zip(chunks, results):
            yield result
            bar.update(len(chunk))
