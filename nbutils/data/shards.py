"""A shard image cache: every image resized once to the training geometry, kept as JPEG in webdataset tar shards.

The memmap of `nbutils.data.cache` stores raw pixels (150 KB per image at 224 px); a million images take 150 GB.
Here the same pixels (`cache.transform_uint8`, the PIL path of the image processors) are JPEG-encoded once, at
about a fifth of the bytes, and decoded again where a Dataset's `__getitem__` runs (DataLoader workers): a
224 px JPEG decodes at ~2,000 images/s per core, against ~60-190 for the original 640x480 photo + processor.
Decoding is lossy: at the default quality the pixels differ from the memmap's by under 2 uint8 levels on
average (tests/data/test_shards.py and benchmarks/bench_shards.py measure it).

`ShardCache` reads a folder with the interface of `cache.ImageCache` (`uint8`, `pixel_values`, `index_of`,
`geometry`, `paths`, `meta`, `failed`), so `ImageTextDataset`, `stages.PreparedDataset`, the CLIP embeddings and
the caption browser take either; `cache.open_image_cache` opens whichever format a folder holds.

Layout of a cache folder:
    shard-000000.tar ...  webdataset layout: per image `{key}.jpg` (at the geometry) and `{key}.json`
                          (image_path, captions); key is the image's row as 9 digits; `shard_size` images a shard
    index.csv             image_path,shard,offset,size: where row i's JPEG bytes lie in its shard
    failed.csv            image_path,reason   (images that could not be decoded; not in the index)
    meta.json             format "shards", format_version, geometry, count, failed, fingerprint, quality,
                          shard_size, shards, created_at
The standard webdataset readers (webdataset.WebDataset, open_clip, LAVIS) iterate the shards as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import DataError
from ..files import atomic_path, write_json, write_table
from ..parallel import map_chunks, process_pool, split_into_chunks
from .cache import (
    FAILED_FILE,
    INDEX_FILE,
    META_FILE,
    CacheFolder,
    ImageGeometry,
    decode_chunk,
    file_stamp,
    normalization_affine,
)

FORMAT = "shards"
FORMAT_VERSION = 1
CACHE_FORMAT = "shards-jpeg"  # what summaries call it (the memmap is "memmap-uint8")
CHUNK_SIZE = 64  # images per task sent to a worker process
# Images per tar: open_clip's suggestion; small enough to shuffle by shard, large enough to stream.
SHARD_SIZE = 1000
# Quality 94 with full-resolution chroma, measured by benchmarks/bench_shards.py on photo-like 640x480 JPEGs at
# 224 px: 27 KB an image with the tar headers (1/5.4 of the memmap), mean error 1.9 uint8 levels, PSNR 40 dB.
# Quality 95 gives 30 KB (1/4.9), 1.7 levels; PIL's default 4:2:0 chroma halves the colour resolution and errs
# ~3 levels at 95.
JPEG_QUALITY = 94
SUBSAMPLING = 0  # PIL's code for 4:4:4 (no chroma subsampling)


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def image_key(row: int) -> str:
    """The webdataset key of cache row `row`: digits only (webdataset splits a member name at its first dot)."""
    return f"{row:09d}"


# -----------------------------------------------------------------------------
# Building


def encode_jpeg(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 array, as the shard cache stores them."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, subsampling=SUBSAMPLING, optimize=True)
    return buffer.getvalue()


def _encode_chunk(paths: list[str], geometry: dict, quality: int) -> list[tuple[bytes | None, str]]:
    """Worker: the memmap build's decode and transform (`cache.decode_chunk`), then JPEG-encode each image."""
    return [
        (None if array is None else encode_jpeg(array, quality), reason)
        for array, reason in decode_chunk(paths, geometry)
    ]


def build_shard_cache(
    image_paths: Iterable[str | os.PathLike],
    cache_dir: str | os.PathLike,
    geometry: ImageGeometry,
    captions: Mapping[str, list[str]] | None = None,
    quality: int = JPEG_QUALITY,
    shard_size: int = SHARD_SIZE,
    num_workers: int | None = None,
    progress: bool = True,
) -> ShardCache:
    """Encode every image once into JPEG tar shards in `cache_dir`; reuse the folder when nothing changed.

    Like `cache.build_image_cache`: paths are de-duplicated and stored as given; images that fail to decode go
    to failed.csv; the folder is written under a temporary name and renamed when complete, so an interrupted
    build is never taken for a cache. `captions` (image_path -> captions) go into each image's `{key}.json`.
    num_workers: processes for decoding and encoding (default: all cores; 0 works in this process).
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be 1..100, got {quality!r}")
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be a positive number of images, got {shard_size!r}")
    cache_dir = Path(cache_dir)
    paths = list(dict.fromkeys(os.fspath(p) for p in image_paths))
    captions = {  # one caption may come as a string
        os.fspath(k): [v] if isinstance(v, str) else [str(t) for t in v] for k, v in (captions or {}).items()
    }
    fingerprint = _fingerprint(paths, geometry, quality, shard_size, captions)
    existing = _open_if_current(cache_dir, fingerprint)
    if existing is not None:
        return existing

    num_workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
    failed = []
    with atomic_path(cache_dir, sweep_stale=True) as tmp:
        tmp.mkdir(parents=True)
        writer = _ShardWriter(tmp, int(shard_size))
        chunks = split_into_chunks(paths, num_workers, CHUNK_SIZE)
        with process_pool(min(num_workers, len(chunks))) as pool:
            results = map_chunks(
                _encode_chunk, chunks, geometry.to_dict(), int(quality), pool=pool, desc="shard cache",
                progress=progress,
            )  # fmt: skip
            try:
                for chunk, chunk_results in zip(chunks, results):
                    for path, (data, reason) in zip(chunk, chunk_results):
                        if data is None:
                            failed.append((path, reason))
                        else:
                            writer.add(path, data, captions.get(path, []))
            except BaseException:
                writer.discard()  # the temporary folder is deleted next; only the open file needs closing
                raise
        index = writer.close()
        write_table(index, tmp / INDEX_FILE)
        write_table(pd.DataFrame(failed, columns=["image_path", "reason"]), tmp / FAILED_FILE)
        # meta.json last: a folder without it is never trusted.
        write_json(
            tmp / META_FILE,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "geometry": geometry.to_dict(),
                "count": len(index),
                "failed": len(failed),
                "fingerprint": fingerprint,
                "quality": int(quality),
                "shard_size": int(shard_size),
                "shards": writer.names,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return ShardCache(cache_dir)


class _ShardWriter:
    """Appends images to `shard-NNNNNN.tar` files of `shard_size` images each, in the parent process.

    webdataset's TarWriter writes the members: it is the library's own definition of the layout (one key, its
    extensions in sorted order, read-only members), so its readers and `ShardCache` agree on the names. The byte
    offsets are read back from each finished tar's headers by `tarfile`, not predicted from header sizes.
    """

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.names: list[str] = []
        self.rows: list[tuple[str, int, int, int]] = []  # image_path, shard, offset, size
        self._pending: list[str] = []  # image paths of the open shard, in order
        self._file = self._tar = None
        # One whole-second stamp for every member: tarfile stores a fractional mtime in an extra 1 KB pax
        # header per member (webdataset's default, time.time(), would double the overhead of small images).
        self._mtime = int(time.time())

    def add(self, path: str, jpeg: bytes, captions: list[str]) -> None:
        import webdataset  # its import is slow; only a shard build needs it

        if self._tar is None:
            self.names.append(shard_name(len(self.names)))
            self._file = open(self.folder / self.names[-1], "wb")
            self._tar = webdataset.TarWriter(self._file, mtime=self._mtime)
        row = len(self.rows) + len(self._pending)
        info = {"image_path": path, "captions": captions}
        # Bytes, not a dict: TarWriter's json encoder escapes Chinese to \\uXXXX; this keeps it readable.
        self._tar.write(
            {"__key__": image_key(row), "jpg": jpeg, "json": json.dumps(info, ensure_ascii=False).encode()}
        )
        self._pending.append(path)
        if len(self._pending) == self.shard_size:
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks; a file object passed in stays open
        self._file.close()  # flushed before the headers are read back below
        self._tar = self._file = None
        shard = len(self.names) - 1
        first = len(self.rows)
        found = {}
        with tarfile.open(self.folder / self.names[shard]) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    found[member.name[: -len(".jpg")]] = (member.offset_data, member.size)
        for k, path in enumerate(self._pending):
            offset, size = found[image_key(first + k)]
            self.rows.append((path, shard, offset, size))
        self._pending = []

    def discard(self) -> None:
        """Close the open shard without indexing it (a failed build)."""
        if self._file is not None:
            self._file.close()
        self._tar = self._file = None

    def close(self) -> pd.DataFrame:
        """Finish the last shard; the index: image_path, shard, offset, size (row i = cache row i)."""
        if self._tar is not None:
            self._finish_shard()
        return pd.DataFrame(self.rows, columns=["image_path", "shard", "offset", "size"])


def _fingerprint(paths, geometry: ImageGeometry, quality: int, shard_size: int, captions: dict) -> str:
    """Hash of format, geometry, quality, shard size, captions and every input's (path, size, mtime_ns)."""
    digest = hashlib.sha256()
    settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "geometry": geometry.to_dict()}
    digest.update(json.dumps({**settings, "quality": int(quality), "shard_size": int(shard_size)}).encode())
    for path in sorted(paths):
        digest.update(
            json.dumps([path, *file_stamp(path), captions.get(path, [])], ensure_ascii=False).encode()
        )
    return digest.hexdigest()


def _open_if_current(cache_dir: Path, fingerprint: str) -> ShardCache | None:
    if not (cache_dir / META_FILE).is_file():
        return None
    try:
        cache = ShardCache(cache_dir)
    except (DataError, OSError, ValueError, KeyError):
        return None  # unreadable, another format or another format_version: rebuild
    return cache if cache.meta.get("fingerprint") == fingerprint else None


# -----------------------------------------------------------------------------
# Reading


class ShardCache(CacheFolder):
    """Read side of a shard cache folder, with `ImageCache`'s interface (`CacheFolder`). Picklable: shard files are
    opened lazily, once per process, so each DataLoader worker reads (and decodes) with its own file handles."""

    cache_format = CACHE_FORMAT

    def _check_format(self, meta_path: Path) -> None:
        if (self.meta.get("format"), self.meta.get("format_version")) != (FORMAT, FORMAT_VERSION):
            raise DataError(
                f"{meta_path}: format {self.meta.get('format')!r} version {self.meta.get('format_version')}, "
                f"expected {FORMAT!r} version {FORMAT_VERSION}: open it with nbutils.data.cache.open_image_cache "
                "or rebuild it (processdata_03)"
            )

    def _open_index(self, index: pd.DataFrame) -> None:
        self.shards: list[str] = list(self.meta["shards"])
        self._shard = index["shard"].to_numpy(np.int64)
        self._offset = index["offset"].to_numpy(np.int64)
        self._size = index["size"].to_numpy(np.int64)
        for number, name in enumerate(self.shards):  # a cut-off shard fails here, not mid-epoch
            path = self.cache_dir / name
            end = (self._offset + self._size)[self._shard == number].max(initial=0)
            if not path.is_file() or path.stat().st_size < end:
                raise DataError(f"{path}: missing or shorter than its index ({end} bytes); rebuild the cache")
        self._files: dict[int, int] = {}  # shard number -> OS file descriptor, in this process

    def _per_process(self) -> dict:
        return {"_files": {}}  # never ship file descriptors to DataLoader workers

    def __repr__(self) -> str:
        g = self.geometry
        return (
            f"ShardCache({str(self.cache_dir)!r}, {len(self)} images {g.height}x{g.width}, {g.resize}, "
            f"{len(self.shards)} shards, quality {self.meta['quality']})"
        )

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit `os` may already be gone
            self.close()

    def close(self) -> None:
        """Close this process's shard files (reads reopen them)."""
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._files.values():
                os.close(fd)
        self._files = {}
        self._pid = None

    def jpeg_bytes(self, row: int) -> bytes:
        """The stored JPEG of cache row `row`."""
        if self._pid != os.getpid():  # a forked worker opens its own handles; the parent may close its copies
            self._files, self._pid = {}, os.getpid()
        shard = int(self._shard[row])
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.cache_dir / self.shards[shard], os.O_RDONLY)
        size = int(self._size[row])
        data = os.pread(fd, size, int(self._offset[row]))
        if len(data) != size:
            raise DataError(f"{self.cache_dir / self.shards[shard]}: cut off at row {row}; rebuild the cache")
        return data

    def _decode_into(self, out: np.ndarray, row: int) -> None:
        with Image.open(io.BytesIO(self.jpeg_bytes(row))) as image:
            if image.mode != "RGB" or image.size != (self.geometry.width, self.geometry.height):
                raise DataError(
                    f"{self.cache_dir / self.shards[int(self._shard[row])]}: row {row} is {image.mode} "
                    f"{image.size}, not RGB {self.geometry.width}x{self.geometry.height}; rebuild the cache"
                )
            out[...] = np.asarray(image)

    def uint8(self, indices) -> np.ndarray:
        """Images as uint8 HWC decoded from the shards: (H, W, 3) for an int index, (N, H, W, 3) for a sequence."""
        single = np.ndim(indices) == 0
        rows = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row out of range for the {len(self)} images of {self.cache_dir}")
        rows = rows % max(len(self), 1)  # negative rows count from the end, as for the memmap
        out = np.empty((len(rows), self.geometry.height, self.geometry.width, 3), dtype=np.uint8)
        for o, row in zip(out, rows):
            self._decode_into(o, int(row))
        return out[0] if single else out

    def pixel_values(self, indices, mean, std) -> np.ndarray:
        """Normalised float32 CHW like the processor: (3, H, W) for an int, (N, 3, H, W) for a sequence."""
        images = self.uint8(indices)
        single = images.ndim == 3
        images = images[None] if single else images
        scale, shift = normalization_affine(mean, std)
        out = images.transpose(0, 3, 1, 2).astype(np.float32)
        out *= scale
        out += shift
        return out[0] if single else out


def bytes_per_image(cache) -> float:
    """Disk bytes per cached image of a cache folder (either format): every file in it over the image count."""
    total = sum(p.stat().st_size for p in Path(cache.cache_dir).iterdir() if p.is_file())
    return total / max(len(cache), 1)
