"""Chunked work in a process pool: results in input order, errors from workers reach the caller."""

import os
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from nbutils.parallel import map_chunks, process_pool, split_into_chunks


def _shift(chunk, offset):
    """Worker: (pid, each item + offset); the chunk starting at 0 finishes last."""
    if chunk[0] == 0:
        time.sleep(0.3)
    return os.getpid(), [x + offset for x in chunk]


def _fail_on_13(chunk):
    if 13 in chunk:
        raise ValueError(f"cannot process {chunk}")
    return list(chunk)


def _expected(chunks, offset):
    return [[x + offset for x in chunk] for chunk in chunks]


@pytest.mark.parametrize(
    "items, num_workers, max_chunk, sizes",
    [
        (list(range(100)), 2, 64, [13] * 7 + [9]),  # ceil(100 / (4 * 2)) = 13
        (list(range(100)), 1, 10, [10] * 10),  # capped by max_chunk
        (list(range(1000)), 4, 64, [63] * 15 + [55]),  # ceil(1000 / 16) = 63
        (list(range(3)), 8, 64, [1, 1, 1]),  # a small run still splits over the workers
        (list(range(8)), 0, 64, [2] * 4),  # no workers counts as one
        ([], 4, 64, []),
    ],
)
def test_split_into_chunks_sizes(items, num_workers, max_chunk, sizes):
    chunks = split_into_chunks(items, num_workers, max_chunk)
    assert [len(c) for c in chunks] == sizes
    assert [x for c in chunks for x in c] == items  # consecutive slices, nothing lost or repeated


def test_split_into_chunks_gives_every_worker_work():
    for n in (1, 5, 17, 100, 5000):
        for workers in (1, 2, 3, 8, 16):
            chunks = split_into_chunks(list(range(n)), workers, 64)
            assert len(chunks) >= min(n, workers) and max(len(c) for c in chunks) <= 64, (n, workers)


def test_process_pool_is_none_for_one_worker():
    for workers in (0, 1):
        with process_pool(workers) as pool:
            assert pool is None
    with process_pool(2) as pool:
        assert isinstance(pool, ProcessPoolExecutor)


def test_map_chunks_in_order_in_this_process(capsys):
    chunks = split_into_chunks(list(range(23)), 2, 64)
    results = list(map_chunks(_shift, chunks, 100, pool=None, desc="work", unit="item"))
    assert [r for _, r in results] == _expected(chunks, 100)
    assert {pid for pid, _ in results} == {os.getpid()}
    assert "23/23" in capsys.readouterr().err  # the bar counts items, not chunks


def test_map_chunks_in_order_from_a_pool():
    chunks = split_into_chunks(list(range(23)), 2, 64)
    assert len(chunks) > 2
    with process_pool(2) as pool:
        results = list(map_chunks(_shift, chunks, 100, pool=pool, desc="work", progress=False))
    assert [r for _, r in results] == _expected(chunks, 100)  # although the first chunk finished last
    assert os.getpid() not in {pid for pid, _ in results}


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_in_a_worker_reaches_the_caller(workers):
    chunks = split_into_chunks(list(range(40)), 2, 4)  # chunks of 4: 13 is in the fourth
    got = []
    with process_pool(workers) as pool:
        with pytest.raises(ValueError, match=r"cannot process \[12, 13, 14, 15\]"):
            for result in map_chunks(_fail_on_13, chunks, pool=pool, desc="work", progress=False):
                got.append(result)
    assert got == chunks[:3]  # the chunks before it arrived, in order
