"""Check every downloaded image once, normalise the odd ones, write the clean table (processdata_02).

Images from the web include HTML error pages saved as .jpg, empty and truncated files, decompression
bombs, thumbnails, banners, CMYK and 16-bit files, palettes with transparency, EXIF-rotated photos and
"photo not available" placeholders behind hundreds of urls. Each distinct image is checked once, in a
process pool: read the header and reject on size; then decode it fully, exactly as
`nbutils.data.images.load_rgb` will (an image that passes here never crashes a later stage).
Files that are not already plain 8-bit RGB JPEG or PNG (greyscale ones included) are rewritten as RGB
JPEGs of exactly what `load_rgb` returns, so every later reader sees the same pixels.

`validate_images(table, out_dir)` writes:
    clean.csv     image_path,text[,url]   rows whose image passed; absolute paths, pointing at the
                                          normalised copy where there is one and at the canonical
                                          copy for byte-identical duplicates
    rejects.csv   image_path[,url],reason one row per rejected image
    checks.csv    one row per distinct image: every ImageCheck field, status (clean / duplicate /
                  rejected), duplicate_of, output_path (where its rows point), normalised_path
    normalised/   <original stem>.jpg     the rewritten images
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from .. import stages
from ..config import StageConfig, param
from ..errors import DataError, check_columns, is_int, short_error
from ..files import atomic_path, write_table
from ..parallel import map_chunks, process_pool, split_into_chunks
from ..reporting.tables import breakdown, count, counts_table, duration, facts_table, number, share
from ..stages import DataOrigin
from .images import image_format, load_rgb, read_image_bytes, to_rgb
from .importers import read_table

CHUNK_SIZE = 32  # images per task sent to a worker process
PLAIN_FORMATS = ("JPEG", "PNG")  # stored as-is when 8-bit RGB without alpha or rotation
# Greyscale (L) is rewritten as RGB too: every image the next stages read has 3 channels.
PLAIN_MODES = ("RGB",)
JPEG_MAX_SIDE = 65500  # libjpeg cannot write larger images
NORMALISED_DIR = "normalised"
# JPEG comment of every normalised copy: lets a rerun reuse it. Bump the version if load_rgb changes.
NORMALISED_TAG = "nbutils.validate v2"  # a stable identifier, not the module path


@dataclass(frozen=True)
class ValidationConfig(StageConfig):
    """processdata_02's parameters: what counts as a usable image. Rejections are checked in field order."""

    stage = "processdata_02"
    source: str = param(
        "processdata_01", '"processdata_01" (this run\'s downloads) or a CSV / parquet with image_path,text'
    )
    max_pixels: int = param(
        50_000_000, "larger images are rejected from their header, before decoding (decompression bombs)"
    )
    min_side: int = param(32, "smaller images are rejected")
    max_aspect: float = param(6.0, "long side / short side above this is rejected")
    placeholder_min_urls: int = param(
        5,
        'the same bytes behind this many urls is a placeholder ("photo not '
        'available"); 0 turns the check off',
    )
    normalised_quality: int = param(95, "JPEG quality of normalised copies (4:4:4 chroma)")
    num_workers: int = param(0, "processes; 0 means all cores, 1 works in this process")

    def __post_init__(self):
        super().__post_init__()

        def require(ok, name, what):
            if not ok:
                raise ValueError(f"ValidationConfig.{name} must be {what}, got {getattr(self, name)!r}")

        require(is_int(self.max_pixels) and self.max_pixels > 0, "max_pixels", "a positive int")
        if Image.MAX_IMAGE_PIXELS is not None:
            # Later stages open images with PIL's own limit; anything above it would crash them.
            limit = 2 * Image.MAX_IMAGE_PIXELS
            require(
                self.max_pixels <= limit,
                "max_pixels",
                f"at most PIL's limit {limit} (PIL.Image.MAX_IMAGE_PIXELS x 2)",
            )
        require(is_int(self.min_side) and self.min_side >= 1, "min_side", "an int >= 1")
        require(
            isinstance(self.max_aspect, (int, float)) and self.max_aspect >= 1, "max_aspect", "a number >= 1"
        )
        require(
            is_int(self.placeholder_min_urls)
            and self.placeholder_min_urls >= 0
            and self.placeholder_min_urls != 1,
            "placeholder_min_urls",
            "0 (off) or an int >= 2",
        )
        require(
            is_int(self.normalised_quality) and 1 <= self.normalised_quality <= 100,
            "normalised_quality",
            "an int in 1..100",
        )
        require(is_int(self.num_workers) and self.num_workers >= 0, "num_workers", "an int >= 0")


@dataclass
class ImageCheck:
    """Verdict on one file. `reason` is "" when ok; its text before the first ':' is its category."""

    path: str
    ok: bool = False
    reason: str = ""
    width: int = 0  # as stored (before EXIF rotation)
    height: int = 0
    mode: str = ""
    format: str = ""
    sha1: str = ""  # of the file bytes
    file_bytes: int = 0
    frames: int = 0
    needs_normalising: bool = False
    normalise_reason: str = ""  # why, e.g. "CMYK; format WEBP"


@dataclass
class ValidationResult:
    clean: pd.DataFrame  # image_path, text (+ url): one row per caption of a clean image
    rejects: pd.DataFrame  # image_path, (url,) reason: one row per rejected image
    checks: pd.DataFrame  # one row per distinct image
    summary: dict


# -----------------------------------------------------------------------------
# One image


def check_image(path: str | os.PathLike, config: ValidationConfig | None = None) -> ImageCheck:
    """Check one file: readable, an image, within the size limits, fully decodable, convertible to RGB.

    Never raises for a bad file: the verdict is in `ok` and `reason`.
    """
    config = config or ValidationConfig()
    check = ImageCheck(path=os.fspath(path))
    try:
        return _check(check, config)
    except Exception as e:  # a PIL plugin failing in an unforeseen way: still one verdict per file
        check.ok, check.needs_normalising = False, False
        check.reason = f"truncated or corrupt: {type(e).__name__}: {_short_error(e)}"
        return check


def _check(check: ImageCheck, config: ValidationConfig) -> ImageCheck:
    def reject(reason: str) -> ImageCheck:
        check.reason = reason
        return check

    if not check.path:
        return reject("missing file")
    try:
        data = read_image_bytes(check.path)
    except (FileNotFoundError, NotADirectoryError, IndexError):  # IndexError: a dataset file without that row
        return reject("missing file")
    except (OSError, ValueError) as e:  # ValueError: a dataset row without image bytes
        return reject(f"unreadable: {_short_error(e)}")
    check.file_bytes = len(data)
    if not data:
        return reject("empty file")
    check.sha1 = hashlib.sha1(data).hexdigest()

    # Header only: nothing is decoded until the size has been checked.
    try:
        image = _open_header(data)
    except Image.DecompressionBombError as e:
        return reject(f"too large: {_short_error(e)}")
    except UnidentifiedImageError:
        return reject(_not_an_image(data))
    except Exception as e:  # a damaged header makes some plugins raise struct/Syntax/Value errors
        return reject(f"truncated or corrupt: {_short_error(e)}")

    with image:
        width, height = image.size
        check.width, check.height = width, height
        check.mode, check.format = image.mode, image.format or ""
        if width * height > config.max_pixels:
            return reject(f"too large: {width}x{height} pixels")
        if min(width, height) < config.min_side:
            return reject(f"too small: {width}x{height}")
        if max(width, height) > config.max_aspect * min(width, height):
            return reject(f"extreme aspect ratio: {width}x{height}")

        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # must raise on truncation whatever the caller set
        try:
            image.load()  # the full decode: Image.verify() passes truncated files
        except Image.DecompressionBombError as e:  # a GIF/TIFF frame bigger than the header said
            return reject(f"too large: {_short_error(e)}")
        except Exception as e:
            return reject(f"truncated or corrupt: {_short_error(e)}")
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved

        check.mode = image.mode  # some plugins settle the mode while loading
        try:
            check.frames = int(getattr(image, "n_frames", 1))
            why = _why_normalise(image)
            # Exactly what load_rgb does after decoding, so it cannot fail later. For a plain RGB file
            # without rotation it is two copies that cannot fail (getexif ran above): skip them.
            rgb = to_rgb(image) if why else image
        except Exception as e:
            return reject(f"cannot convert to RGB: {_short_error(e)}")
    if why and max(rgb.size) > JPEG_MAX_SIDE:
        return reject(f"too large: {width}x{height} (over JPEG's {JPEG_MAX_SIDE} px side)")
    check.needs_normalising = bool(why)
    check.normalise_reason = "; ".join(why)
    check.ok = True
    return check


def normalise_image(
    path: str | os.PathLike, out_path: str | os.PathLike, config: ValidationConfig | None = None
) -> Path:
    """Write `load_rgb(path)` as an 8-bit RGB JPEG (quality `normalised_quality`, 4:4:4), atomically."""
    config = config or ValidationConfig()
    data = read_image_bytes(path)
    rgb = load_rgb(io.BytesIO(data))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        rgb.save(
            tmp,
            "JPEG",
            quality=config.normalised_quality,
            subsampling=0,
            comment=_tag(hashlib.sha1(data).hexdigest(), config.normalised_quality),
        )
    return out_path


def _open_header(data: bytes) -> Image.Image:
    """Image.open (reads the header only), with the `max_pixels` cap in charge instead of PIL's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked here
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            # Over twice PIL's limit: it refuses before the size can be read. Read just the header
            # with the limit off (restored at once) so the reason can say W x H; nothing is decoded.
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                return Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _why_normalise(image: Image.Image) -> list[str]:
    """Why the stored file is not already what load_rgb returns ([] when it is)."""
    why = []
    if image.format not in PLAIN_FORMATS:
        why.append(f"format {image.format}")
    if image.mode not in PLAIN_MODES:
        why.append(f"mode {image.mode}")
    if "transparency" in image.info:
        why.append("transparency")
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in range(2, 9):  # the values exif_transpose acts on
        why.append(f"EXIF orientation {orientation}")
    if getattr(image, "n_frames", 1) > 1:
        why.append(f"animated {image.n_frames}")
    return why


def _not_an_image(data: bytes) -> str:
    """Name what a file that PIL cannot identify is, from its first bytes."""
    name = image_format(data)
    if name:
        return f"truncated or corrupt: {name} signature but unreadable header"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "not an image: HTML page"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "not an image: SVG (vector) document"
    if head.startswith(b"<?xml") or head.startswith(b"<"):
        return "not an image: XML document"
    if head.startswith((b"{", b"[")):
        return "not an image: JSON document"
    try:
        text = data[:1024].decode("utf-8")
    except UnicodeDecodeError:
        text = ""  # (a multi-byte character cut at 1024 also lands here: harmless)
    if text and sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text):
        return "not an image: text"
    return "not an image: unknown format"


def _short_error(error: BaseException) -> str:
    return short_error(error, limit=160, with_type=False)  # reasons already say what kind of failure


def _tag(sha1: str, quality: int) -> bytes:
    return f"{NORMALISED_TAG} source_sha1={sha1} quality={quality}".encode()


def _is_current(out_path: str, sha1: str, quality: int) -> bool:
    """True when `out_path` is the normalised copy of these source bytes at this quality (header only)."""
    try:
        with Image.open(out_path) as image:
            return image.format == "JPEG" and image.info.get("comment") == _tag(sha1, quality)
    except Exception:
        return False


# -----------------------------------------------------------------------------
# Workers (top level so they pickle under any start method)


def _check_chunk(paths: list[str], config: ValidationConfig) -> list[ImageCheck]:
    return [check_image(path, config) for path in paths]


def _normalise_chunk(jobs: list[tuple[str, str, str]], config: ValidationConfig) -> list[bool]:
    """Write each (source, output, sha1) unless a current copy exists; True where it was written."""
    written = []
    for source, out_path, sha1 in jobs:
        if _is_current(out_path, sha1, config.normalised_quality):
            written.append(False)
            continue
        try:
            normalise_image(source, out_path, config)
        except Exception as e:  # it passed check_image: this is the disk, not the image
            raise DataError(
                f"{source}: could not write its normalised copy {out_path}: {_short_error(e)}"
            ) from e
        written.append(True)
    return written


def _map(
    pool, fn, items: list, config: ValidationConfig, num_workers: int, desc: str, progress: bool
) -> list:
    """fn over chunks of items, in order, with a progress bar; results flattened."""
    chunks = split_into_chunks(items, num_workers, CHUNK_SIZE)
    return [
        out
        for result in map_chunks(fn, chunks, config, pool=pool, desc=desc, progress=progress)
        for out in result
    ]


# -----------------------------------------------------------------------------
# A whole table


def load_input(config: ValidationConfig) -> tuple[pd.DataFrame, DataOrigin]:
    """The table processdata_02 checks, and its origin: this run's downloads, or a CSV / parquet file."""
    if config.source == "processdata_01":
        downloaded = stages.load_downloaded(config.run_dir)
        return downloaded.table, downloaded.origin
    table = read_table(config.source, required=("image_path", "text"))
    # relative image paths are relative to the table's own folder, wherever the notebook runs
    folder = Path(config.source).parent
    table["image_path"] = [
        str(folder / p) if isinstance(p, str) and p.strip() and not os.path.isabs(p) else p
        for p in table["image_path"]
    ]
    return table, DataOrigin(language=None)


def validate_images(
    table: pd.DataFrame,
    out_dir: str | os.PathLike,
    config: ValidationConfig | None = None,
    progress: bool = True,
) -> ValidationResult:
    """Check each distinct image of `table` (image_path, text[, url]) once and write the clean table.

    Byte-identical copies (sha1) behind fewer than `placeholder_min_urls` urls/files are merged into the
    first path in sorted order (one image with every caption, so it cannot land in two splits); more
    copies are a placeholder and all are rejected. Images that need it are rewritten to
    `out_dir/normalised/<stem>.jpg`; a rerun reuses copies made from the same bytes.
    Paths in the outputs are absolute. See the module docstring for the files written.
    """
    config = config or ValidationConfig()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    table = _check_table(table)
    has_url = "url" in table.columns
    row_paths = pd.Series([_abspath(p) for p in table["image_path"]], index=table.index)
    distinct = sorted(set(row_paths))
    num_workers = config.num_workers or os.cpu_count() or 1

    with process_pool(num_workers if len(distinct) > 1 else 1) as pool:
        checks = _map(pool, _check_chunk, distinct, config, num_workers, "check images", progress)
        by_path = {c.path: c for c in checks}
        urls = _urls_per_image(row_paths, table["url"]) if has_url else {}
        status, duplicate_of, placeholder_of = _merge_duplicates(checks, urls, config)

        # Normalise canonical images only; names follow sorted source paths, so reruns agree.
        output = {c.path: c.path for c in checks if status[c.path] == "clean"}
        todo = [p for p in output if by_path[p].needs_normalising]
        names = _output_names(todo)
        jobs = [(p, str((out_dir / NORMALISED_DIR / names[p]).absolute()), by_path[p].sha1) for p in todo]
        written = _map(pool, _normalise_chunk, jobs, config, num_workers, "normalise", progress)
        output.update({source: out for source, out, _ in jobs})

    for path, canonical in duplicate_of.items():
        output[path] = output[canonical]
    reasons = {c.path: c.reason for c in checks if not c.ok}
    reasons.update({p: f"placeholder: same bytes behind {n} urls" for p, n in placeholder_of.items()})

    keep = row_paths.map(lambda p: p in output).to_numpy(dtype=bool)
    clean = pd.DataFrame(
        {"image_path": row_paths[keep].map(output).to_numpy(), "text": table["text"].to_numpy()[keep]}
    )
    if has_url:
        clean["url"] = table["url"].to_numpy()[keep]
    rejected = sorted(reasons)
    rejects = pd.DataFrame({"image_path": pd.Series(rejected, dtype=object)})  # str columns even when empty
    if has_url:
        rejects["url"] = [next(iter(urls.get(p, [])), "") for p in rejected]
    rejects["reason"] = pd.Series([reasons[p] for p in rejected], dtype=object)

    checks_df = pd.DataFrame([asdict(c) for c in checks], columns=[f.name for f in fields(ImageCheck)])
    checks_df["ok"] = checks_df["path"].map(lambda p: p in output).astype(bool)
    checks_df["reason"] = checks_df["path"].map(lambda p: reasons.get(p, ""))
    checks_df["status"] = checks_df["path"].map(status)
    checks_df["duplicate_of"] = checks_df["path"].map(lambda p: duplicate_of.get(p, ""))
    checks_df["output_path"] = checks_df["path"].map(lambda p: output.get(p, ""))  # where its rows point
    normalised_files = {out for _, out, _ in jobs}
    checks_df["normalised_path"] = checks_df["output_path"].map(lambda p: p if p in normalised_files else "")

    seconds = time.perf_counter() - start
    summary = {
        "checked": len(distinct),
        "clean": sum(s == "clean" for s in status.values()),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(r.split(":", 1)[0] for r in reasons.values()).items())),
        "duplicates": len(duplicate_of),
        "normalised": len(jobs),
        "normalised_reused": len(jobs) - sum(written),
        # "mode CMYK", "format WEBP", "transparency", "EXIF orientation", "animated": images each
        "normalised_by_reason": dict(
            sorted(
                Counter(
                    re.sub(r" \d+$", "", part)
                    for p in todo
                    for part in by_path[p].normalise_reason.split("; ")
                ).items()
            )
        ),
        "rows_in": len(table),
        "rows_clean": len(clean),
        "rows_rejected": len(table) - len(clean),
        "num_workers": num_workers,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(distinct) / seconds, 1) if seconds > 0 else None,
    }
    summary = {"headline": headline(summary), **summary}
    if distinct and not summary["clean"]:
        examples = "; ".join(f"{p}: {reasons[p]}" for p in list(reasons)[:3])
        raise DataError(f"no usable image: {summary['headline']} For example {examples}")
    # clean.csv last: processdata_03 takes its presence to mean this stage finished.
    write_table(checks_df, out_dir / "checks.csv")
    write_table(rejects, out_dir / "rejects.csv")
    write_table(clean, out_dir / "clean.csv")
    return ValidationResult(clean=clean, rejects=rejects, checks=checks_df, summary=summary)


def headline(summary: dict) -> str:
    """One sentence of what validation found, from its summary: "2,670 of 2,810 images are valid (87 normalised
    to RGB); 107 rejected (placeholder 53, too large 18, too small 18, truncated or corrupt 18); 33 duplicates
    merged."."""
    checked, clean, rejected = summary["checked"], summary["clean"], summary["rejected"]
    duplicates, normalised = summary.get("duplicates", 0), summary.get("normalised", 0)
    text = (
        f"All {count(checked)} images are valid"
        if clean == checked
        else (f"{count(clean)} of {count(checked)} images are valid")
    )
    if normalised:
        text += f" ({count(normalised)} normalised to RGB)"
    if rejected:
        reasons = breakdown(summary.get("rejected_by_reason") or {}, limit=4)
        text += f"; {count(rejected)} rejected" + (f" ({reasons})" if reasons else "")
    if duplicates:
        text += f"; {count(duplicates)} duplicate{'s' if duplicates != 1 else ''} merged"
    return text + "."


def summary_table(summary: dict):
    """Validation's numbers as a small two-column table (reasons go in `reasons_table`)."""
    checked = summary["checked"]
    return facts_table(
        {
            "images checked": count(checked),
            "valid": f"{count(summary['clean'])} ({share(summary['clean'], checked)})",
            "rejected": f"{count(summary['rejected'])} ({share(summary['rejected'], checked)})",
            "duplicates merged": count(summary.get("duplicates", 0)),
            "normalised to RGB JPEG": count(summary.get("normalised", 0)),
            "caption rows kept": f"{count(summary.get('rows_clean'))} of {count(summary.get('rows_in'))}",
            "time": duration(summary.get("seconds")),
            "images per second": number(summary.get("images_per_s")),
        }
    )


def reasons_table(summary: dict, key: str = "rejected_by_reason"):
    """Images by reason (`rejected_by_reason`, or `normalised_by_reason`): reason, images, share of all checked."""
    return counts_table(summary.get(key) or {}, "reason", "images", total=summary["checked"])


def _check_table(table: pd.DataFrame) -> pd.DataFrame:
    check_columns(table, ("image_path", "text"), "validate_images: table")
    if len(table) == 0:
        raise DataError("validate_images: table has no rows")
    return table.reset_index(drop=True)


def _abspath(value) -> str:
    """Absolute path of a table cell; "" for an empty or missing cell (rejected as a missing file)."""
    if not isinstance(value, (str, os.PathLike)):
        return ""
    value = os.fspath(value).strip()
    return os.path.abspath(value) if value else ""


def _urls_per_image(row_paths: pd.Series, url: pd.Series) -> dict[str, list[str]]:
    """Distinct non-empty urls of each image, in row order."""
    urls = defaultdict(dict)
    for path, u in zip(row_paths, url):
        if isinstance(u, str) and u.strip():
            urls[path][u.strip()] = None
    return {p: list(u) for p, u in urls.items()}


def _merge_duplicates(checks: list[ImageCheck], urls: dict[str, list[str]], config: ValidationConfig):
    """Group good images by sha1. Returns (status per path, duplicate -> canonical, placeholder -> sources)."""
    status = {c.path: "rejected" for c in checks}
    groups = defaultdict(list)
    for c in checks:  # checks are in sorted path order, so group[0] is the canonical copy
        if c.ok:
            groups[c.sha1].append(c.path)
    duplicate_of, placeholder_of = {}, {}
    for group in groups.values():
        # A copy is another file or another url: processdata_01 may store one file for many urls.
        sources = max(len(group), len({u for p in group for u in urls.get(p, [])}))
        if config.placeholder_min_urls and sources >= config.placeholder_min_urls:
            placeholder_of.update({p: sources for p in group})
            continue
        status[group[0]] = "clean"
        for p in group[1:]:
            status[p] = "duplicate"
            duplicate_of[p] = group[0]
    return status, duplicate_of, placeholder_of


def _output_names(sources: list[str]) -> dict[str, str]:
    """<stem>.jpg for each source; later sources with a taken name (any case) get <stem>_1.jpg, ..."""
    names, taken = {}, set()
    for source in sorted(sources):
        stem = re.sub(r"[^\w.\-]+", "_", Path(source).stem).strip("._") or "image"
        name, k = f"{stem}.jpg", 0
        while name.lower() in taken:
            k += 1
            name = f"{stem}_{k}.jpg"
        taken.add(name.lower())
        names[source] = name
    return names
