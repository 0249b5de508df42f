"""A packed, pre-resized image cache: decode every JPEG once, then train from a raw uint8 memmap.

Decoding JPEGs while training caps throughput at ~60-190 images/s per core. Here every
image is decoded, resized and cropped ONCE to the training geometry and stored as uint8 HWC rows of
one raw file; at read time only the normalisation is left (thousands of images/s per core), or none at
all when the uint8 batch goes to the GPU and is normalised there (`nbutils.data.datasets`). No torch
here: the torch Dataset that reads a cache is in `nbutils.data.datasets`.

The geometric ops replay transformers' PIL-backend image processors (ViT, CLIP, Chinese-CLIP) exactly,
so `ImageCache.pixel_values` equals `processor(images).pixel_values` to float rounding (~1e-6).
`nbutils.data.shards` keeps the same pixels as JPEG in webdataset tar shards instead (about a fifth of the
bytes, decoded while reading); `open_image_cache` opens a folder of either format.

Layout of a cache folder:
    images.u8    raw N x H x W x 3 uint8, row i is the image at index.csv row i
    index.csv    image_path,row
    failed.csv   image_path,reason   (images that could not be decoded; not in the index)
    meta.json    format_version, geometry, count, fingerprint, created_at
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from math import ceil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import DataError
from ..files import atomic_path, read_json, write_json, write_table
from ..parallel import map_chunks, process_pool, split_into_chunks
from .images import image_file, load_rgb

FORMAT_VERSION = 1
IMAGES_FILE = "images.u8"
INDEX_FILE = "index.csv"
FAILED_FILE = "failed.csv"
META_FILE = "meta.json"
CHUNK_SIZE = 64  # images per task sent to a worker process
RESAMPLE = {  # names kept in meta.json -> PIL filters (same ints as transformers' PILImageResampling)
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
RESCALE_FACTOR = 1 / 255  # the only rescale the cache reproduces (every supported processor has it)


# -----------------------------------------------------------------------------
# Geometry: what a processor does to the pixels before rescale/normalise


@dataclass(frozen=True)
class ImageGeometry:
    """Output size and how to get there.

    resize="exact": resize straight to height x width (ViTImageProcessor, Chinese-CLIP hub configs).
    resize="shortest_edge": resize the shorter side to `shortest_edge` keeping the aspect ratio, then
    center-crop to height x width, zero-padding if too small (CLIPImageProcessor).
    """

    height: int
    width: int
    resize: str = "exact"
    shortest_edge: int | None = None
    resample: str = "bilinear"

    def __post_init__(self):
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"ImageGeometry.{name} must be a positive int, got {value!r}")
        if self.resize not in ("exact", "shortest_edge"):
            raise ValueError(f"ImageGeometry.resize must be 'exact' or 'shortest_edge', got {self.resize!r}")
        if self.resize == "shortest_edge":
            if not isinstance(self.shortest_edge, (int, np.integer)) or self.shortest_edge <= 0:
                raise ValueError(
                    f"ImageGeometry.shortest_edge must be a positive int, got {self.shortest_edge!r}"
                )
        elif self.shortest_edge is not None:
            raise ValueError("ImageGeometry.shortest_edge is only used with resize='shortest_edge'")
        if self.resample not in RESAMPLE:
            raise ValueError(
                f"ImageGeometry.resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}"
            )

    @classmethod
    def from_processor(cls, processor) -> ImageGeometry:
        """Read the geometry of a ViT / CLIP / Chinese-CLIP image processor (or a processor holding one)."""
        processor = getattr(processor, "image_processor", processor)
        name = type(processor).__name__
        if getattr(processor, "do_resize", True) is False:
            raise ValueError(f"{name}: do_resize=False gives a different size per image; it cannot be cached")
        size = _size_dict(processor.size)
        crop = _size_dict(getattr(processor, "crop_size", None))
        do_crop = bool(getattr(processor, "do_center_crop", False))
        resample = _resample_name(getattr(processor, "resample", None), name)
        if set(size) == {"height", "width"}:
            height, width = int(size["height"]), int(size["width"])
            if do_crop and (crop.get("height"), crop.get("width")) != (height, width):
                raise ValueError(f"{name}: resize to {size} followed by crop_size={crop} is not supported")
            return cls(height, width, "exact", None, resample)
        if set(size) == {"shortest_edge"}:
            if not do_crop or not (crop.get("height") and crop.get("width")):
                raise ValueError(
                    f"{name}: size={size} without a center crop gives a different size per image"
                )
            return cls(
                int(crop["height"]), int(crop["width"]), "shortest_edge", int(size["shortest_edge"]), resample
            )
        raise ValueError(f"{name}: unsupported size={size} (need height/width or shortest_edge)")

    @classmethod
    def from_dict(cls, d: dict) -> ImageGeometry:
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def processor_mean_std(processor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) that the processor normalises with, as 3-tuples of floats."""
    processor = getattr(processor, "image_processor", processor)
    name = type(processor).__name__
    if getattr(processor, "do_rescale", True) is False or not math.isclose(
        float(getattr(processor, "rescale_factor", RESCALE_FACTOR)), RESCALE_FACTOR, rel_tol=1e-9
    ):
        raise ValueError(f"{name}: the cache assumes do_rescale=True with rescale_factor=1/255")
    if getattr(processor, "do_normalize", True) is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return rgb_triple(processor.image_mean, "image_mean"), rgb_triple(processor.image_std, "image_std")


def _size_dict(size) -> dict:
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    return {k: v for k, v in dict(size).items() if v is not None}


def _resample_name(resample, processor_name: str) -> str:
    resample = Image.Resampling.BILINEAR if resample is None else resample
    for name, value in RESAMPLE.items():
        if int(value) == int(resample):
            return name
    raise ValueError(f"{processor_name}: resample={resample!r} is not one of {sorted(RESAMPLE)}")


def rgb_triple(value, name: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if np.isscalar(value) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (RGB), got {value!r}")
    return tuple(values)


# -----------------------------------------------------------------------------
# Decoding and the geometric transform


def transform_uint8(image: Image.Image, geometry: ImageGeometry) -> np.ndarray:
    """Resize (and center-crop) an RGB PIL image exactly like transformers' PIL-backend processors.

    Returns an (height, width, 3) uint8 array.
    """
    if image.mode != "RGB":
        raise ValueError(f"transform_uint8 expects an RGB image, got mode {image.mode!r} (use load_rgb)")
    resample = RESAMPLE[geometry.resample]
    if geometry.resize == "exact":
        resized = image.resize((geometry.width, geometry.height), resample=resample, reducing_gap=None)
        return np.asarray(resized, dtype=np.uint8)

    # transformers.image_transforms.get_resize_output_image_size(default_to_square=False): int() truncates
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = geometry.shortest_edge, int(geometry.shortest_edge * long / short)
    new_h, new_w = (new_long, new_short) if width <= height else (new_short, new_long)
    array = np.asarray(image.resize((new_w, new_h), resample=resample, reducing_gap=None), dtype=np.uint8)
    return _center_crop(array, geometry.height, geometry.width)


def _center_crop(array: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    # Same offsets as transformers.image_transforms.center_crop, including its zero padding
    # when the image is smaller than the crop.
    h, w = array.shape[:2]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= h and left + crop_w <= w:
        return np.ascontiguousarray(array[top : top + crop_h, left : left + crop_w])
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((new_h, new_w, 3), dtype=np.uint8)
    top_pad, left_pad = ceil((new_h - h) / 2), ceil((new_w - w) / 2)
    padded[top_pad : top_pad + h, left_pad : left_pad + w] = array
    top, left = top + top_pad, left + left_pad
    rows = slice(max(0, top), min(new_h, top + crop_h))
    cols = slice(max(0, left), min(new_w, left + crop_w))
    return np.ascontiguousarray(padded[rows, cols])


def decode_chunk(paths: list[str], geometry: dict) -> list[tuple[np.ndarray | None, str]]:
    """Worker: decode + transform a list of paths. Top-level so it pickles under spawn/forkserver too."""
    geometry = ImageGeometry.from_dict(geometry)
    results = []
    for path in paths:
        try:
            results.append((transform_uint8(load_rgb(path), geometry), ""))
        except Exception as exc:  # one bad image must not stop a build over a million
            results.append((None, f"{type(exc).__name__}: {exc}".strip()))
    return results


# -----------------------------------------------------------------------------
# Building


def build_image_cache(
    image_paths: Iterable[str | os.PathLike],
    cache_dir: str | os.PathLike,
    geometry: ImageGeometry,
    num_workers: int | None = None,
    progress: bool = True,
) -> ImageCache:
    """Decode every image once into `cache_dir`; reuse the cache when inputs and geometry are unchanged.

    Paths are de-duplicated and stored exactly as given (look them up with the same strings).
    Images that fail to decode go to failed.csv and are left out of the index.
    num_workers: processes for decoding (default: all cores; 0 decodes in this process).
    """
    cache_dir = Path(cache_dir)
    paths = list(dict.fromkeys(os.fspath(p) for p in image_paths))
    fingerprint = _fingerprint(paths, geometry)
    existing = _open_if_current(cache_dir, fingerprint)
    if existing is not None:
        return existing

    num_workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
    good, failed = [], []
    with atomic_path(cache_dir, sweep_stale=True) as tmp:
        tmp.mkdir(parents=True)
        images_path = tmp / IMAGES_FILE
        chunks = split_into_chunks(paths, num_workers, CHUNK_SIZE)
        # Rows are assigned on success, in order, so the file is written front to back. Plain writes, not a
        # writable memmap: a mapped file's pages count as this process's memory, and at a million images that
        # is the whole cache; written pages go to the kernel's page cache instead.
        with open(images_path, "wb") as images, process_pool(min(num_workers, len(chunks))) as pool:
            results = map_chunks(
                decode_chunk, chunks, geometry.to_dict(), pool=pool, desc="image cache", progress=progress
            )
            for chunk, chunk_results in zip(chunks, results):
                for path, (array, reason) in zip(chunk, chunk_results):
                    if array is None:
                        failed.append((path, reason))
                    else:
                        images.write(np.ascontiguousarray(array, dtype=np.uint8).data)
                        good.append(path)
        count = len(good)
        write_table(pd.DataFrame({"image_path": good, "row": np.arange(count)}), tmp / INDEX_FILE)
        write_table(pd.DataFrame(failed, columns=["image_path", "reason"]), tmp / FAILED_FILE)
        # meta.json last: a folder without it is never trusted.
        write_json(
            tmp / META_FILE,
            {
                "format_version": FORMAT_VERSION,
                "geometry": geometry.to_dict(),
                "count": count,
                "failed": len(failed),
                "fingerprint": fingerprint,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return ImageCache(cache_dir)


def _fingerprint(paths: Sequence[str], geometry: ImageGeometry) -> str:
    """Hash of format, geometry and every input's (path, size, mtime_ns): any change means a rebuild."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format_version": FORMAT_VERSION, "geometry": geometry.to_dict()}).encode())
    for path in sorted(paths):
        digest.update(json.dumps([path, *file_stamp(path)], ensure_ascii=False).encode())
    return digest.hexdigest()


def file_stamp(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of the file holding an image (an embedded image's dataset file); (-1, -1) when missing
    (it will be listed in failed.csv). A cache's fingerprint hashes these: any change means a rebuild."""
    try:
        st = os.stat(image_file(path))
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _open_if_current(cache_dir: Path, fingerprint: str) -> ImageCache | None:
    if not (cache_dir / META_FILE).is_file():
        return None
    try:
        cache = ImageCache(cache_dir)
    except (DataError, OSError, ValueError, KeyError):
        return None  # unreadable or from an older format: rebuild
    return cache if cache.meta.get("fingerprint") == fingerprint else None


# -----------------------------------------------------------------------------
# Reading


class CacheFolder:
    """What both cache formats share on the read side: the folder's meta.json and index.csv, lookups by image path,
    the failed images, and pickling for DataLoader workers without this process's open files (each worker opens its
    own). Subclasses check their own meta.json (`_check_format`) and files (`_open_index`) and read the pixels."""

    cache_format = ""  # summary.json's name for the format

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        meta_path = self.cache_dir / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: missing; {self.cache_dir} is not a finished image cache")
        self.meta = read_json(meta_path)
        self._check_format(meta_path)
        self.geometry = ImageGeometry.from_dict(self.meta["geometry"])
        index = pd.read_csv(self.cache_dir / INDEX_FILE, dtype={"image_path": str}, keep_default_na=False)
        if len(index) != int(self.meta["count"]):
            raise DataError(
                f"{self.cache_dir / INDEX_FILE}: {len(index)} rows, meta.json says count={self.meta['count']}"
            )
        self._open_index(index)
        self.paths: list[str] = index["image_path"].tolist()
        self._index = pd.Index(self.paths)  # hash lookup path -> row, vectorised with get_indexer
        self._pid = None  # the process whose handles this object holds (see _per_process)

    def _check_format(self, meta_path: Path) -> None:
        raise NotImplementedError

    def _open_index(self, index: pd.DataFrame) -> None:
        raise NotImplementedError

    def _per_process(self) -> dict:
        """Names and empty values of the attributes that hold this process's open files or mappings."""
        return {}

    @classmethod
    def open(cls, cache_dir: str | os.PathLike):
        return cls(cache_dir)

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self):
        return {**self.__dict__, **self._per_process(), "_pid": None}  # workers open their own

    @property
    def failed(self) -> pd.DataFrame:
        """Images that could not be decoded: image_path, reason."""
        return pd.read_csv(self.cache_dir / FAILED_FILE, dtype=str, keep_default_na=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.geometry.height, self.geometry.width, 3)

    def index_of(self, path_or_paths):
        """Row of one path (int) or of many (int64 array). KeyError names a path that is not cached."""
        if isinstance(path_or_paths, (str, os.PathLike)):
            key = os.fspath(path_or_paths)
            if key not in self._index:
                raise KeyError(f"{key!r} is not in the image cache {self.cache_dir}")
            return int(self._index.get_loc(key))
        keys = [os.fspath(p) for p in path_or_paths]
        rows = self._index.get_indexer(keys)
        if (rows < 0).any():
            raise KeyError(f"{keys[int(np.argmax(rows < 0))]!r} is not in the image cache {self.cache_dir}")
        return rows.astype(np.int64)


class ImageCache(CacheFolder):
    """The uint8 memmap cache's read side. Picklable: the memmap is opened lazily, once per process."""

    cache_format = "memmap-uint8"  # summary.json's name for it (nbutils.data.shards' is "shards-jpeg")

    def _check_format(self, meta_path: Path) -> None:
        if "format" in self.meta:  # only the JPEG shard cache writes one
            raise DataError(
                f"{meta_path}: a {self.meta['format']!r} cache, not a memmap; open it with open_image_cache"
            )
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{meta_path}: format_version {self.meta.get('format_version')} != {FORMAT_VERSION}"
            )

    def _open_index(self, index: pd.DataFrame) -> None:
        count = len(index)
        if not np.array_equal(index["row"].to_numpy(), np.arange(count)):
            raise DataError(f"{self.cache_dir / INDEX_FILE}: rows do not match meta.json count={count}")
        expected = count * self.geometry.height * self.geometry.width * 3
        actual = (self.cache_dir / IMAGES_FILE).stat().st_size
        if actual != expected:
            raise DataError(f"{self.cache_dir / IMAGES_FILE}: {actual} bytes, expected {expected}")
        self._images = None

    def _per_process(self) -> dict:
        return {"_images": None}

    def __repr__(self) -> str:
        g = self.geometry
        return f"ImageCache({str(self.cache_dir)!r}, {len(self)} images {g.height}x{g.width}, {g.resize})"

    def _memmap(self) -> np.ndarray:
        if self._images is None or self._pid != os.getpid():
            if len(self) == 0:
                self._images = np.zeros(self.shape, dtype=np.uint8)
            else:
                path = self.cache_dir / IMAGES_FILE
                if path.stat().st_size != int(np.prod(self.shape)):  # rebuilt since this object was made
                    raise DataError(f"{path}: size changed since the cache was opened; open it again")
                self._images = np.memmap(path, dtype=np.uint8, mode="r", shape=self.shape)
            self._pid = os.getpid()
        return self._images

    def uint8(self, indices) -> np.ndarray:
        """Images as uint8 HWC: (H, W, 3) for an int index, (N, H, W, 3) for a sequence."""
        images = self._memmap()
        if np.ndim(indices) == 0:
            return np.array(images[int(indices)])
        return np.asarray(images[np.asarray(indices, dtype=np.int64)])

    def pixel_values(self, indices, mean, std) -> np.ndarray:
        """Normalised float32 CHW like the processor: (3, H, W) for an int, (N, 3, H, W) for a sequence."""
        images = self._memmap()
        single = np.ndim(indices) == 0
        rows = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        scale, shift = normalization_affine(mean, std)
        out = np.empty((len(rows), 3, self.geometry.height, self.geometry.width), dtype=np.float32)
        for o, row in zip(out, rows):
            # One image at a time so the float block is still in cache for the multiply and add.
            np.copyto(o, images[row].transpose(2, 0, 1), casting="unsafe")
            o *= scale
            o += shift
        return out[0] if single else out


def open_image_cache(cache_dir: str | os.PathLike):
    """Open the image cache in `cache_dir`, whichever format its meta.json names: the uint8 memmap (`ImageCache`)
    or JPEG tar shards (`nbutils.data.shards.ShardCache`). Both read alike (`uint8`, `index_of`, `geometry`)."""
    meta_path = Path(cache_dir) / META_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path}: missing; {cache_dir} is not a finished image cache (rerun processdata_03 to build it)"
        )
    if read_json(meta_path).get("format") == "shards":
        from .shards import ShardCache  # shards imports this module

        return ShardCache(cache_dir)
    return ImageCache(cache_dir)


def normalization_affine(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), each (3, 1, 1) float32, with x * scale + shift == (x / 255 - mean) / std."""
    # (x / 255 - mean) / std == x * scale + shift; computed in float64, applied in float32 (~1e-7 off).
    mean = np.asarray(rgb_triple(mean, "mean"), dtype=np.float64)
    std = np.asarray(rgb_triple(std, "std"), dtype=np.float64)
    if (std <= 0).any():
        raise ValueError(f"std must be positive, got {tuple(std)}")
    scale = (RESCALE_FACTOR / std).astype(np.float32).reshape(3, 1, 1)
    shift = (-mean / std).astype(np.float32).reshape(3, 1, 1)
    return scale, shift
