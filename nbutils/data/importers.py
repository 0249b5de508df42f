"""Caption-table importers: turn each published image-caption layout into one DataFrame.

Every reader returns one row per caption with these columns, in this order where present:

    image_path  absolute path of the image (for url-only manifests: where it WILL be stored; for an image
                embedded in a Hugging Face dataset file or an img2dataset tar: its pseudo path,
                `nbutils.data.hf_datasets`, `nbutils.data.tar_members`)
    text        the caption, stripped of surrounding whitespace only (cleaning happens later)
    url, filename, image_id   (always strings, so ids like "007" survive)

Bad input raises `DataError` naming the file (and the line, row or column) so it can be fixed.

    df = import_captions("flickr_tokens", "Flickr8k_text/flickr8kzhc.caption.txt", "Flicker8k_Dataset")
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa

from ..errors import DataError
from ..files import atomic_path
from . import hf_datasets, tar_members
from .images import image_format

OUTPUT_COLUMNS = ["image_path", "text", "url", "filename", "image_id"]
TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}  # plus .jsonl, .json, .parquet
TABLE_SUFFIXES = (*TABLE_SEPARATORS, ".jsonl", ".json", ".parquet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
DEFAULT_IMAGE_SUFFIX = ".jpg"
WUKONG_HASH_CHARS = 16  # filename = first 16 hex digits of sha1(url): collisions need ~4e9 urls
IMG2DATASET_SUCCESS = "success"
IMG2DATASET_STATUSES = (IMG2DATASET_SUCCESS, "failed_to_download", "failed_to_resize")  # img2dataset's own
IMG2DATASET_TOP_ERRORS = 3  # error messages listed per shard by img2dataset_statistics
IMG2DATASET_ERROR_CHARS = 100  # longer error messages are cut, to keep the statistics table readable
IMG2DATASET_EXTRACT_DIR = "_extracted"  # default home of images pulled out of webdataset shards
HF_EXTRACT_DIR = "_extracted"  # default home of images written out of a Hugging Face dataset (extract_images)
# Caption columns of published Hugging Face datasets, tried in this order when caption_column is "".
HF_CAPTION_COLUMNS = ("caption", "captions", "sentences", "sentence", "text", "raw", "caption_zh")
HF_CAPTION_FIELDS = ("raw", "text", "caption")  # a caption given as a struct: the field holding its text
FORMAT_SUFFIXES = {  # the file suffix of each image format, for extracted images
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
}

URL_PATH = re.compile(r"^(?:[A-Za-z][\w+.-]*:)?(?://[^/?#]*)?([^?#]*)")  # scheme://host, then path
# "<key>#<n>\t<caption>" with an optional "#<letters>#" middle part (Flickr8k-CN "#zhc#",
# Flickr30k-CN "#zhb#"); Flickr8k-CN separates the caption with a space instead of a tab.
KEYED_LINE = re.compile(r"^(?P<key>[^#\t ]+)#(?:[A-Za-z]+#)?\d+[\t ]+(?P<text>.*)$")
COCO_KEY = re.compile(r"^COCO_(?P<split>[a-z]+\d{4})_(?P<id>\d+)$")  # COCO_train2014_000000000036


# ----------------------------------------------------------------------------- reading files


def _read_bytes(path: str | os.PathLike) -> tuple[Path, bytes]:
    path = Path(path)
    _check_file(path, allow_empty=True)  # a file of blank lines is empty too: checked below
    data = path.read_bytes()
    if not data or data.isspace():
        raise DataError(f"{path}: empty file (no rows)")
    return path, data


def _read_text(path: str | os.PathLike) -> tuple[Path, str]:
    """UTF-8 text of `path` (a BOM is dropped); a bad byte is reported by line number."""
    path, data = _read_utf8(path)
    return path, data.decode("utf-8")


def _read_utf8(path: str | os.PathLike) -> tuple[Path, bytes]:
    """Bytes of `path` without a BOM, after checking they are valid UTF-8."""
    path, data = _read_bytes(path)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        data.decode("utf-8")
        return path, data
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}: not valid UTF-8 at line {line}, byte {column} ({data[e.start : e.start + 4]!r}); "
            "re-save it as UTF-8 (Chinese files are often GB18030: iconv -f gb18030 -t utf-8)"
        ) from None


def _read_json(path: str | os.PathLike) -> tuple[Path, object]:
    path, text = _read_text(path)
    try:
        return path, json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): it also splits on U+2028, \x1c etc., which can sit inside a caption.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records = []
    for n, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {n}, column {e.colno}: {e.msg}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {n} is not a JSON object")
        records.append(record)
    return pd.DataFrame.from_records(records)


def read_table(
    path: str | os.PathLike, required: Iterable[str] = (), columns: dict | None = None
) -> pd.DataFrame:
    """Read a CSV / TSV / tab-separated .txt / JSONL / JSON (list of objects) / parquet table.

    `columns` renames the file's columns to the standard names (e.g. {"caption": "text"}); `required` names
    columns (after renaming) that must be present. CSV cells are read as strings.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported table type {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}"
        )
    if suffix == ".parquet":
        _check_file(path)
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable parquet file ({e})") from e
    elif suffix == ".json":
        path, data = _read_json(path)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects (one per row)")
        df = pd.DataFrame.from_records(data)
    elif suffix == ".jsonl":
        path, text = _read_text(path)
        df = _read_jsonl(path, text)
    else:
        path, data = _read_utf8(path)
        try:  # from bytes: pandas parses these ~3x faster than a StringIO
            df = pd.read_csv(
                io.BytesIO(data),
                encoding="utf-8",
                sep=TABLE_SEPARATORS[suffix],
                dtype=str,
                keep_default_na=False,
            )
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: empty file (no rows)") from None
        except pd.errors.ParserError as e:
            raise DataError(f"{path}: cannot parse as {suffix[1:].upper()}: {e}") from None

    found = [str(c).strip() for c in df.columns]
    df.columns = found
    if len(df) == 0:
        raise DataError(f"{path}: no rows (only a header)" if found else f"{path}: empty file (no rows)")
    if columns:
        df = df.rename(columns=columns)
        if df.columns.duplicated().any():
            raise DataError(
                f"{path}: renaming {columns} gives duplicate columns; the file has columns {found}"
            )
    missing = [c for c in required if c not in df.columns]
    if missing:
        renamed = f" (after renaming {columns})" if columns else ""
        raise DataError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}{renamed}; "
            f"the file has columns {found}{_hf_dataset_hint(df)}"
        )
    return df


def _hf_dataset_hint(df: pd.DataFrame) -> str:
    """A pointer to the hf_dataset importer when a column holds images as Hugging Face stores them ({bytes, path})."""
    for column in df.columns:
        first = next((v for v in df[column].head(20) if v is not None), None)
        if isinstance(first, dict) and "bytes" in first:
            return (
                f". Column {column!r} holds embedded images, as Hugging Face datasets store them: read the file "
                "with processdata_03, input_format 'hf_dataset' (it goes straight to processdata_03, not "
                "through processdata_02)"
            )
    return ""


def _check_file(path: Path, allow_empty: bool = False) -> None:
    """DataError naming `path` when it is missing, not a file, or (unless `allow_empty`) empty."""
    if not path.exists():
        where = (
            ""
            if path.is_absolute()
            else f" (looked in {path.absolute()}: relative paths start in the current folder)"
        )
        raise DataError(f"{path}: file not found{where}")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if not allow_empty and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (no rows)")


# ----------------------------------------------------------------------------- shared helpers


def _finish(df: pd.DataFrame | list[dict], path) -> pd.DataFrame:
    """Keep the standard columns in order, as strings, with captions stripped."""
    df = df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
    if len(df) == 0:
        raise DataError(f"{path}: no captions found")
    out = pd.DataFrame({c: df[c].fillna("").astype(str) for c in OUTPUT_COLUMNS if c in df.columns})
    out["text"] = out["text"].str.strip()
    return out.reset_index(drop=True)


def string_column(column: pd.Series) -> list[str]:
    """A column as a list of str: missing values become "", numbers their text (ids like 007 survive as read)."""
    return column.fillna("").astype(str).tolist()


def _root(images_root, fmt: str) -> str:
    if images_root is None:
        raise DataError(
            f"{fmt}: images_root is required (the folder the images are in, or will be downloaded to)"
        )
    return os.path.abspath(os.path.expanduser(os.fspath(images_root)))


def _join_under(root: str, names: Sequence[str], where: Callable[[int], str]) -> list[str]:
    """images_root/name for each name; a name that would land outside images_root is an error,
    because a downloader will later write to exactly this path."""
    prefix = root.rstrip(os.sep) + os.sep
    paths = [os.path.normpath(prefix + name) for name in names]  # plain string ops: millions of rows
    for i, (name, p) in enumerate(zip(names, paths)):
        if not name or name.startswith(os.sep) or not p.startswith(prefix):
            raise DataError(
                f"{where(i)}: image file name {name!r} must be a relative path inside images_root"
            )
    return paths


def _resolve(root: str, names: Sequence[str], where: Callable[[int], str]) -> list[str]:
    """Absolute paths; relative ones are taken relative to `root` (may point anywhere)."""
    paths = []
    for i, name in enumerate(names):
        if not name.strip():
            raise DataError(f"{where(i)}: empty image_path")
        paths.append(os.path.abspath(os.path.join(root, os.path.expanduser(name))))
    return paths


def _keyed_lines(path) -> tuple[Path, list[tuple[int, str, str]]]:
    """(line number, key, caption) for each non-blank `<key>#[tag#]<n><sep><caption>` line."""
    path, text = _read_text(path)
    rows = []
    for n, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        m = KEYED_LINE.match(line)
        if m is None:
            raise DataError(f"{path}: line {n} is not '<image>#<n><TAB><caption>': {line[:80]!r}")
        rows.append((n, m["key"], m["text"]))
    if not rows:
        raise DataError(f"{path}: empty file (no rows)")
    return path, rows


# ----------------------------------------------------------------------------- published layouts


def read_original_csv(path: str | os.PathLike, images_root) -> pd.DataFrame:
    """The original project's `url,filename,text` CSV; images live at images_root/filename."""
    df = read_table(path, required=("url", "filename", "text"))
    root = _root(images_root, "original_csv")
    df["image_path"] = _join_under(root, string_column(df["filename"]), lambda i: f"{path}: row {i + 1}")
    return _finish(df, path)


def read_caption_table(
    path: str | os.PathLike, images_root=None, columns: dict | None = None
) -> pd.DataFrame:
    """Any table `read_table` reads with a `text` column and an `image_path` or `filename` column.

    Relative image paths / file names are resolved against images_root, or the table's own folder.
    """
    df = read_table(path, required=("text",), columns=columns)
    if "image_path" not in df.columns and "filename" not in df.columns:
        raise DataError(
            f"{path}: missing column 'image_path' (or 'filename'); the table has columns {list(df.columns)}"
        )
    return _with_image_paths(df, path, images_root)


def read_text_image_csv(path: str | os.PathLike, images_root=None) -> pd.DataFrame:
    """A `text,image_path` CSV (any column order). Relative paths are resolved against
    images_root, or the CSV's own folder when images_root is None."""
    return _with_image_paths(read_table(path, required=("text", "image_path")), path, images_root)


def _with_image_paths(df: pd.DataFrame, path, images_root) -> pd.DataFrame:
    root = os.path.abspath(images_root if images_root is not None else Path(path).parent)
    where = lambda i: f"{path}: row {i + 1}"  # noqa: E731
    if "image_path" in df.columns:
        df["image_path"] = _resolve(root, string_column(df["image_path"]), where)
    else:
        df["image_path"] = _join_under(root, string_column(df["filename"]), where)
    return _finish(df, path)


def read_flickr_tokens(path: str | os.PathLike, images_root) -> pd.DataFrame:
    """Flickr30k / Flickr8k `.token` files and their Chinese versions (Flickr8k-CN `#zhc#`,
    Flickr30k-CN `#zhb#`, whose word-segmented text is kept as-is here)."""
    root = _root(images_root, "flickr_tokens")
    path, rows = _keyed_lines(path)
    names = [key for _, key, _ in rows]
    return _finish(
        {
            "image_path": _join_under(root, names, lambda i: f"{path}: line {rows[i][0]}"),
            "text": [text for _, _, text in rows],
            "filename": names,
            "image_id": [os.path.splitext(name)[0] for name in names],
        },
        path,
    )


def read_coco_captions(path: str | os.PathLike, images_root) -> pd.DataFrame:
    """COCO captions JSON (`images[{id, file_name}]`, `annotations[{image_id, caption}]`)."""
    root = _root(images_root, "coco_captions")
    path, data = _read_json(path)
    if not (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    ):
        found = list(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(
            f"{path}: not a COCO captions file: expected 'images' and 'annotations' lists, found {found}"
        )
    files = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise DataError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        files[image["id"]] = str(image["file_name"])
    ids, names, texts = [], [], []
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{path}: annotations[{j}] needs 'image_id' and 'caption'")
        if ann["image_id"] not in files:
            raise DataError(
                f"{path}: annotations[{j}] has image_id {ann['image_id']!r}, which has no entry in 'images'"
            )
        ids.append(ann["image_id"])
        names.append(files[ann["image_id"]])
        texts.append(ann["caption"])
    return _finish(
        {
            "image_path": _join_under(root, names, lambda j: f"{path}: annotations[{j}]"),
            "text": texts,
            "filename": names,
            "image_id": ids,
        },
        path,
    )


def read_coco_cn(path: str | os.PathLike, images_root) -> pd.DataFrame:
    """COCO-CN sentences (`COCO_train2014_000000000036#0<TAB>一个...`).

    The image is `<key>.jpg`, inside images_root/train2014/ (the split named in the key) when that
    folder exists, else directly in images_root. image_id is the numeric COCO id ("36"), so the rows
    join with `read_coco_captions`.
    """
    root = _root(images_root, "coco_cn")
    path, rows = _keyed_lines(path)
    split_exists: dict[str, bool] = {}
    names, ids = [], []
    for _, key, _ in rows:
        name = key if key.lower().endswith(IMAGE_SUFFIXES) else key + DEFAULT_IMAGE_SUFFIX
        m = COCO_KEY.match(key)
        if m:
            split = m["split"]
            if split not in split_exists:
                split_exists[split] = os.path.isdir(os.path.join(root, split))
            if split_exists[split]:
                name = f"{split}/{name}"
        names.append(name)
        ids.append(str(int(m["id"])) if m else key)
    return _finish(
        {
            "image_path": _join_under(root, names, lambda i: f"{path}: line {rows[i][0]}"),
            "text": [text for _, _, text in rows],
            "filename": [os.path.basename(n) for n in names],
            "image_id": ids,
        },
        path,
    )


def read_ai_challenger(path: str | os.PathLike, images_root) -> pd.DataFrame:
    """AI Challenger caption JSON: a list of `{url, image_id, caption: [5 strings]}`."""
    root = _root(images_root, "ai_challenger")
    path, data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{url, image_id, caption}} objects")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "image_id" not in item or "caption" not in item:
            raise DataError(f"{path}: item {i} needs 'image_id' and 'caption'")
        captions = [item["caption"]] if isinstance(item["caption"], str) else item["caption"]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{path}: item {i} ({item['image_id']}): 'caption' must be a list of strings")
        rows += [(i, str(item["image_id"]), item.get("url", ""), c) for c in captions]
    names = [r[1] for r in rows]
    return _finish(
        {
            "image_path": _join_under(root, names, lambda k: f"{path}: item {rows[k][0]}"),
            "text": [r[3] for r in rows],
            "url": [r[2] for r in rows],
            "filename": names,
            "image_id": names,
        },
        path,
    )


def wukong_filename(url: str) -> str:
    """Stable local file name for a url: 16 hex digits of sha1(url) + the url's image suffix (.jpg default)."""
    # A regex, not urlparse: 10x faster on 100M-row Wukong, and it never raises on a broken url.
    base = URL_PATH.match(url)[1].rpartition("/")[2]
    suffix = "." + base.rpartition(".")[2].lower() if "." in base else ""
    if suffix not in IMAGE_SUFFIXES:
        suffix = DEFAULT_IMAGE_SUFFIX
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:WUKONG_HASH_CHARS] + suffix


def read_wukong(path: str | os.PathLike, images_root) -> pd.DataFrame:
    """Wukong `url,caption` CSV or parquet; images will be stored as images_root/wukong_filename(url)."""
    root = _root(images_root, "wukong")
    df = read_table(path, required=("url", "text"), columns={"caption": "text"})
    urls = [u.strip() for u in string_column(df["url"])]
    if not all(urls):
        raise DataError(f"{path}: row {urls.index('') + 1} has an empty url")
    df["url"] = urls
    df["filename"] = names = [wukong_filename(u) for u in urls]
    df["image_path"] = [os.path.join(root, name) for name in names]
    return _finish(df, path)


# ----------------------------------------------------------------------------- img2dataset


def read_img2dataset(
    folder: str | os.PathLike, extract_dir=None, extract_images: bool = False
) -> pd.DataFrame:
    """Output folder of rom1504/img2dataset, "files" or "webdataset" mode.

    Shards are `00000.parquet` (one row per input url with key, url, caption, status, ...) next to
    a `00000/` folder (`000000001.jpg/.txt/.json`) or a `00000.tar` holding the same members. Only
    rows with status "success" are kept; without the parquet, the samples that exist are used
    (`img2dataset_statistics` counts what was dropped). A webdataset image gets the pseudo path
    `<shard>.tar::<member>` and is read in place later (`nbutils.data.tar_members`); with `extract_images`
    it is extracted to `<extract_dir>/<shard>/` instead (default `<folder>/_extracted`), skipping files
    already there with the right size.
    """
    folder = Path(folder)
    extract_dir = Path(extract_dir) if extract_dir is not None else folder / IMG2DATASET_EXTRACT_DIR
    rows = []
    shards = _img2dataset_shards(folder)
    for shard in shards:
        rows += _img2dataset_shard(folder, shard, extract_dir / shard if extract_images else None)
    if not rows:
        raise DataError(f"{folder}: no successfully downloaded images in {len(shards)} shard(s)")
    return _finish(rows, folder)


def _img2dataset_shards(folder: Path) -> list[str]:
    """The shard ids ("00000", ...) of an img2dataset output folder, from its parquet files, tars and folders."""
    if not folder.is_dir():
        raise DataError(f"{folder}: img2dataset output folder not found")
    shards = sorted(
        {p.name.split(".")[0] for p in folder.iterdir() if p.suffix in (".parquet", ".tar") or p.is_dir()}
    )
    shards = [s for s in shards if s.isdigit()]  # skips _extracted/, _stats files, stray tables
    if not shards:
        raise DataError(f"{folder}: no img2dataset shards (expected 00000.parquet with 00000/ or 00000.tar)")
    return shards


def _img2dataset_shard(folder: Path, shard: str, out_dir: Path | None) -> list[dict]:
    """The rows of one shard; webdataset images are extracted to `out_dir`, or read in place when it is None."""
    parquet, tar_path, sub = folder / f"{shard}.parquet", folder / f"{shard}.tar", folder / shard
    status = _success_rows(parquet) if parquet.exists() else None
    if tar_path.exists() and out_dir is None:
        index = tar_members.member_index(tar_path)
        samples = _group((name, PurePosixPath(name)) for name in index.members)
        where = f"{tar_path}" + (f" ({index.damage}: download the shard again)" if index.damage else "")
        rows = _shard_samples(
            samples,
            status,
            lambda m: tar_members.embedded_bytes(tar_members.member_path(tar_path, str(m))),
            where,
        )
        for row in rows:
            row["image_path"] = tar_members.member_path(tar_path, str(row.pop("source")))
        return rows
    if tar_path.exists():
        try:
            with tarfile.open(tar_path) as tar:
                members = _safe_members(tar, tar_path)
                samples = _group((m.name, m) for m in members)
                rows = _shard_samples(samples, status, lambda m: tar.extractfile(m).read(), tar_path)
                for row in rows:
                    member = row.pop("source")
                    target = out_dir / member.name
                    _extract(tar, member, target)
                    row["image_path"] = os.path.abspath(target)
        except (tarfile.TarError, EOFError) as e:  # not OSError: a full disk is not a damaged tar
            raise DataError(f"{tar_path}: damaged tar ({e})") from None
        return rows
    if sub.is_dir():
        samples = _group((p.name, p) for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        rows = _shard_samples(samples, status, Path.read_bytes, sub)
        for row in rows:
            row["image_path"] = os.path.abspath(row.pop("source"))
        return rows
    raise DataError(
        f"{parquet}: shard {shard} has no images ({shard}.tar or {shard}/ folder); "
        "img2dataset's 'parquet' output format is not supported, use 'files' or 'webdataset'"
    )


def _success_rows(parquet: Path) -> pd.DataFrame:
    df = read_table(parquet, required=("key", "status"))
    df = df[df["status"].astype(str) == IMG2DATASET_SUCCESS]
    return df.assign(key=df["key"].astype(str))


def _safe_members(tar: tarfile.TarFile, tar_path: Path) -> list[tarfile.TarInfo]:
    """Regular-file members, after checking that none would land outside the extraction folder."""
    members = []
    for m in tar.getmembers():
        parts = PurePosixPath(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or "\\" in m.name:
            raise DataError(
                f"{tar_path}: refusing member {m.name!r}: it would be extracted outside the target folder"
            )
        if m.isdir():
            continue
        if not m.isfile():
            raise DataError(f"{tar_path}: refusing member {m.name!r}: not a regular file (link or device)")
        m.name = str(PurePosixPath(*parts))  # "./000000001.jpg" -> "000000001.jpg"
        members.append(m)
    return members


def _group(named: Iterable[tuple[str, object]]) -> dict[str, dict[str, object]]:
    """{key: {".jpg": source, ".txt": source, ...}}; webdataset keys end at the basename's first dot."""
    samples: dict[str, dict[str, object]] = {}
    for name, source in named:
        head, _, base = name.rpartition("/")
        stem, dot, ext = base.partition(".")
        if dot:
            key = f"{head}/{stem}" if head else stem
            samples.setdefault(key, {})["." + ext.lower()] = source
    return samples


def _shard_samples(
    samples: dict, status: pd.DataFrame | None, read: Callable, where: Path | str
) -> list[dict]:
    """One row per successful sample: image source, caption, url, file name and key."""
    if status is None:  # no parquet: every key with an image counts, caption from .txt, url from .json
        order = [(k, None, None) for k in sorted(samples) if _image_ext(samples[k])]
    else:
        captions = status["caption"].tolist() if "caption" in status.columns else [None] * len(status)
        urls = status["url"].tolist() if "url" in status.columns else [None] * len(status)
        order = list(zip(status["key"], captions, urls))
    rows = []
    for key, caption, url in order:
        files = samples.get(key, {})
        ext = _image_ext(files)
        if ext is None:
            raise DataError(f"{where}: sample {key} has status 'success' but no image file")
        if _missing(caption):
            if ".txt" not in files:
                raise DataError(
                    f"{where}: sample {key} has no caption (no parquet 'caption' column and no {key}.txt)"
                )
            caption = _decode(read(files[".txt"]), where, f"{key}.txt")
        if _missing(url) and ".json" in files:
            try:
                url = json.loads(_decode(read(files[".json"]), where, f"{key}.json")).get("url")
            except (json.JSONDecodeError, AttributeError):
                raise DataError(f"{where}: {key}.json is not a JSON object") from None
        name = files[ext].name.rpartition("/")[2]  # the real file name, whatever its case
        rows.append(
            {
                "source": files[ext],
                "text": caption,
                "url": "" if _missing(url) else url,
                "filename": name,
                "image_id": key,
            }
        )
    return rows


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def _image_ext(files: dict) -> str | None:
    return next((ext for ext in IMAGE_SUFFIXES if ext in files), None)


def _decode(data: bytes, where: Path | str, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{where}: {name} is not valid UTF-8 at line {line}") from None


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """Copy one member to `target` through a temporary file, unless it is already there."""
    if target.is_file() and target.stat().st_size == member.size:
        return
    with atomic_path(target) as tmp, tar.extractfile(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)


def img2dataset_statistics(
    folder: str | os.PathLike, top_errors: int = IMG2DATASET_TOP_ERRORS
) -> pd.DataFrame:
    """What img2dataset downloaded and dropped, from its own parquet files: one row per shard, then "all".

    Columns: shard, urls, the count of each status (success, failed_to_download, failed_to_resize, then any other
    status found), and common_errors, the `top_errors` most frequent error messages with their counts
    ("HTTP Error 404: Not Found (12); timed out (3)"). Shards without a parquet are left out.
    """
    folder = Path(folder)
    counts, errors = {}, {}
    for shard in _img2dataset_shards(folder):
        parquet = folder / f"{shard}.parquet"
        if parquet.exists():
            df = read_table(parquet, required=("key", "status"))
            counts[shard] = df["status"].fillna("").astype(str).value_counts()
            messages = df["error_message"] if "error_message" in df.columns else pd.Series(dtype=object)
            lines = messages.dropna().astype(str).map(_error_line)
            errors[shard] = _most_common(lines[lines != ""].value_counts())
    if counts:
        counts["all"] = pd.concat(counts.values()).groupby(level=0).sum()
        errors["all"] = _most_common(pd.concat(errors.values()))
    found = sorted({status for c in counts.values() for status in c.index} - set(IMG2DATASET_STATUSES))
    statuses = [*IMG2DATASET_STATUSES, *found]
    rows = [
        {
            "shard": shard,
            "urls": int(c.sum()),
            **{status: int(c.get(status, 0)) for status in statuses},
            "common_errors": "; ".join(f"{m} ({n})" for m, n in errors[shard].head(top_errors).items()),
        }
        for shard, c in counts.items()
    ]
    return pd.DataFrame(rows, columns=["shard", "urls", *statuses, "common_errors"])


def _most_common(counts: pd.Series) -> pd.Series:
    """Counts by message, summed, most frequent first; ties in alphabetical order, so every run lists the same."""
    return counts.groupby(level=0).sum().sort_values(ascending=False, kind="stable")


def _error_line(message: str) -> str:
    """One line of an error message, at most IMG2DATASET_ERROR_CHARS characters: alike errors count together."""
    line = " ".join(message.split())
    return line if len(line) <= IMG2DATASET_ERROR_CHARS else line[: IMG2DATASET_ERROR_CHARS - 3] + "..."


# ----------------------------------------------------------------------------- Hugging Face datasets


def read_hf_dataset(
    path: str | os.PathLike,
    images_root=None,
    image_column: str = "image",
    caption_column: str = "",
    split: str = "",
    extract_images: bool = False,
) -> pd.DataFrame:
    """A Hugging Face dataset: a save_to_disk folder, a folder of hub parquet shards, or one .arrow / .parquet file.

    `hf_datasets.dataset_files` picks the files of `split` (empty: "train", or the only split). One row per caption:
    a list of captions (strings, or structs with a raw / text / caption field) becomes one row each; an empty
    `caption_column` takes the first of HF_CAPTION_COLUMNS the dataset has. An image embedded in a row gets the
    pseudo path `<file>::<image_column>[<row>]` and is decoded straight from the file later (`hf_datasets`); with
    `extract_images` it is written to `<images_root>/<folder>-<file>/<row>.<ext>` instead (images_root defaults
    to `<dataset folder>/_extracted` there). Rows whose images have identical bytes share the first row's path, so the
    image is cached once, with all its captions. An image given as a path is resolved against images_root, or
    the dataset's folder.
    """
    path = Path(path)
    files = hf_datasets.dataset_files(path, split)
    folder = path if path.is_dir() else path.parent
    root = os.path.abspath(images_root if images_root is not None else folder)
    extract_dir = Path(images_root) if images_root is not None else folder / HF_EXTRACT_DIR
    first_path: dict[bytes, str] = {}  # sha1 of an image's bytes -> the image_path its first row got
    rows: dict[str, list[str]] = {"image_path": [], "text": [], "filename": []}
    for file in files:
        columns = hf_datasets.schema(file).names
        if image_column not in columns:
            raise DataError(
                f"{file}: no image column {image_column!r}; the dataset has columns {columns}: "
                "set image_column to the one holding the images"
            )
        text_column = _hf_caption_column(file, columns, image_column, caption_column)
        for first, batch in hf_datasets.batches(file, [image_column, text_column]):
            images = _hf_images(batch.column(0), file, image_column)
            for offset, ((data, name), cell) in enumerate(zip(images, batch.column(1).to_pylist())):
                row = first + offset
                if data is not None:
                    digest = hashlib.sha1(data).digest()
                    if digest not in first_path:
                        first_path[digest] = (
                            _extract_hf_image(data, file, row, extract_dir)
                            if extract_images
                            else hf_datasets.embedded_path(file, image_column, row)
                        )
                    image_path = first_path[digest]
                elif name:  # a file path (the images were stored as files, not embedded)
                    image_path = os.path.abspath(os.path.join(root, os.path.expanduser(name)))
                else:
                    image_path = ""  # dropped later as "missing image path", counted in dropped.csv
                texts = _hf_captions(cell, file, text_column, row)
                rows["image_path"] += [image_path] * len(texts)
                rows["text"] += texts
                rows["filename"] += [os.path.basename(name or "")] * len(texts)
    return _finish(rows, path)


def _hf_caption_column(file: Path, columns: list[str], image_column: str, caption_column: str) -> str:
    """`caption_column`, checked; when empty, the first of HF_CAPTION_COLUMNS the file has (any case)."""
    if caption_column:
        if caption_column not in columns:
            raise DataError(
                f"{file}: no column {caption_column!r} (caption_column); the dataset has columns {columns}"
            )
        return caption_column
    by_lower = {c.lower(): c for c in columns if c != image_column}
    found = next((by_lower[name] for name in HF_CAPTION_COLUMNS if name in by_lower), None)
    if found is None:
        raise DataError(
            f"{file}: no caption column found (looked for {', '.join(HF_CAPTION_COLUMNS)}); the dataset has "
            f"columns {columns}: set caption_column to the one holding the captions"
        )
    return found


def _hf_images(column, file: Path, name: str) -> list[tuple[bytes | None, str | None]]:
    """(encoded bytes, path) of each image cell: the Image feature's {bytes, path} struct, bytes, or a path."""
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return [(hf_datasets.image_bytes(cell), (cell or {}).get("path")) for cell in column.to_pylist()]
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return [(hf_datasets.image_bytes(cell), None) for cell in column.to_pylist()]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return [(None, cell) for cell in column.to_pylist()]
    raise DataError(
        f"{file}: column {name!r} has type {kind}, which holds no images (expected the Image feature's "
        "{bytes, path} struct, bytes, or file paths): set image_column to the one holding the images"
    )


def _hf_captions(cell, file: Path, column: str, row: int) -> list[str]:
    """The captions of one cell: a string, a list of them, or structs with a raw / text / caption field.
    A row without captions gives one empty caption, so that it is counted in dropped.csv."""
    values = cell if isinstance(cell, list) else [cell]
    texts = []
    for value in values:
        if isinstance(value, dict):
            value = next((value[k] for k in HF_CAPTION_FIELDS if isinstance(value.get(k), str)), None)
            if value is None:
                raise DataError(
                    f"{file}: row {row}: column {column!r} holds structs without a caption field "
                    f"({', '.join(HF_CAPTION_FIELDS)}): set caption_column to a column of captions"
                )
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"{file}: row {row}: column {column!r} holds {type(value).__name__} values, not captions: "
                "set caption_column to a column of strings or lists of strings"
            )
        texts.append(value or "")
    return texts or [""]


def _extract_hf_image(data: bytes, file: Path, row: int, extract_dir: Path) -> str:
    """Write one embedded image to `<extract_dir>/<folder>-<file stem>/<row>.<ext>` unless it is there already."""
    suffix = FORMAT_SUFFIXES.get(image_format(data), DEFAULT_IMAGE_SUFFIX)
    target = extract_dir / f"{file.parent.name}-{file.stem}" / f"{row:08d}{suffix}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return os.path.abspath(target)


# ----------------------------------------------------------------------------- dispatch

IMPORTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "original_csv": read_original_csv,
    "text_image_csv": read_text_image_csv,
    "flickr_tokens": read_flickr_tokens,
    "coco_captions": read_coco_captions,
    "coco_cn": read_coco_cn,
    "ai_challenger": read_ai_challenger,
    "wukong": read_wukong,
    "img2dataset": read_img2dataset,
    "table": read_caption_table,
    "hf_dataset": read_hf_dataset,
}


def import_captions(fmt: str, path: str | os.PathLike, images_root=None, **kwargs) -> pd.DataFrame:
    """Read `path` with the importer named `fmt` (a key of IMPORTERS).

    For "img2dataset", images_root is where webdataset images are extracted with extract_images (extract_dir,
    `read_img2dataset`). "hf_dataset" takes image_column, caption_column, split and extract_images
    (`read_hf_dataset`).
    """
    if fmt not in IMPORTERS:
        raise DataError(f"unknown caption format {fmt!r}; known formats: {', '.join(IMPORTERS)}")
    if fmt == "img2dataset":
        if images_root is not None:
            kwargs.setdefault("extract_dir", images_root)
        return read_img2dataset(path, **kwargs)
    return IMPORTERS[fmt](path, images_root, **kwargs)
