"""Resumable image downloader: a url/caption manifest in, image files plus a per-url status table out.

The original pipeline fetched 1.37M urls with no retries and swallowed every error (~38 img/s).
Here each distinct (url, filename) is fetched once by a pool of threads sharing urllib3's connection
pools, transient failures are retried with backoff (a url waiting for its retry holds no thread),
permanent ones are not, and every failure is recorded with a kind you can count. Nothing is kept
unless it is an image: a declared non-image Content-Type is refused, and where the type is generic
(application/octet-stream) or missing, the body's leading bytes decide.

    manifest = read_manifest("wukong_100k.csv", caption_column="caption")
    result = download_images(manifest, "data/images", DownloadConfig(workers=32))
    result.summary        # rows, images, ok, failed, failed_by_kind, rows_per_second, ...
    result.table          # image_path, text, url, id: captions whose image arrived

Interrupt it at any moment (Ctrl-C, SIGKILL, power loss) and run it again: files are written
under a temporary name and renamed, finished rows are appended to `out_dir/_status.jsonl` as they
complete, and a rerun skips what is already there (checking its sha1) and what already failed
(unless `retry_failed=True`).
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import heapq
import io
import json
import os
import random
import re
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from urllib.parse import urljoin, urlsplit

import pandas as pd
import urllib3

from .. import files
from ..config import StageConfig, param
from ..errors import DataError, check_columns, check_int, short_error
from ..files import atomic_path, write_table
from ..progress import tqdm
from ..reporting.tables import (
    breakdown,
    count,
    counts_table,
    duration,
    facts_table,
    number,
    share,
    size_in_bytes,
)
from . import importers
from .images import SIGNATURE_BYTES, image_format, to_rgb
from .importers import read_table, string_column, wukong_filename

# -----------------------------------------------------------------------------
# config
STATUS_LOG = "_status.jsonl"  # one JSON row per finished download, appended as they finish
STATUS_FILE = "status.parquet"  # the full status table, written at the end of each run
STATUS_COLUMNS = [
    "id",
    "url",
    "path",
    "status",
    "error_kind",
    "http_status",
    "bytes",
    "sha1",
    "elapsed",
    "attempts",
    "error",
]
ERROR_KINDS = (
    "http_404",
    "http_403",
    "http_4xx",
    "http_5xx",
    "http_429",
    "timeout",
    "connection",
    "truncated",
    "too_many_redirects",
    "too_large",
    "bad_content_type",
    "not_an_image",
    "unsupported_url",
    "unsafe_filename",
    "resize_failed",
)
PLAN_KINDS = ("unsafe_filename", "unsupported_url")  # decided from the manifest alone, never fetched
URL_SCHEMES = ("http", "https")
# Content-Types that say nothing about the body (S3 buckets and many CDNs serve images so): with one of
# these, or none, the magic bytes decide. A declared non-image type (text/html, text/plain) is refused.
GENERIC_CONTENT_TYPES = ("", "application/octet-stream", "binary/octet-stream")
# Leading bytes of the formats kept; an HTML error page never starts with any of them.
DRAIN_ERROR_BODY = 64_000  # read small error pages so the connection goes back to the pool
NAME_ERRNOS = {
    errno.EEXIST,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EINVAL,
}  # the name's fault
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class DownloadConfig(StageConfig):
    """processdata_01's parameters: what to download and how. Defaults suit a public crawl."""

    stage = "processdata_01"
    source: str = param(
        "demo",
        '"demo" (the generated set, served by a faulty local server; "demo?key=value&..." sets its '
        "language, n_images, image_size, data_dir) or a manifest path",
    )
    input_format: str = param(
        "table",
        '"table" (columns named below), or an importer with urls: original_csv, ai_challenger, wukong',
    )
    url_column: str = param("url", 'manifest columns for "table" (CSV / TSV / JSONL / parquet)')
    caption_column: str = param("text", "the caption column")
    filename_column: str = param("filename", "empty: name files by the sha1 of their url")
    id_column: str = param("", "empty: the row number")
    images_dir: str = param("", "where images are stored; empty: <output_dir>/images")
    workers: int = param(16, "concurrent downloads (threads: the work is waiting on the network)")
    connect_timeout: float = param(5.0, "seconds to open a connection")
    read_timeout: float = param(20.0, "seconds without data before a request counts as timed out")
    retries: int = param(3, "extra attempts after timeouts, connection errors, truncation, 429 and 5xx")
    backoff: float = param(0.5, "seconds before the first retry, doubled each retry (with jitter)")
    max_redirects: int = param(5, "more redirects than this fail the url")
    max_bytes: int = param(20_000_000, "larger bodies are refused, and stop being read at this size")
    user_agent: str = param(
        "nbutils-downloader/0.1 (image-text research; +https://github.com/)",
        "User-Agent header of every request",
    )
    resize_shorter_side: int = param(
        0, "shrink on download so the shorter side is at most this (0 keeps the bytes)"
    )
    retry_failed: bool = param(False, "on a rerun, retry rows that failed before")
    verify_existing: bool = param(True, "on a rerun, sha1-check the files a previous run kept")
    jpeg_quality: int = param(90, "JPEG quality of images resized on download")
    content_types: str = param(
        "image/",
        "comma-separated Content-Type prefixes accepted (generic or missing types: the bytes decide)",
    )
    backoff_cap: float = param(30.0, "longest backoff wait, seconds")
    max_retry_after: float = param(60.0, "longest wait a server's Retry-After can impose, seconds")
    total_timeout: float = param(
        120.0, "seconds for one attempt's whole body: a host trickling bytes fails too"
    )
    chunk_size: int = param(65536, "bytes read at a time")

    @property
    def images_path(self) -> Path:
        """Where the images go: `images_dir`, or `<output_dir>/images`."""
        return Path(self.images_dir) if self.images_dir else Path(self.output_dir) / "images"


@dataclass
class DownloadResult:
    status: pd.DataFrame  # one row per distinct download (STATUS_COLUMNS)
    summary: dict
    table: pd.DataFrame  # image_path, text, url, id: caption rows whose image is ok


class UnsafeFilenameError(DataError):
    """A manifest file name that would write outside the output folder (or is otherwise unusable)."""


# -----------------------------------------------------------------------------
# manifest


def read_manifest(
    path,
    url_column: str = "url",
    caption_column: str = "text",
    filename_column: str = "",
    id_column: str = "",
) -> pd.DataFrame:
    """Read a url/caption table (CSV, TSV, JSONL, parquet) into columns id, url, filename, text.

    One row per caption; several rows may share a url. Without `filename_column` the file name is
    `wukong_filename(url)` (sha1 of the url); without `id_column` the id is the 0-based row number.
    File names are checked later, per row (an unsafe name fails its row, not the whole manifest).
    """
    df = read_table(path)
    for name, column in (
        ("url_column", url_column),
        ("caption_column", caption_column),
        ("filename_column", filename_column),
        ("id_column", id_column),
    ):
        if column and column not in df.columns:
            raise DataError(
                f"{path}: no column {column!r} ({name}={column!r}); the file has columns {list(df.columns)}"
            )
    urls = [u.strip() for u in string_column(df[url_column])]
    return pd.DataFrame(
        {
            "id": string_column(df[id_column]) if id_column else [str(i) for i in range(len(df))],
            "url": urls,
            "filename": string_column(df[filename_column])
            if filename_column
            else [wukong_filename(u) for u in urls],
            "text": [t.strip() for t in string_column(df[caption_column])],
        }
    )


def load_manifest(config: DownloadConfig, path) -> pd.DataFrame:
    """The manifest at `path`, read as `config` says: the named columns ("table") or a published layout."""
    if config.input_format == "table":
        return read_manifest(
            path,
            url_column=config.url_column,
            caption_column=config.caption_column,
            filename_column=config.filename_column,
            id_column=config.id_column,
        )
    return importers.import_captions(config.input_format, path, images_root=str(config.images_path))


def _check_manifest(manifest) -> pd.DataFrame:
    """Accept read_manifest's output, a path, or any DataFrame with url and text columns."""
    if isinstance(manifest, (str, os.PathLike)):
        return read_manifest(manifest)
    hint = " (read files with read_manifest(path, url_column=..., caption_column=...))"
    check_columns(manifest, ("url", "text"), "manifest", hint)
    if len(manifest) == 0:
        raise DataError("manifest: no rows")
    urls = [u.strip() for u in string_column(manifest["url"])]
    return pd.DataFrame(
        {
            "id": string_column(manifest["id"])
            if "id" in manifest.columns
            else [str(i) for i in range(len(manifest))],
            "url": urls,
            "filename": (
                string_column(manifest["filename"])
                if "filename" in manifest.columns
                else [wukong_filename(u) for u in urls]
            ),
            "text": string_column(manifest["text"]),
        }
    )


def safe_relative_path(filename) -> str:
    """`filename` as a clean relative POSIX path inside the output folder, or UnsafeFilenameError.

    Refused: empty names, absolute paths, drive letters, backslashes, NUL and control characters,
    `..` components, hidden components (a leading dot: those names are kept for temporaries) and
    components longer than a file system allows. `./a//b.jpg` becomes `a/b.jpg`.
    """
    name = "" if filename is None else str(filename)
    problem = None
    if not name.strip():
        problem = "is empty"
    elif "\x00" in name or any(ord(c) < 32 for c in name):
        problem = "contains a NUL or control character"
    elif "\\" in name:
        problem = "contains a backslash (a Windows path separator)"
    elif WINDOWS_DRIVE.match(name):
        problem = "starts with a drive letter"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif name.endswith("/"):
        problem = "names a folder, not a file"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if problem is None:
        if ".." in parts:
            problem = "contains a '..' component"
        elif not parts:
            problem = "is empty"
        elif any(p.startswith(".") for p in parts):
            problem = "has a hidden component (leading '.'), reserved for temporary files"
        elif any(len(p.encode("utf-8")) > 255 for p in parts):
            problem = "has a component longer than 255 bytes"
    if problem:
        raise UnsafeFilenameError(f"file name {name!r} {problem}")
    return "/".join(parts)


def _url_problem(url: str) -> str | None:
    if not url:
        return "empty url"
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        return f"malformed url ({e})"
    if parts.scheme.lower() not in URL_SCHEMES:
        return f"scheme {parts.scheme + ':' if parts.scheme else '(none)'} is not http(s)"
    if not host:
        return "url has no host"
    return None


@dataclass
class _Item:
    """One distinct download: the first caption row's id, the url and where it goes."""

    id: str
    url: str
    path: str  # relative to out_dir (the raw name when unsafe)
    kind: str = ""  # set when the manifest alone decides the row fails
    message: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.url, self.path


def _plan(manifest: pd.DataFrame, reserved: set[str]) -> tuple[list[_Item], list[int]]:
    """Distinct downloads, and for each manifest row the index of its download."""
    items: list[_Item] = []
    index: dict[tuple[str, str], int] = {}
    owner: dict[str, str] = {}  # relative path -> the url that writes it
    row_item = []
    for row_id, url, name in zip(manifest["id"], manifest["url"], manifest["filename"]):
        try:
            path, kind, message = safe_relative_path(name), "", ""
        except UnsafeFilenameError as e:
            path, kind, message = name, "unsafe_filename", str(e)
        j = index.get((url, path))
        if j is None:
            j = index[(url, path)] = len(items)
            if not kind and path in reserved:
                kind, message = (
                    "unsafe_filename",
                    f"file name {path!r} is reserved for the downloader's status files",
                )
            elif not kind and path in owner:  # same name, another url: one would overwrite the other
                kind, message = "unsafe_filename", f"file name {path!r} is already used by {owner[path]}"
            elif not kind:
                owner[path] = url
                problem = _url_problem(url)
                if problem:
                    kind, message = "unsupported_url", problem
            items.append(_Item(row_id, url, path, kind, message))
        row_item.append(j)
    # "a" as a file and "a/b.jpg" as a file cannot both exist.
    folders = {p.rsplit("/", k)[0] for p in owner for k in range(1, p.count("/") + 1)}
    for item in items:
        if not item.kind and item.path in folders:
            item.kind, item.message = (
                "unsafe_filename",
                f"file name {item.path!r} is also a folder of other files",
            )
    return items, row_item


# -----------------------------------------------------------------------------
# fetching one url


class _Failure(Exception):
    def __init__(
        self,
        kind: str,
        message: str,
        http_status: int = 0,
        nbytes: int = 0,
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.kind, self.message, self.http_status, self.nbytes = kind, message, http_status, nbytes
        self.retryable, self.retry_after = retryable, retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


def retry_delay(config: DownloadConfig, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
    # Jitter keeps threads that failed together on one host from retrying in lock-step.
    delay = min(config.backoff_cap, config.backoff * 2**attempt) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.max_retry_after))
    return delay


def _accepts_content_type(content_type: str, config: DownloadConfig) -> bool:
    """Whether a body served as `content_type` may be an image: an accepted prefix, or a generic type."""
    declared = content_type.strip().lower()
    if declared.split(";", 1)[0].strip() in GENERIC_CONTENT_TYPES:
        return True  # the magic bytes of the body decide (not_an_image)
    return declared.startswith(tuple(t.strip().lower() for t in config.content_types.split(",") if t.strip()))


def _http_failure(response: urllib3.BaseHTTPResponse) -> _Failure:
    code = response.status
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if code == 404:
        return _Failure("http_404", "HTTP 404 Not Found", code)
    if code == 403:
        return _Failure("http_403", "HTTP 403 Forbidden", code)
    if code == 429:
        return _Failure(
            "http_429", "HTTP 429 Too Many Requests", code, retryable=True, retry_after=retry_after
        )
    if 500 <= code < 600:
        return _Failure(
            "http_5xx", f"HTTP {code} {response.reason}", code, retryable=True, retry_after=retry_after
        )
    # Other 4xx, and the odd 1xx/2xx/3xx that is not a plain 200: a final answer that is not the image.
    return _Failure("http_4xx", f"HTTP {code} {response.reason}", code)


def _drain(response: urllib3.BaseHTTPResponse) -> bool:
    """Read a small unwanted body (an error page, a redirect) so its connection can be reused."""
    length = response.headers.get("Content-Length", "")
    if not (length.isdigit() and int(length) <= DRAIN_ERROR_BODY):
        return False
    with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
        response.read(decode_content=False)
        return True
    return False


class _Http:
    """The HTTP client every worker thread shares: urllib3 connection pools, one per host.

    urllib3 directly, not requests: requests merges settings, hooks and cookies on every call, ~40 %
    of the CPU a download costs. What requests would take from the environment is read here once:
    proxies (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY), the CA bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
    else certifi's) and, where a .netrc exists, its logins.
    """

    def __init__(self, config: DownloadConfig):
        self.config = config
        self.headers = {
            "User-Agent": config.user_agent,
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "Connection": "keep-alive",
        }
        self.timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or _certifi()
        tls = {"ca_cert_dir" if ca_bundle and os.path.isdir(ca_bundle) else "ca_certs": ca_bundle}
        # Every thread may hold a connection to the same host; more hosts than pools evict the oldest.
        pools = {"num_pools": max(64, 4 * config.workers), "maxsize": config.workers, "block": False}
        self.direct = urllib3.PoolManager(**pools, **tls)
        self.proxies = {
            scheme: urllib3.ProxyManager(proxy, **pools, **tls)
            for scheme, proxy in urllib.request.getproxies().items()
            if scheme in (*URL_SCHEMES, "all") and proxy
        }
        self.netrc = _has_netrc()

    def manager(self, url: str) -> urllib3.PoolManager:
        """The pools that reach `url`: through the environment's proxy for its scheme, or direct."""
        if self.proxies:
            proxy = self.proxies.get(url.partition(":")[0].lower()) or self.proxies.get("all")
            if proxy is not None and not urllib.request.proxy_bypass(urlsplit(url).hostname or ""):
                return proxy
        return self.direct

    def headers_for(self, url: str) -> dict:
        if not self.netrc:
            return self.headers
        from requests.utils import get_netrc_auth  # the same lookup requests does, for the same logins

        login = get_netrc_auth(url)
        if not login:
            return self.headers
        return {**self.headers, **urllib3.make_headers(basic_auth=":".join(login))}

    def close(self) -> None:
        for manager in (self.direct, *self.proxies.values()):
            manager.clear()

    def get(self, url: str, stop: threading.Event | None = None) -> tuple[bytes, int]:
        """GET `url` once, following redirects: (body, status) for an image, else raise _Failure."""
        config = self.config
        for redirects in range(config.max_redirects + 1):
            response = self._open(url)
            try:
                location = response.get_redirect_location()
                if not location:
                    return self._read_image(response, stop)
                if not _drain(response):
                    response.close()
                if redirects == config.max_redirects:
                    raise _Failure("too_many_redirects", f"more than {config.max_redirects} redirects")
                url = urljoin(url, location)
                problem = _url_problem(url)
                if problem:  # e.g. a redirect to ftp:// or file://
                    raise _Failure("unsupported_url", f"redirect to {url!r}: {problem}")
            finally:
                response.release_conn()
        raise AssertionError("unreachable")  # the loop returns or raises

    def _open(self, url: str) -> urllib3.BaseHTTPResponse:
        """Send the request and read the status line and headers; errors as _Failure."""
        try:
            return self.manager(url).request(
                "GET",
                url,
                headers=self.headers_for(url),
                redirect=False,  # followed in `get`, which counts them
                retries=False,  # retried by `_Downloader.attempt` and `_Tasks`, after a backoff
                timeout=self.timeout,
                preload_content=False,
            )
        # First: refused and unresolvable hosts are ConnectTimeoutErrors too, for urllib3.
        except urllib3.exceptions.NewConnectionError as e:
            raise _Failure("connection", short_error(e), retryable=True) from None
        except (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError) as e:
            raise _Failure("timeout", short_error(e), retryable=True) from None
        except urllib3.exceptions.SSLError as e:  # a bad certificate stays bad
            raise _Failure("connection", short_error(e)) from None
        except (urllib3.exceptions.LocationValueError, ValueError, UnicodeError) as e:
            raise _Failure("unsupported_url", f"malformed url ({short_error(e)})") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:  # reset, dropped, proxy errors
            raise _Failure("connection", short_error(e), retryable=True) from None

    def _read_image(self, response: urllib3.BaseHTTPResponse, stop: threading.Event | None):
        """The body of a final answer if it is an image no larger than max_bytes, else raise _Failure."""
        config, code = self.config, response.status
        if code != 200:
            failure = _http_failure(response)
            if not _drain(response):
                response.close()
            raise failure
        complete = False
        try:
            content_type = response.headers.get("Content-Type", "")
            if not _accepts_content_type(content_type, config):
                raise _Failure("bad_content_type", f"Content-Type {content_type!r} is not an image", code)
            length = response.headers.get("Content-Length", "").strip()
            if length.isdigit() and int(length) > config.max_bytes:
                raise _Failure("too_large", f"Content-Length {length} > max_bytes {config.max_bytes}", code)
            body = self._read_body(response, stop)
            complete = True
            if len(body) < SIGNATURE_BYTES and not image_format(bytes(body)):
                raise _Failure(
                    "not_an_image", f"body is {len(body)} bytes: {bytes(body[:16])!r}", code, len(body)
                )
            # urllib3 enforces Content-Length itself; this catches a short body if it ever does not.
            if length.isdigit() and "Content-Encoding" not in response.headers and len(body) < int(length):
                raise _Failure(
                    "truncated", f"got {len(body)} of {length} bytes", code, len(body), retryable=True
                )
            return bytes(body), code
        finally:
            if not complete:  # the rest of the body is not worth reading: drop the connection
                response.close()

    def _read_body(self, response: urllib3.BaseHTTPResponse, stop: threading.Event | None) -> bytearray:
        config, code = self.config, response.status
        body, checked = bytearray(), False
        deadline = time.monotonic() + config.total_timeout
        try:
            # read1: it returns as soon as some bytes arrive, so the deadline below is checked even
            # while a host trickles its body byte by byte.
            while chunk := response.read1(config.chunk_size, decode_content=True):
                body += chunk
                if len(body) > config.max_bytes:  # no or false Content-Length, or a decompression bomb
                    raise _Failure("too_large", f"body passed max_bytes {config.max_bytes}", code, len(body))
                if not checked and len(body) >= SIGNATURE_BYTES:
                    checked = True
                    if not image_format(bytes(body[:SIGNATURE_BYTES])):
                        raise _Failure(
                            "not_an_image", f"body starts with {bytes(body[:16])!r}", code, len(body)
                        )
                if stop is not None and stop.is_set():  # Ctrl-C: do not make the user wait for a big body
                    raise _Failure("connection", "interrupted", code, len(body))
                if time.monotonic() > deadline:
                    raise _Failure(
                        "timeout",
                        f"body not complete after {config.total_timeout} s",
                        code,
                        len(body),
                        retryable=True,
                    )
        except urllib3.exceptions.ReadTimeoutError as e:
            raise _Failure("timeout", short_error(e), code, len(body), retryable=True) from None
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError) as e:  # cut short, bad gzip
            raise _Failure("truncated", short_error(e), code, len(body), retryable=True) from None
        except urllib3.exceptions.SSLError as e:
            raise _Failure("connection", short_error(e), code, len(body)) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise _Failure("connection", short_error(e), code, len(body), retryable=True) from None
        return body


def _certifi() -> str | None:
    """certifi's CA bundle, the one requests would use; None: the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _has_netrc() -> bool:
    if os.environ.get("NETRC"):
        return True
    return any(os.path.exists(os.path.expanduser(f"~/{name}")) for name in (".netrc", "_netrc"))


def shrink_image(data: bytes, shorter_side: int, quality: int = 90) -> bytes:
    """Re-encode as JPEG with the shorter side `shorter_side` (EXIF rotation applied first).

    Images whose shorter side is already at most `shorter_side` are returned unchanged.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        w, h = image.size
        if min(w, h) <= shorter_side:
            return data
        scale = shorter_side / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image.draft("RGB", size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that still covers `size`
        image.load()
        rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation swaps width and height
        rgb = to_rgb(image)
    out = io.BytesIO()
    rgb.resize(size[::-1] if rotated else size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=quality)
    return out.getvalue()


# -----------------------------------------------------------------------------
# the pool


@dataclass
class _Task:
    """One download under way: its index in the plan, a previous run's ok row, its attempts so far."""

    j: int
    item: _Item
    previous: dict | None
    attempts: int = 0
    started: float = 0.0  # time.monotonic() of the first attempt
    due: float = 0.0  # when the next attempt may start


class _Tasks:
    """The tasks in manifest order, plus the failed ones waiting out their backoff; shared by the threads.

    A retry waits here, not in a sleeping thread: while one url backs off, its thread downloads others.
    """

    def __init__(self, fresh, stop: threading.Event):
        self.fresh = fresh  # an iterator of _Task
        self.backing_off: list[tuple[float, int, _Task]] = []  # a heap: (due, tie-breaker, task)
        self.busy = 0  # tasks taken and not yet done
        self.stop = stop
        self.changed = threading.Condition()

    def take(self) -> _Task | None:
        """The next task to attempt: a retry that is due, else a fresh one. None: nothing is left (or stop)."""
        with self.changed:
            while not self.stop.is_set():
                now = time.monotonic()
                if self.backing_off and self.backing_off[0][0] <= now:
                    task = heapq.heappop(self.backing_off)[2]
                else:
                    task = next(self.fresh, None)
                if task is not None:
                    self.busy += 1
                    return task
                if not self.backing_off and not self.busy:
                    return None
                # Only retries are left: wait for the first to be due, or for another thread's news.
                self.changed.wait(self.backing_off[0][0] - now if self.backing_off else None)
            return None

    def done(self, task: _Task, retry: bool) -> None:
        with self.changed:
            self.busy -= 1
            if retry:
                heapq.heappush(self.backing_off, (task.due, task.j, task))
            self.changed.notify_all()

    def wake(self) -> None:
        """Let threads waiting in `take` see the stop flag."""
        with self.changed:
            self.changed.notify_all()


class _Downloader:
    """What every worker thread shares: the config, the output folder, the HTTP client and a stop flag."""

    def __init__(self, config: DownloadConfig, out_dir: Path):
        self.config = config
        self.out_dir = out_dir
        self.out_real = os.path.realpath(out_dir)
        self.stop = threading.Event()
        self.http = _Http(config)

    def close(self) -> None:
        self.http.close()

    def work(self, task: _Task) -> tuple[dict, bool] | None:
        """(status row, skipped): keep a previous ok row whose file is intact, else try to download.

        None: the attempt failed and is to be retried once `task.due` has passed.
        """
        if not task.attempts and task.previous is not None and self._intact(task.item, task.previous):
            return task.previous, True
        row = self.attempt(task)
        return None if row is None else (row, False)

    def _intact(self, item: _Item, previous: dict) -> bool:
        target = self.out_dir / item.path
        try:
            if not target.is_file() or target.stat().st_size != previous.get("bytes"):
                return False
            return not self.config.verify_existing or _sha1_file(target) == previous.get("sha1")
        except OSError:
            return False

    def attempt(self, task: _Task) -> dict | None:
        """One try at the task's url: its status row, or None with `task.due` set for a retry."""
        config, item = self.config, task.item
        if not task.attempts:
            task.started = time.monotonic()

        def row(status="ok", kind="", message="", http_status=200, nbytes=0, sha1=""):
            elapsed = time.monotonic() - task.started  # backoff waits included
            return _row(item, status, kind, http_status, nbytes, sha1, elapsed, task.attempts, message)

        task.attempts += 1
        try:
            data, http_status = self.http.get(item.url, self.stop)
        except _Failure as f:
            if not f.retryable or task.attempts > config.retries or self.stop.is_set():
                return row("error", f.kind, f.message, f.http_status, f.nbytes)
            task.due = time.monotonic() + retry_delay(config, task.attempts - 1, f.retry_after)
            return None
        if config.resize_shorter_side:
            try:
                data = shrink_image(data, config.resize_shorter_side, config.jpeg_quality)
            except Exception as e:  # noqa: BLE001 (Pillow raises many types for a bad file)
                return row("error", "resize_failed", short_error(e), http_status, len(data))
        target = self.out_dir / item.path
        nested = "/" in item.path  # a plain name's folder is out_dir itself: nothing to create or resolve
        problem = self._escapes(target, nested)
        if problem:
            return row("error", "unsafe_filename", problem, http_status, len(data))
        try:
            if nested:
                target.parent.mkdir(parents=True, exist_ok=True)
                problem = self._escapes(target, nested)  # a link swapped in during the download
            if not problem:
                _write_file(target, data)
        except OSError as e:
            if e.errno not in NAME_ERRNOS:  # a full disk or a read-only folder stops the whole run
                raise
            problem = f"cannot write {item.path!r}: {e.strerror}"  # e.g. a file where a folder should be
        if problem:
            return row("error", "unsafe_filename", problem, http_status, len(data))
        return row(http_status=http_status, nbytes=len(data), sha1=hashlib.sha1(data).hexdigest())

    def _escapes(self, target: Path, nested: bool = True) -> str:
        """Why writing `target` would be wrong (a link leading out of out_dir, a folder), or ""."""
        parent = os.path.realpath(target.parent) if nested else self.out_real  # follows every link on the way
        if parent != self.out_real and not parent.startswith(self.out_real + os.sep):
            return f"{target.relative_to(self.out_dir)} resolves to {parent}, outside the output folder"
        if target.is_dir() and not target.is_symlink():
            return f"{target.relative_to(self.out_dir)} is an existing folder"
        return ""


def _write_file(target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically: a temporary in the same folder, then a rename.

    `files.write_bytes` without its checks, which `_Downloader.download` makes itself. The temporary is
    named as `files.atomic_path` names its own, so `files.sweep_stale_temporaries` removes what a killed
    run leaves; the thread id keeps the names of concurrent writers apart.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_native_id()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _row(
    item: _Item,
    status: str,
    kind: str,
    http_status: int,
    nbytes: int,
    sha1: str,
    elapsed: float,
    attempts: int,
    error: str,
) -> dict:
    return {
        "id": item.id,
        "url": item.url,
        "path": item.path,
        "status": status,
        "error_kind": kind,
        "http_status": int(http_status),
        "bytes": int(nbytes),
        "sha1": sha1,
        "elapsed": round(elapsed, 4),
        "attempts": attempts,
        "error": error,
    }


def _sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -----------------------------------------------------------------------------
# the status log


def _read_log(path: Path) -> dict[tuple[str, str], dict]:
    """Latest row per (url, path) from the status log; a torn last line (killed mid-write) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:  # appending after a torn line would glue two rows together
            f.truncate(end)
    rows = {}
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
            rows[(row["url"], row["path"])] = row
        except (ValueError, KeyError, TypeError):
            continue  # only a damaged line is lost; its url is simply downloaded again
    return rows


def _write_log(path: Path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    """Refuse to run while another download writes into the same folder (the lock dies with its process)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here, so one run per folder is up to the user
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"{out_dir}: another download is writing into this folder; wait for it to finish"
            ) from None
        except OSError:  # a file system without locks (some NFS mounts): carry on unguarded
            pass
        yield
    finally:
        os.close(fd)


# -----------------------------------------------------------------------------
# the whole job


def _check_config(config: DownloadConfig) -> None:
    for name, minimum in (
        ("workers", 1),
        ("retries", 0),
        ("max_redirects", 0),
        ("max_bytes", 1),
        ("resize_shorter_side", 0),
        ("chunk_size", 1),
    ):
        check_int(f"DownloadConfig.{name}", getattr(config, name), minimum)
    for name in ("connect_timeout", "read_timeout", "total_timeout"):
        if not getattr(config, name) > 0:
            raise ValueError(f"DownloadConfig.{name} must be > 0 seconds; got {getattr(config, name)!r}")
    for name in ("backoff", "backoff_cap", "max_retry_after"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"DownloadConfig.{name} must be >= 0 seconds; got {getattr(config, name)!r}")
    if not 1 <= config.jpeg_quality <= 95:
        raise ValueError(f"DownloadConfig.jpeg_quality must be in 1..95; got {config.jpeg_quality!r}")
    if not any(t.strip() for t in config.content_types.split(",")):
        raise ValueError(
            "DownloadConfig.content_types must name at least one Content-Type prefix, e.g. 'image/'"
        )


def download_images(
    manifest, out_dir, config: DownloadConfig | None = None, status_path=None, progress: bool = True
) -> DownloadResult:
    """Download every distinct (url, filename) of `manifest` into `out_dir`; resumable.

    `manifest` comes from `read_manifest` (or is a path to read with its defaults). Returns the
    status table (also written to `status_path`, default `out_dir/status.parquet`), a summary and
    the caption rows whose image is ok, with absolute `image_path`s.
    """
    config = config or DownloadConfig()
    _check_config(config)
    started = time.monotonic()
    manifest = _check_manifest(manifest)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    status_path = Path(status_path).absolute() if status_path else out_dir / STATUS_FILE
    log_path = out_dir / STATUS_LOG
    reserved = {STATUS_LOG}
    if status_path.is_relative_to(out_dir):  # no image may be written over the status table
        reserved.add(status_path.relative_to(out_dir).as_posix())
    with _exclusive(out_dir):
        files.sweep_stale_temporaries(out_dir)
        items, row_item = _plan(manifest, reserved)
        previous = _read_log(log_path)
        rows: list[dict | None] = [None] * len(items)
        tasks, done_now = [], []  # (index, previous ok row or None); rows decided here
        for j, item in enumerate(items):
            old = previous.get(item.key)
            if item.kind:
                rows[j] = _row(item, "error", item.kind, 0, 0, "", 0.0, 0, item.message)
                done_now.append(j)
            elif old and old.get("status") == "ok":
                tasks.append((j, old))
            elif (
                old
                and old.get("status") == "error"
                and old.get("error_kind") not in PLAN_KINDS
                and not config.retry_failed
            ):
                rows[j] = {**old, "id": item.id}
            else:
                tasks.append((j, None))
        skipped = sum(r is not None for r in rows) - len(done_now)
        bar = tqdm(
            total=len(items),
            initial=len(done_now) + skipped,
            desc="download",
            unit="img",
            disable=not progress,
            smoothing=0.05,
        )
        downloader = _Downloader(config, out_dir)
        counts = Counter(r["status"] for r in rows if r is not None)
        try:
            with (
                open(log_path, "a", encoding="utf-8") as log,
                contextlib.closing(_run(downloader, items, tasks, config.workers)) as results,
            ):
                for j in done_now:
                    log.write(json.dumps(rows[j], ensure_ascii=False) + "\n")
                log.flush()
                # One write per batch of rows that finished meanwhile, as soon as they are taken:
                # a kill loses only rows not yet taken, and a rerun fetches those again.
                for batch in results:
                    lines = []
                    for j, row, was_skipped in batch:
                        rows[j] = row = {**row, "id": items[j].id} if was_skipped else row
                        counts[row["status"]] += 1
                        if was_skipped:
                            skipped += 1
                        else:
                            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                    log.write("".join(lines))
                    log.flush()
                    bar.update(len(batch))
                    finished = counts["ok"] + counts["error"]
                    bar.set_postfix_str(
                        f"ok {100 * counts['ok'] / finished:.1f}%, failed {counts['error']}", refresh=False
                    )
        finally:
            bar.close()
            downloader.close()
        status = pd.DataFrame(rows, columns=STATUS_COLUMNS)
        status = status.astype(
            {"http_status": "int64", "bytes": "int64", "attempts": "int64", "elapsed": "float64"}
        )
        # One line per key, this run's rows last: the log stays as long as the manifest, not the number of reruns.
        current = {item.key for item in items}
        _write_log(log_path, [r for k, r in previous.items() if k not in current] + status.to_dict("records"))
        write_table(status, status_path)

    seconds = time.monotonic() - started
    ok = status["status"].eq("ok").to_numpy()
    keep = ok[row_item]
    table = pd.DataFrame(
        {
            "image_path": [os.path.join(out_dir, p) for p in status["path"].to_numpy()[row_item][keep]],
            "text": manifest["text"].to_numpy()[keep],
            "url": manifest["url"].to_numpy()[keep],
            "id": manifest["id"].to_numpy()[keep],
        }
    )
    failed = status.loc[~ok, "error_kind"].value_counts()
    summary = {
        "rows": len(manifest),
        "images": len(items),
        "ok": int(ok.sum()),
        "failed": int((~ok).sum()),
        "failed_by_kind": {str(k): int(v) for k, v in failed.items()},
        "rows_per_second": round((len(items) - skipped) / seconds, 2) if seconds > 0 else 0.0,
        "skipped": skipped,
        "bytes": int(status.loc[ok, "bytes"].sum()),
        "seconds": round(seconds, 3),
        "status_path": str(status_path),
    }
    summary = {"headline": headline(summary), **summary}
    return DownloadResult(status=status, summary=summary, table=table)


# What the failure kinds are called in sentences (the tables keep the kinds, as in status.parquet).
KIND_LABELS = {
    "http_404": "not found",
    "http_403": "forbidden",
    "http_4xx": "other client error",
    "http_5xx": "server error",
    "http_429": "rate limited",
}


def kind_label(kind: str) -> str:
    """A failure kind in words: "http_404" -> "not found", "bad_content_type" -> "bad content type"."""
    return KIND_LABELS.get(kind, kind.replace("_", " "))


def headline(summary: dict) -> str:
    """One sentence of what the download did, from its summary:
    "2,810 of 3,000 images downloaded; 190 failed (not found 81, bad content type 51, too large 18, others 40)."
    """
    images, ok, failed = summary["images"], summary["ok"], summary["failed"]
    text = (
        f"All {count(images)} images downloaded"
        if not failed
        else f"{count(ok)} of {count(images)} images downloaded"
    )
    if failed:
        kinds = breakdown(summary.get("failed_by_kind") or {}, limit=3, label=kind_label)
        text += f"; {count(failed)} failed" + (f" ({kinds})" if kinds else "")
    if summary.get("skipped"):
        text += f"; {count(summary['skipped'])} settled by an earlier run"
    return text + "."


def summary_table(summary: dict):
    """The download's numbers as a small two-column table (for the notebook; the kinds go in `failures_table`)."""
    return facts_table(
        {
            "caption rows in the manifest": count(summary["rows"]),
            "distinct images": count(summary["images"]),
            "downloaded": f"{count(summary['ok'])} ({share(summary['ok'], summary['images'])})",
            "failed": f"{count(summary['failed'])} ({share(summary['failed'], summary['images'])})",
            "settled by an earlier run": count(summary.get("skipped", 0)),
            "bytes kept": size_in_bytes(summary.get("bytes")),
            "time": duration(summary.get("seconds")),
            "urls per second": number(summary.get("rows_per_second")),
        }
    )


def failures_table(summary: dict):
    """Failed urls by kind: kind, urls, share of all distinct images."""
    return counts_table(summary.get("failed_by_kind") or {}, "kind", "urls", total=summary["images"])


def _run(downloader: _Downloader, items: list[_Item], tasks: list, workers: int):
    """Yield lists of (index, row, skipped): the downloads finished since the last list.

    `workers` threads take the tasks (`_Tasks`) and put what they finish on one queue: no future per
    task, nothing to re-scan per result, and rows that finish together are handled together.
    """
    queue = _Tasks((_Task(j, items[j], old) for j, old in tasks), downloader.stop)
    results: SimpleQueue = SimpleQueue()

    def worker():
        try:
            while (task := queue.take()) is not None:
                result = downloader.work(task)
                queue.done(task, retry=result is None)
                if result is not None:
                    results.put((task.j, *result))
        except BaseException as e:  # noqa: BLE001 (a full disk, a bug: the main thread raises it)
            results.put(e)
        finally:
            results.put(None)  # this thread is done

    threads = [
        threading.Thread(target=worker, name=f"download-{i}", daemon=True)
        for i in range(min(workers, len(tasks)))
    ]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            waiting = [results.get()]
            while not results.empty():
                waiting.append(results.get())
            batch = [r for r in waiting if isinstance(r, tuple)]
            running -= sum(r is None for r in waiting)
            if batch:
                yield batch
            for error in (r for r in waiting if isinstance(r, BaseException)):
                raise error
    finally:
        # Ctrl-C, a crash or the end: threads finish only their current request (no more retries, no new rows).
        downloader.stop.set()
        queue.wake()
        for thread in threads:
            thread.join()


__all__ = [
    "DownloadConfig",
    "DownloadResult",
    "ERROR_KINDS",
    "UnsafeFilenameError",
    "download_images",
    "failures_table",
    "headline",
    "load_manifest",
    "read_manifest",
    "retry_delay",
    "safe_relative_path",
    "shrink_image",
    "summary_table",
]
