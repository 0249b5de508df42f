"""A misbehaving image web site built from the demo set, so `make demo` downloads for real.

Users do not receive tidy image folders: they get a `url,filename,text` manifest (one row per
caption, several rows per url) and a web that answers with 404s, flaky 500s, slow or cut-off
responses, HTML error pages under `.jpg` names, CMYK and 16-bit files, EXIF-rotated photos,
decompression bombs, duplicates and "image not available" placeholders. This module serves the
demo images (see `nbutils.demo.scenes`) that way from a local `FaultServer` on 127.0.0.1, and says for every
url what the downloader and the validator are expected to conclude.

    site = build_demo_site("data/demo")
    with serve(site) as server:
        write_manifest(site, server.base_url, "outputs/raw/manifest.csv")
        ...download, validate, compare with site.expected...

processdata_01 generates, serves and writes the manifest in one call: `nbutils.demo.source.serve_demo`.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..errors import DataError, check_int
from ..files import read_json, write_table
from .fault_server import FaultServer, Route
from .scenes import describe_objects

# -----------------------------------------------------------------------------
# config
FAULT_KINDS = [
    "http_404",
    "http_500_then_ok",
    "slow",
    "truncated_body",
    "html_as_jpg",
    "wrong_content_type",
    "redirect_loop",
    "oversized",
    "truncated_jpeg",
    "cmyk",
    "png_16bit",
    "palette_transparency",
    "exif_rotated",
    "tiny",
    "huge_header",
    "duplicate",
    "placeholder",
    "ok",
]
# Opt-in faults, never in the demo's own mix (build_demo_site(extra_faults={kind: count})): hosts such as S3
# buckets and CDNs that serve images under a generic Content-Type or none, and an HTML page served that way.
EXTRA_FAULT_KINDS = [
    "jpeg_as_octet_stream",
    "jpeg_as_binary_octet_stream",
    "jpeg_without_content_type",
    "html_as_octet_stream",
]
# Relative frequency of each fault among the faulty images: dead links dominate real crawls, then
# placeholders, flaky servers, error pages and re-posted duplicates. "slow" is a fixed count instead.
FAULT_WEIGHTS = {
    "http_404": 5,
    "http_500_then_ok": 2,
    "truncated_body": 1,
    "html_as_jpg": 2,
    "wrong_content_type": 1,
    "redirect_loop": 1,
    "oversized": 1,
    "truncated_jpeg": 1,
    "cmyk": 1,
    "png_16bit": 1,
    "palette_transparency": 1,
    "exif_rotated": 2,
    "tiny": 1,
    "huge_header": 1,
    "duplicate": 2,
    "placeholder": 3,
}
# What the downloader (error kind) and the validator (reason category) must conclude; the contract
# with nbutils.data.download and nbutils.data.validate. Missing keys: download "ok", validation "clean".
EXPECT_DOWNLOAD = {
    "http_404": "http_404",
    "slow": "timeout",
    "truncated_body": "truncated",
    "html_as_jpg": "bad_content_type",
    "wrong_content_type": "bad_content_type",
    "redirect_loop": "too_many_redirects",
    "oversized": "too_large",
    "html_as_octet_stream": "not_an_image",
}
EXPECT_VALIDATION = {
    "cmyk": "normalised",
    "png_16bit": "normalised",
    "palette_transparency": "normalised",
    "exif_rotated": "normalised",
    "truncated_jpeg": "truncated or corrupt",
    "tiny": "too small",
    "huge_header": "too large",
    "duplicate": "duplicate",
    "placeholder": "placeholder",
}
DEMO_PORT = 18765  # stable demo urls across runs (see serve)
PNG_KINDS = {"png_16bit", "palette_transparency", "huge_header"}
PLACEHOLDER_MIN_URLS = 6  # a host answering every lost photo with the same bytes; hash counting must see it
MIN_PER_KIND = 2  # each kind this often when the fault share leaves room, else once
TRUNCATED_JPEG_KEEP = 0.6  # share of a JPEG's bytes left in a "truncated_jpeg" file
OVERSIZED_EXTRA = 100_000  # an "oversized" body is max_bytes plus this
TINY_SIDE = 8
HUGE_SIDE = 60_000  # 60000^2 RGB = 10.8 GB if decoded: far past Pillow's bomb limit
EXIF_ORIENTATION = 0x0112
# Orientation tag -> the pixel transform that stores an upright image under it (the inverse of
# what ImageOps.exif_transpose applies for that tag).
ORIENTATION_STORE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
JPEG_QUALITY = 92
IMAGE_DIR = "/images/"  # url path prefix of every served image
LOOP_DIR = "/moved/"  # the other half of each redirect loop
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>Error</title></head>"
    b"<body><h1>Sorry, this photo is no longer available.</h1></body></html>"
)


@dataclass
class DemoSite:
    """A fault-laden web site: what to serve, the raw manifest, and what should come of each url."""

    routes: dict[str, Route]
    manifest_rows: pd.DataFrame  # path, filename, text: one row per caption, before a base url is known
    expected: pd.DataFrame  # one row per url: path, filename, fault, expect_download,
    # expect_validation, demo_filename, duplicate_of
    params: dict = field(default_factory=dict)


def fault_counts(n_images: int, fault_share: float = 0.15, slow_count: int = 4) -> dict[str, int]:
    """How many of `n_images` get each fault kind ("ok" included); independent of the seed.

    About `fault_share` of the images are faulty, spread by FAULT_WEIGHTS; every kind appears at least
    once (MIN_PER_KIND times when the share leaves room), "placeholder" at least PLACEHOLDER_MIN_URLS
    times and "slow" exactly `slow_count` times (each costs a downloader a timeout per attempt).
    """
    check_int("n_images", n_images, 1)
    check_int("slow_count", slow_count, 0)
    if not isinstance(fault_share, (int, float)) or isinstance(fault_share, bool) or not 0 <= fault_share < 1:
        raise ValueError(f"fault_share must be a number in [0, 1); got {fault_share!r}")
    rest = round(fault_share * n_images) - slow_count  # faulty images left for the weighted kinds

    def floors(m):
        return {k: max(m, PLACEHOLDER_MIN_URLS) if k == "placeholder" else m for k in FAULT_WEIGHTS}

    counts = floors(MIN_PER_KIND) if sum(floors(MIN_PER_KIND).values()) <= rest else floors(1)
    extra = max(rest - sum(counts.values()), 0)
    # Largest remainder: the counts sum exactly to the target, ties go to the earlier kind.
    total_weight = sum(FAULT_WEIGHTS.values())
    quotas = {k: extra * w / total_weight for k, w in FAULT_WEIGHTS.items()}
    for k in FAULT_WEIGHTS:
        counts[k] += int(quotas[k])
    by_remainder = sorted(FAULT_WEIGHTS, key=lambda k: -(quotas[k] - int(quotas[k])))
    for k in by_remainder[: extra - sum(int(q) for q in quotas.values())]:
        counts[k] += 1
    counts["slow"] = slow_count
    n_faulty = sum(counts.values())
    # Every duplicate copies its own "ok" image (two copies; more would look like a placeholder).
    if n_images - n_faulty < counts["duplicate"]:
        need = n_faulty + counts["duplicate"]
        raise ValueError(
            f"n_images={n_images} is too few for one image of every fault kind: need at least {need} "
            f"(slow_count={slow_count})"
        )
    counts["ok"] = n_images - n_faulty
    return {k: counts[k] for k in FAULT_KINDS}


def build_demo_site(
    demo_dir,
    seed: int = 0,
    fault_share: float = 0.15,
    max_bytes: int = 2_000_000,
    slow_count: int = 4,
    slow_delay: float = 3.0,
    extra_faults: dict[str, int] | None = None,
) -> DemoSite:
    """Serve the demo set in `demo_dir` (from `generate_demo_dataset`) with faults on a seeded subset.

    Counts per kind come from `fault_counts`; which images get which fault depends only on `seed`.
    Manifest filenames keep the demo image's name (`000123.jpg`, `.png` for PNG variants) and
    `expected.demo_filename` names the demo image whose picture a url shows, so ground truth joins back.
    `extra_faults` ({kind: count}, kinds from EXTRA_FAULT_KINDS) turns that many "ok" images into opt-in faults.
    """
    check_int("seed", seed, 0)
    check_int("max_bytes", max_bytes, 1)
    if not isinstance(slow_delay, (int, float)) or isinstance(slow_delay, bool) or slow_delay <= 0:
        raise ValueError(f"slow_delay must be a number of seconds > 0; got {slow_delay!r}")
    demo_dir = Path(demo_dir)
    captions, records, meta = _read_demo_set(demo_dir)
    names = list(records)  # demo filenames (000000.jpg, ...) in image order
    faults, twins = _assign(len(names), seed, fault_share, slow_count, extra_faults or {})
    language = meta["params"]["language"]
    by_image = captions.groupby("filename", sort=False)["text"].apply(list).to_dict()
    image_size = meta["params"]["image_size"]

    routes, rows, expected = {}, [], []
    for i, (name, fault) in enumerate(zip(names, faults)):
        stem = name.rsplit(".", 1)[0]
        filename = stem + (".png" if fault in PNG_KINDS else ".jpg")
        path = IMAGE_DIR + filename
        image_file = demo_dir / records[name]["image_path"]
        texts = by_image.get(name)
        if not texts:
            raise DataError(f"{demo_dir / 'captions.csv'}: no caption for {records[name]['image_path']}")
        shows = name
        if fault == "duplicate":
            # Same picture as its twin, posted again with other (still true) captions.
            shows = names[twins[i]]
            twin = records[shows]
            texts = _other_captions(twin, by_image[shows], language, len(texts), [seed, i])
            image_file = demo_dir / twin["image_path"]
        routes.update(_routes_for(fault, path, image_file, image_size, max_bytes, slow_delay, seed, i))
        rows.extend({"path": path, "filename": filename, "text": t} for t in texts)
        expected.append(
            {
                "path": path,
                "filename": filename,
                "fault": fault,
                "expect_download": EXPECT_DOWNLOAD.get(fault, "ok"),
                "expect_validation": ""
                if fault in EXPECT_DOWNLOAD
                else EXPECT_VALIDATION.get(fault, "clean"),
                "demo_filename": shows,
                "duplicate_of": IMAGE_DIR + names[twins[i]] if fault == "duplicate" else "",
            }
        )
    params = {
        "demo_dir": str(demo_dir.resolve()),
        "seed": seed,
        "fault_share": fault_share,
        "max_bytes": max_bytes,
        "slow_count": slow_count,
        "slow_delay": slow_delay,
    }
    if extra_faults:
        params["extra_faults"] = dict(extra_faults)
    return DemoSite(
        routes=routes,
        manifest_rows=pd.DataFrame(rows, columns=["path", "filename", "text"]),
        expected=pd.DataFrame(expected),
        params=params,
    )


def manifest(site: DemoSite, base_url: str) -> pd.DataFrame:
    """The raw manifest users receive: url, filename, text; one row per caption."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://; got {base_url!r}")
    rows = site.manifest_rows
    return pd.DataFrame(
        {"url": base_url.rstrip("/") + rows["path"], "filename": rows["filename"], "text": rows["text"]}
    )


def write_manifest(site: DemoSite, base_url: str, path) -> Path:
    """Write `manifest(site, base_url)` as UTF-8 CSV, atomically."""
    return write_table(manifest(site, base_url), path)


def compare_downloads(site: DemoSite, status: pd.DataFrame, base_url: str) -> pd.DataFrame:
    """One row per url: its fault, what the downloader was expected to conclude, what it did (`got`).

    `status` is the downloader's status table (url, status, error_kind). `got` is "ok" or the error kind.
    """
    got = status.assign(
        path=status["url"].str.removeprefix(base_url.rstrip("/")),
        got=status["error_kind"].where(status["status"] != "ok", "ok"),
    )
    out = site.expected[["path", "filename", "fault", "expect_download"]].merge(
        got[["path", "got"]], on="path", how="left"
    )
    out["got"] = out["got"].fillna("not attempted")
    out["as_expected"] = out["got"] == out["expect_download"]
    return out


def serve(site: DemoSite, port: int = DEMO_PORT) -> FaultServer:
    """A FaultServer for the site, not yet started: `with serve(site) as server: ...`.

    The same port on every run keeps the urls stable, so a rerun of the download resumes
    instead of fetching everything again; if the port is taken, any free one is used.
    """
    try:
        return FaultServer(site.routes, port=port)
    except OSError:
        return FaultServer(site.routes)


# -----------------------------------------------------------------------------
# which image gets which fault


def _assign(
    n_images: int, seed: int, fault_share: float, slow_count: int, extra_faults: dict[str, int]
) -> tuple[list[str], dict[int, int]]:
    """Fault per image index, and for each duplicate the index of the "ok" image it copies."""
    unknown = sorted(set(extra_faults) - set(EXTRA_FAULT_KINDS))
    if unknown:
        raise ValueError(f"extra_faults: unknown kind(s) {unknown}; choose from {EXTRA_FAULT_KINDS}")
    for kind, n in extra_faults.items():
        check_int(f"extra_faults[{kind!r}]", n, 0)
    counts = fault_counts(n_images, fault_share, slow_count)
    rng = np.random.default_rng([seed, 0xD5])
    kinds = [k for k in FAULT_KINDS for _ in range(counts[k])]
    faults = [kinds[j] for j in rng.permutation(n_images)]
    # A twin comes earlier in the manifest than its duplicate, so "keep the first copy" keeps the twin.
    twins, used = {}, set()
    for i in range(n_images):
        if faults[i] != "duplicate":
            continue
        earlier = [j for j in range(i) if faults[j] == "ok" and j not in used]
        if not earlier:  # no free "ok" image before it: trade places with the next free one
            j = next(j for j in range(i + 1, n_images) if faults[j] == "ok")
            faults[i], faults[j] = "ok", "duplicate"
            continue  # i is now "ok"; j is handled when the loop gets there
        twins[i] = earlier[int(rng.integers(len(earlier)))]
        used.add(twins[i])
    # Opt-in kinds take "ok" images no duplicate copies, drawn from their own stream: the demo's mix stays as it is.
    free = [i for i in range(n_images) if faults[i] == "ok" and i not in used]
    wanted = [k for k in EXTRA_FAULT_KINDS for _ in range(extra_faults.get(k, 0))]
    if len(wanted) > len(free):
        raise ValueError(
            f"extra_faults asks for {len(wanted)} images; only {len(free)} plain images are left"
        )
    for kind, i in zip(wanted, np.random.default_rng([seed, 0xE7]).permutation(free)):
        faults[int(i)] = kind
    return faults, twins


def _routes_for(
    fault, path, image_file: Path, image_size, max_bytes, slow_delay, seed, i
) -> dict[str, Route]:
    """The route(s) that make `path` misbehave as `fault` says. Bodies are made per request from `image_file`,
    so that a site of 100,000 images does not hold its bodies (2 MB each for "oversized") in memory."""
    if fault not in FAULT_KINDS and fault not in EXTRA_FAULT_KINDS:
        raise ValueError(f"unknown fault kind {fault!r}")
    if fault == "http_404":
        return {}
    if fault == "redirect_loop":
        other = LOOP_DIR + path[len(IMAGE_DIR) :]
        return {path: Route(redirect_to=other), other: Route(redirect_to=path)}
    body = _Body(fault, image_file, image_size, max_bytes, seed, i)
    if fault == "http_500_then_ok":
        return {path: Route(make_body=body, fail_first=1)}
    if fault == "slow":
        return {path: Route(make_body=body, delay=slow_delay)}
    if fault == "truncated_body":
        return {path: Route(make_body=body, truncate_to=image_file.stat().st_size // 2)}
    return {path: Route(make_body=body, content_type=CONTENT_TYPES.get(fault, "image/jpeg"))}


# Content-Type of the faults not served as image/jpeg (None: no header at all).
CONTENT_TYPES = {
    "html_as_jpg": "text/html; charset=utf-8",
    "wrong_content_type": "text/plain",
    "jpeg_as_octet_stream": "application/octet-stream",
    "jpeg_as_binary_octet_stream": "binary/octet-stream",
    "jpeg_without_content_type": None,
    "html_as_octet_stream": "application/octet-stream",
    "png_16bit": "image/png",
    "palette_transparency": "image/png",
    "huge_header": "image/png",
}


@dataclass(frozen=True)
class _Body:
    """The bytes served for the image in `image_file` under `fault`, made on each request (the same every time).
    A dataclass rather than a closure, so that two sites built alike compare equal."""

    fault: str
    image_file: Path
    image_size: int
    max_bytes: int
    seed: int
    i: int

    def __call__(self) -> bytes:
        return _body_for(self.fault, self.image_file, self.image_size, self.max_bytes, self.seed, self.i)


def _body_for(fault: str, image_file: Path, image_size: int, max_bytes: int, seed: int, i: int) -> bytes:
    if fault in ("html_as_jpg", "html_as_octet_stream"):
        return HTML_ERROR_PAGE
    if fault == "huge_header":
        return _png_bomb(HUGE_SIDE, HUGE_SIDE)
    if fault == "placeholder":
        return _placeholder_jpeg(image_size)
    jpeg = image_file.read_bytes()
    if fault == "oversized":
        # A valid JPEG with junk after its end marker: only the size gives it away.
        return jpeg + bytes(max_bytes + OVERSIZED_EXTRA - len(jpeg))
    if fault == "truncated_jpeg":
        # A complete 200 response of a file that was already cut short on the host.
        return jpeg[: int(len(jpeg) * TRUNCATED_JPEG_KEEP)]
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    if fault == "cmyk":
        return _encode(image.convert("CMYK"), "JPEG")
    if fault == "tiny":
        return _encode(image.resize((TINY_SIDE, TINY_SIDE), Image.Resampling.LANCZOS), "JPEG")
    if fault == "exif_rotated":
        orientation = list(ORIENTATION_STORE)[
            int(np.random.default_rng([seed, i]).integers(len(ORIENTATION_STORE)))
        ]
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        return _encode(image.transpose(ORIENTATION_STORE[orientation]), "JPEG", exif=exif)
    if fault == "png_16bit":
        # 16-bit grayscale (what scanners and medical/astro tools write); naive convert("RGB") clips it to white.
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return _encode(Image.fromarray(grey), "PNG")
    if fault == "palette_transparency":
        # 255 colours leave palette index 255 unused; it is the transparent one, so compositing on white
        # keeps the picture (and its ground truth) unchanged.
        pal = image.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
        palette = pal.getpalette()[: 255 * 3]  # shorter when the image has fewer colours
        pal.putpalette(palette + [0] * (255 * 3 - len(palette)) + [255, 255, 255])
        return _encode(pal, "PNG", transparency=255)
    return jpeg  # ok, duplicate, the flaky, slow and cut-off hosts, and the generic Content-Types


# -----------------------------------------------------------------------------
# image bytes


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        kwargs = {"quality": JPEG_QUALITY, **kwargs}
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height RGB, with the first two rows of pixel data only."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    rows = zlib.compress(bytes((1 + 3 * width) * 2), 9)  # filter byte + black pixels, two rows
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


@functools.cache
def _placeholder_jpeg(size: int) -> bytes:
    """A grey "image not available" picture, the kind a host serves for every lost photo."""
    big = size * 4  # draw large, then downsample: clean lines at 64 px
    image = Image.new("RGB", (big, big), (204, 204, 204))
    draw = ImageDraw.Draw(image)
    w = max(big // 32, 1)
    draw.rectangle([big * 0.2, big * 0.25, big * 0.8, big * 0.7], outline=(150, 150, 150), width=w)
    draw.polygon(
        [
            (big * 0.25, big * 0.65),
            (big * 0.42, big * 0.42),
            (big * 0.55, big * 0.58),
            (big * 0.63, big * 0.5),
            (big * 0.75, big * 0.65),
        ],
        fill=(170, 170, 170),
    )
    draw.ellipse([big * 0.6, big * 0.32, big * 0.7, big * 0.42], fill=(170, 170, 170))
    draw.line([(big * 0.15, big * 0.15), (big * 0.85, big * 0.85)], fill=(150, 150, 150), width=w)
    draw.text(
        (big / 2, big * 0.85),
        "image not available",
        fill=(110, 110, 110),
        anchor="mm",
        font_size=max(big // 14, 8),
    )
    return _encode(image.resize((size, size), Image.Resampling.LANCZOS), "JPEG")


def _other_captions(record: dict, taken: list[str], language: str, n: int, seed) -> list[str]:
    """`n` true captions of `record`'s picture, avoiding `taken` (its own captions) where possible."""
    fresh = describe_objects(
        record["objects"],
        language,
        np.random.default_rng(seed),
        background_style=record.get("background_style"),
    )
    return ([t for t in fresh if t not in taken] + [t for t in fresh if t in taken])[:n]


# -----------------------------------------------------------------------------
# reading the demo set


def _read_demo_set(demo_dir: Path) -> tuple[pd.DataFrame, dict[str, dict], dict]:
    """captions (filename, text), ground-truth records by filename, meta.json."""
    hint = f"generate it first with nbutils.demo.scenes.generate_demo_dataset({str(demo_dir)!r})"
    for name in ("captions.csv", "objects.jsonl", "meta.json"):
        if not (demo_dir / name).is_file():
            raise DataError(f"{demo_dir / name}: not found; {hint}")
    meta = read_json(demo_dir / "meta.json")
    if not isinstance(meta, dict) or not {"language", "image_size"} <= set(meta.get("params", {})):
        raise DataError(f"{demo_dir / 'meta.json'}: not a demo data set's meta.json; {hint}")
    records = {}
    for line_no, line in enumerate((demo_dir / "objects.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            records[Path(record["image_path"]).name] = record
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{demo_dir / 'objects.jsonl'}, line {line_no}: not a ground-truth record ({e!r})"
            ) from None
    captions = pd.read_csv(demo_dir / "captions.csv", dtype=str, keep_default_na=False, encoding="utf-8")
    if not {"text", "image_path"} <= set(captions.columns):
        raise DataError(
            f"{demo_dir / 'captions.csv'}: needs columns text, image_path; has {list(captions.columns)}"
        )
    captions["filename"] = [Path(p).name for p in captions["image_path"]]
    unknown = sorted(set(captions["filename"]) - set(records))
    if unknown:
        raise DataError(
            f"{demo_dir / 'captions.csv'}: {len(unknown)} image(s) missing from objects.jsonl, "
            f"e.g. {unknown[0]}"
        )
    return captions[["filename", "text"]], records, meta
