"""Hugging Face datasets on disk: find their data files, and address the images embedded in their rows.

A dataset written by the `datasets` library holds each image's encoded bytes inside a row (the `Image` feature
stores a struct {bytes, path}). Two layouts are read, with pyarrow only (no `datasets` import):

    save_to_disk folder   dataset_dict.json + <split>/state.json + <split>/data-00000-of-00003.arrow (Arrow streams)
    hub parquet shards    data/train-00000-of-00002.parquet, data/test-00000-of-00001.parquet, ...

Instead of writing every embedded image out as a file, processdata_03's importer names each one by a pseudo path
that the pipeline carries in `image_path` like any file path:

    <absolute path of the .arrow / .parquet file>::<image column>[<row>]
    e.g. /data/flickr30k/train/data-00000-of-00003.arrow::image[1042]

`<row>` counts from 0 within that file. `nbutils.data.images.load_rgb` decodes such a path from the row's bytes
(`embedded_bytes`), and `splits.clean_captions` finds it present when the file exists and has that row. Files
are opened memory-mapped once per process and kept open until they change on disk, so a cache build over
thousands of rows reads each file's index once. The `::` and the `[<row>]` are unambiguous: a pseudo path's
file part ends in .arrow or .parquet, and no image file is named like that.
"""

from __future__ import annotations

import functools
import json
import os
import re
from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError

DATA_SUFFIXES = (".arrow", ".parquet")
DEFAULT_SPLIT = "train"
BATCH_ROWS = 256  # rows per batch while importing: bounds memory to a few hundred encoded images
OPEN_FILES = 16  # dataset files kept open per process
OPEN_ROW_GROUPS = 4  # parquet row groups kept decoded per process (a cache build reads rows in order)

# The file part ends at the first ".arrow::" / ".parquet::"; the row is the trailing "[digits]".
EMBEDDED = re.compile(r"^(?P<file>.+?\.(?:arrow|parquet))::(?P<column>.+)\[(?P<row>\d+)\]$")
# The split a hub shard belongs to, from its name: "train-00000-of-00002.parquet", "test.parquet",
# "train-00000-of-00002-5d4e3f2a.parquet" (older hub names end in a hash).
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z][\w.]*?)(?:-\d+-of-\d+)?(?:-[0-9a-f]+)?\.parquet$")


# ----------------------------------------------------------------------------- the pseudo path


def embedded_path(file: str | os.PathLike, column: str, row: int) -> str:
    """The pseudo path of the image in `column` of row `row` of `file`."""
    return f"{os.path.abspath(file)}::{column}[{int(row)}]"


def parse_embedded(path) -> tuple[str, str, int] | None:
    """(file, column, row) of a pseudo path; None for anything else (a file path, a file object)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    text = os.fspath(path)
    m = EMBEDDED.match(text) if isinstance(text, str) and "::" in text else None
    return (m["file"], m["column"], int(m["row"])) if m else None


def is_embedded(path) -> bool:
    """True when `path` is a pseudo path (see the module docstring)."""
    return parse_embedded(path) is not None


def embedded_bytes(path: str) -> bytes:
    """The encoded image of a pseudo path. Raises FileNotFoundError, IndexError or ValueError naming it."""
    file, column, row = _parse(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: dataset file {file} not found")
    n = num_rows(file)
    if row >= n:
        raise IndexError(f"{path}: row {row} is out of range ({file} has {n} rows)")
    if file.endswith(".parquet"):
        group, first = _row_group_of(file, row)
        value = _row_group(file, group, column).column(0)[row - first].as_py()
    else:
        table = open_arrow(file)
        if column not in table.column_names:
            raise ValueError(f"{path}: {file} has no column {column!r}")
        value = table.column(column)[row].as_py()
    data = image_bytes(value)
    if data is None:
        raise ValueError(f"{path}: the row holds no image bytes")
    return data


def embedded_exists(path: str) -> bool:
    """True when the dataset file of a pseudo path exists and has its row."""
    file, _, row = _parse(path)
    try:
        return os.path.isfile(file) and row < num_rows(file)
    except DataError:  # a damaged file holds no rows that can be read
        return False


def image_bytes(value) -> bytes | None:
    """Encoded bytes of an image cell as pyarrow gives it (a {bytes, path} dict or bytes); None when absent."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) and len(value) else None


def _parse(path) -> tuple[str, str, int]:
    parsed = parse_embedded(path)
    if parsed is None:
        raise ValueError(f"{path!r} is not an embedded-image path (<file>.arrow::<column>[<row>])")
    return parsed


# ----------------------------------------------------------------------------- reading dataset files


def open_arrow(file: str) -> pa.Table:
    """A `.arrow` file as a memory-mapped table: `datasets` writes Arrow streams, the Arrow file format is read too."""
    return _open_arrow(file, _stamp(file))


def _stamp(file: str) -> tuple[int, int]:
    """(size, mtime) of a file: part of the key of the open files, so that a rewritten file is opened afresh."""
    try:
        st = os.stat(file)
    except OSError as e:
        raise DataError(f"{file}: cannot open ({e.strerror})") from None
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=OPEN_FILES)
def _open_arrow(file: str, stamp: tuple[int, int]) -> pa.Table:
    try:
        source = pa.memory_map(file)
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{file}: not a readable Arrow file ({e})") from None


def _parquet(file: str) -> tuple[pq.ParquetFile, list[int]]:
    """The open parquet file and the first row of each row group (plus the total at the end)."""
    return _open_parquet(file, _stamp(file))


@functools.lru_cache(maxsize=OPEN_FILES)
def _open_parquet(file: str, stamp: tuple[int, int]) -> tuple[pq.ParquetFile, list[int]]:
    try:
        parquet = pq.ParquetFile(file, memory_map=True)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{file}: not a readable parquet file ({e})") from None
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    return parquet, [0, *accumulate(sizes)]


def _row_group_of(file: str, row: int) -> tuple[int, int]:
    """(row group, its first row) holding `row` of a parquet file."""
    starts = _parquet(file)[1]
    group = bisect_right(starts, row) - 1
    return group, starts[group]


def _row_group(file: str, group: int, column: str) -> pa.Table:
    return _read_row_group(file, _stamp(file), group, column)


@functools.lru_cache(maxsize=OPEN_ROW_GROUPS)
def _read_row_group(file: str, stamp: tuple[int, int], group: int, column: str) -> pa.Table:
    parquet = _parquet(file)[0]
    if column not in parquet.schema_arrow.names:
        raise ValueError(f"{file} has no column {column!r}")
    return parquet.read_row_group(group, columns=[column])


def num_rows(file: str | os.PathLike) -> int:
    """Rows of one .arrow or .parquet file (read from its metadata or index, not its data)."""
    file = os.fspath(file)
    return _parquet(file)[1][-1] if file.endswith(".parquet") else open_arrow(file).num_rows


def schema(file: Path) -> pa.Schema:
    """The column names and types of one dataset file."""
    return _parquet(str(file))[0].schema_arrow if file.suffix == ".parquet" else open_arrow(str(file)).schema


def batches(file: Path, columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, batch) over `columns` of one dataset file, BATCH_ROWS rows at a time."""
    if file.suffix == ".parquet":
        stream = _parquet(str(file))[0].iter_batches(batch_size=BATCH_ROWS, columns=columns)
    else:
        stream = open_arrow(str(file)).select(columns).to_batches(max_chunksize=BATCH_ROWS)
    first = 0
    try:
        for batch in stream:
            yield first, batch
            first += batch.num_rows
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{file}: cannot read rows from {first} on ({e})") from None


# ----------------------------------------------------------------------------- finding the files of a split


def dataset_files(path: str | os.PathLike, split: str = "") -> list[Path]:
    """The data files of one split of the dataset at `path`, in row order.

    `path` is one .arrow / .parquet file (read whole; `split` is not used), a folder written by
    `Dataset.save_to_disk` (state.json), one written by `DatasetDict.save_to_disk` (dataset_dict.json; the split
    folder named by `split`), or a folder of hub parquet shards (found at any depth; a shard's split is its name's
    first part, "train-00000-of-00002.parquet", or its folder's name). An empty `split` means "train" when the
    dataset has one, else the only split there is.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(
                f"{path}: not a Hugging Face dataset file (expected .arrow or .parquet, or a folder)"
            )
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    if (path / "dataset_dict.json").is_file():
        splits = _read_json(path / "dataset_dict.json").get("splits") or []
        return dataset_files(path / _choose_split(path, splits, split), "")
    if (path / "state.json").is_file():
        return _saved_files(path, split)
    shards = sorted(p for p in path.rglob("*.parquet") if not _hidden(p.relative_to(path)))
    if not shards:
        raise DataError(
            f"{path}: no Hugging Face dataset here: expected dataset_dict.json or state.json (save_to_disk) "
            "or .parquet shards (the hub's data/train-00000-of-00001.parquet)"
        )
    split_of = {p: _shard_split(p.relative_to(path)) for p in shards}
    named = sorted({s for s in split_of.values() if s})
    if not split and (DEFAULT_SPLIT not in named) and len(named) <= 1:
        return shards  # one split, or shards that name none: all of them
    chosen = _choose_split(path, named, split)
    return [p for p in shards if split_of[p] == chosen]


def _saved_files(folder: Path, split: str) -> list[Path]:
    """The Arrow files a Dataset.save_to_disk folder lists in its state.json."""
    state = _read_json(folder / "state.json")
    saved_split = state.get("_split")
    if split and saved_split and split != saved_split:
        raise DataError(
            f"{folder}: holds the split {saved_split!r}, not {split!r}; leave dataset_split empty or point "
            "source at the folder with dataset_dict.json"
        )
    names = [entry.get("filename") for entry in state.get("_data_files") or [] if isinstance(entry, dict)]
    if not names or not all(names):
        raise DataError(f"{folder / 'state.json'}: lists no data files ('_data_files')")
    files = [folder / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder}: data files listed in state.json are missing: {', '.join(missing)}")
    return files


def _choose_split(folder: Path, splits: list[str], split: str) -> str:
    if not splits:
        raise DataError(f"{folder}: names no splits")
    chosen = split or (DEFAULT_SPLIT if DEFAULT_SPLIT in splits else splits[0] if len(splits) == 1 else "")
    if not chosen:
        raise DataError(
            f"{folder}: has the splits {', '.join(splits)} and none is {DEFAULT_SPLIT!r}; "
            "set dataset_split to the one to read"
        )
    if chosen not in splits:
        raise DataError(f"{folder}: no split {chosen!r}; the dataset has the splits {', '.join(splits)}")
    return chosen


def _shard_split(relative: Path) -> str:
    """The split a parquet shard belongs to, "" when its name and folder name none."""
    m = SHARD_NAME.match(relative.name)
    if m:
        return m["split"]
    parent = relative.parent.name
    return parent if parent not in ("", "data") else ""


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data
