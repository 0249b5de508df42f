"""Resumable downloader against a local misbehaving server: every fault -> its error kind, hit counts
prove what was (not) retried, a SIGKILLed run resumes without fetching finished rows twice."""

import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from nbutils.data.download import (
    ERROR_KINDS,
    DownloadConfig,
    _read_log,
    _retry_after,
    download_images,
    read_manifest,
    retry_delay,
    safe_relative_path,
)
from nbutils.data.importers import wukong_filename
from nbutils.demo.fault_server import FaultServer, Route
from nbutils.errors import DataError

REPO = Path(__file__).resolve().parents[2]
FAST = dict(connect_timeout=2.0, read_timeout=0.5, backoff=0.01, retries=2, workers=8)
HTML = b"<!DOCTYPE html><html><body>Sorry, this photo is no longer available.</body></html>"
STATUS_FILES = {"_status.jsonl", "status.parquet"}


RED = (200, 30, 30)  # the plain colour of the served JPEGs (make_jpeg_bytes(color=RED))


def png(w=64, h=48, mode="RGB", color=(10, 120, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def manifest(urls, filenames=None, texts=None) -> pd.DataFrame:
    urls = list(urls)
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(len(urls))],
            "url": urls,
            "filename": filenames if filenames is not None else [wukong_filename(u) for u in urls],
            "text": texts if texts is not None else [f"caption {i}" for i in range(len(urls))],
        }
    )


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.fixture
def server():
    with FaultServer() as s:
        yield s


def by_url(result) -> dict[str, dict]:
    return {r["url"]: r for r in result.status.to_dict("records")}


# ----------------------------------------------------------------------------- every fault kind


def test_each_fault_gives_its_error_kind_and_keeps_nothing(tmp_path, server, make_jpeg_bytes):
    image = make_jpeg_bytes(color=RED)
    bomb = gzip.compress(b"\xff\xd8\xff\xe0" + bytes(30_000_000))  # 30 KB on the wire, 30 MB decoded
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    routes = {
        # path: (route, expected kind, expected hits); "" = ok
        "/ok.jpg": (Route(body=image), "", 1),
        "/missing.jpg": (None, "http_404", 1),  # never retried
        "/forbidden.jpg": (Route(body=HTML, status=403, content_type="text/html"), "http_403", 1),
        "/gone.jpg": (Route(body=HTML, status=410, content_type="text/html"), "http_4xx", 1),
        "/flaky.jpg": (Route(body=image, fail_first=1), "", 2),
        "/down.jpg": (Route(body=HTML, status=500, content_type="text/html"), "http_5xx", 3),
        "/busy.jpg": (Route(body=image, fail_first=1, fail_status=429), "", 2),
        "/ratelimited.jpg": (
            Route(body=HTML, status=429, content_type="text/html", headers={"Retry-After": "0"}),
            "http_429",
            3,
        ),
        "/patient.jpg": (
            Route(body=HTML, status=429, content_type="text/html", headers={"Retry-After": "1"}),
            "http_429",
            3,
        ),
        "/slow.jpg": (Route(body=image, delay=1.5), "timeout", 3),
        "/cut.jpg": (Route(body=image, truncate_to=100), "truncated", 3),
        "/page.jpg": (Route(body=HTML, content_type="text/html; charset=utf-8"), "bad_content_type", 1),
        "/plain.jpg": (Route(body=image, content_type="text/plain"), "bad_content_type", 1),
        "/fake.jpg": (Route(body=HTML, content_type="image/jpeg"), "not_an_image", 1),
        "/empty.jpg": (Route(body=b""), "not_an_image", 1),
        "/loop.jpg": (Route(redirect_to="/loop-back.jpg"), "too_many_redirects", None),
        "/moved.jpg": (Route(redirect_to="/target.jpg"), "", 1),
        "/to-ftp.jpg": (Route(redirect_to="ftp://127.0.0.1/x.jpg"), "unsupported_url", 1),
        "/huge.jpg": (Route(body=b"\xff\xd8\xff\xe0" + bytes(3_000_000)), "too_large", 1),
        "/bomb.jpg": (Route(body=bomb, headers={"Content-Encoding": "gzip"}), "too_large", 1),
        "/schemeless.jpg": (Route(body=image), "unsupported_url", 0),
    }
    for path, (route, _, _) in routes.items():
        if route is not None:
            server.add(path, route)
    server.add("/loop-back.jpg", Route(redirect_to="/loop.jpg"))
    server.add("/target.jpg", Route(body=png(), content_type="image/png"))
    urls = {server.url(p): (p, kind, hits) for p, (_, kind, hits) in routes.items() if p != "/schemeless.jpg"}
    refused = f"http://127.0.0.1:{refused_port}/x.jpg"
    not_http = [
        server.url("/schemeless.jpg").replace("http:", ""),
        "ftp://127.0.0.1/x.jpg",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "127.0.0.1/x.jpg",
        "",
        "http:///x.jpg",
    ]
    config = DownloadConfig(**FAST, max_bytes=1_000_000)
    result = download_images(manifest([*urls, refused, *not_http]), tmp_path / "out", config, progress=False)
    rows = by_url(result)

    for url, (path, kind, hits) in urls.items():
        row = rows[url]
        assert (path, row["error_kind"]) == (path, kind)
        assert row["status"] == ("ok" if kind == "" else "error")
        if hits is not None:
            assert (path, server.hits[path]) == (path, hits)
            assert row["attempts"] == (hits if kind != "unsupported_url" else 1)
    assert server.hits["/loop.jpg"] + server.hits["/loop-back.jpg"] == config.max_redirects + 1
    assert server.hits["/target.jpg"] == 1
    assert rows[server.url("/missing.jpg")]["http_status"] == 404
    assert rows[server.url("/down.jpg")]["http_status"] == 500
    assert (
        rows[server.url("/patient.jpg")]["elapsed"] >= 2.0
    )  # waited Retry-After: 1 before each of 2 retries
    # Size limit: the announced size is refused unread; the bomb is cut off at max_bytes, not decoded whole.
    assert rows[server.url("/huge.jpg")]["bytes"] == 0
    assert config.max_bytes < rows[server.url("/bomb.jpg")]["bytes"] <= config.max_bytes + config.chunk_size
    assert (rows[refused]["error_kind"], rows[refused]["attempts"]) == ("connection", 3)
    for url in not_http:  # refused before any request: the server never saw /schemeless.jpg
        assert (url, rows[url]["error_kind"], rows[url]["attempts"]) == (url, "unsupported_url", 0)
    assert server.hits["/schemeless.jpg"] == 0
    assert set(result.status["error_kind"]) - {""} <= set(ERROR_KINDS)

    # Only the ok images are on disk, byte-identical to what was served; nothing partial anywhere.
    ok = result.status[result.status["status"] == "ok"]
    assert set(ok["url"]) == {server.url(p) for p in ("/ok.jpg", "/flaky.jpg", "/busy.jpg", "/moved.jpg")}
    assert files_under(tmp_path / "out") == set(ok["path"]) | STATUS_FILES
    for row in ok.itertuples():
        data = (tmp_path / "out" / row.path).read_bytes()
        assert (sha1(data), row.sha1, row.bytes) == (
            row.sha1,
            sha1(png() if "moved" in row.url else image),
            len(data),
        )
    s = result.summary
    assert (s["rows"], s["images"], s["ok"], s["failed"], s["skipped"]) == (
        len(rows),
        len(rows),
        4,
        len(rows) - 4,
        0,
    )
    assert s["failed_by_kind"]["unsupported_url"] == len(not_http) + 1
    assert sum(s["failed_by_kind"].values()) == s["failed"]
    assert s["bytes"] == int(ok["bytes"].sum())
    assert pd.read_parquet(tmp_path / "out" / "status.parquet").equals(result.status)


def test_content_types_is_a_comma_separated_list_of_prefixes(tmp_path, server, make_jpeg_bytes):
    server.add("/a.jpg", Route(body=make_jpeg_bytes(color=RED)))  # image/jpeg
    server.add("/b.png", Route(body=png(), content_type="image/PNG"))
    webp = io.BytesIO()
    Image.new("RGB", (64, 48), RED).save(webp, "WEBP")
    server.add("/c.webp", Route(body=webp.getvalue(), content_type="image/webp; q=1"))
    config = dataclasses.replace(DownloadConfig(**FAST), content_types=" image/png,image/webp ,")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 1  # a config is frozen: vary it with dataclasses.replace
    urls = [server.url(p) for p in ("/a.jpg", "/b.png", "/c.webp")]
    result = download_images(manifest(urls), tmp_path, config, progress=False)
    assert list(result.status["error_kind"]) == ["bad_content_type", "", ""]
    assert "Content-Type 'image/jpeg' is not an image" in result.status["error"][0]
    with pytest.raises(ValueError, match="content_types must name at least one"):
        download_images(manifest(urls), tmp_path, dataclasses.replace(config, content_types=" , "))


def test_generic_or_missing_content_type_lets_the_magic_bytes_decide(tmp_path, server, make_jpeg_bytes):
    image = make_jpeg_bytes(color=RED)
    routes = {
        # S3 buckets and CDNs: a real image under a type that says nothing, or none at all.
        "/octet.jpg": (Route(body=image, content_type="application/octet-stream"), ""),
        "/binary.jpg": (Route(body=image, content_type="binary/octet-stream"), ""),
        "/untyped.jpg": (Route(body=image, content_type=None), ""),
        "/octet-params.png": (Route(body=png(), content_type="Application/Octet-Stream; name=x.png"), ""),
        # Not an image: the bytes refuse it under a generic type, the declared type otherwise.
        "/octet-page.jpg": (Route(body=HTML, content_type="application/octet-stream"), "not_an_image"),
        "/untyped-page.jpg": (Route(body=HTML, content_type=None), "not_an_image"),
        "/page.jpg": (Route(body=HTML, content_type="text/html"), "bad_content_type"),
        "/plain.jpg": (Route(body=image, content_type="text/plain"), "bad_content_type"),
        "/json.jpg": (Route(body=image, content_type="application/json"), "bad_content_type"),
    }
    for path, (route, _) in routes.items():
        server.add(path, route)
    result = download_images(
        manifest(server.url(p) for p in routes), tmp_path, DownloadConfig(**FAST), progress=False
    )
    rows = by_url(result)
    for path, (route, kind) in routes.items():
        row = rows[server.url(path)]
        assert (path, row["error_kind"], row["status"]) == (path, kind, "error" if kind else "ok")
        assert server.hits[path] == 1  # a refusal is final: no retry
        if not kind:
            assert (tmp_path / row["path"]).read_bytes() == route.body
    assert "Content-Type 'text/html' is not an image" in rows[server.url("/page.jpg")]["error"]
    assert files_under(tmp_path) == {r["path"] for r in rows.values() if not r["error_kind"]} | STATUS_FILES


def test_a_url_backing_off_holds_no_thread(tmp_path, server, make_jpeg_bytes):
    from nbutils.data.download import _Downloader, _Item, _run

    server.add("/flaky.jpg", Route(body=make_jpeg_bytes(color=RED), fail_first=1, fail_status=503))
    for i in range(5):
        server.add(f"/ok{i}.jpg", Route(body=make_jpeg_bytes(color=RED, seed=i)))
    urls = [server.url("/flaky.jpg")] + [server.url(f"/ok{i}.jpg") for i in range(5)]
    items = [_Item(str(i), url, f"{i}.jpg") for i, url in enumerate(urls)]
    config = dataclasses.replace(DownloadConfig(**FAST), workers=1, backoff=1.0)  # waits 0.5 to 1 s
    downloader = _Downloader(config, tmp_path)
    finished = [
        (items[j].url, row)
        for batch in _run(downloader, items, [(j, None) for j in range(6)], 1)
        for j, row, _ in batch
    ]
    downloader.close()
    # The one thread downloaded the other five while the first url waited for its retry.
    assert [url for url, _ in finished] == urls[1:] + urls[:1]
    assert {row["status"] for _, row in finished} == {"ok"}
    assert finished[-1][1]["attempts"] == 2 and finished[-1][1]["elapsed"] >= 0.5


class _Trickle(BaseHTTPRequestHandler):
    """Announces 1000 bytes, then sends one every 0.05 s: never silent long enough for read_timeout."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            self.wfile.write(b"\xff\xd8\xff\xe0" + bytes(8))
            for _ in range(988):
                time.sleep(0.05)
                self.wfile.write(b"\0")
                self.wfile.flush()
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_a_body_that_trickles_in_hits_the_total_timeout(tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/drip.jpg"
        config = DownloadConfig(read_timeout=1.0, total_timeout=0.3, retries=0)
        result = download_images(manifest([url]), tmp_path, config, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    row = result.status.iloc[0]
    assert (row["error_kind"], row["http_status"]) == ("timeout", 200)
    assert 12 <= row["bytes"] < 1000
    assert files_under(tmp_path) == STATUS_FILES


def test_retry_delay_grows_is_capped_and_honours_retry_after():
    config = DownloadConfig(backoff=0.5, backoff_cap=3.0, max_retry_after=10.0)
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0)]:
        delays = [retry_delay(config, attempt) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered
    assert retry_delay(config, 0, retry_after=7.0) == 7.0
    assert retry_delay(config, 0, retry_after=3600.0) == 10.0
    assert _retry_after("5") == 5.0
    in_20s = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 20))
    assert 17 <= _retry_after(in_20s) <= 20
    assert _retry_after("soon") is None and _retry_after(None) is None


# ----------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.jpg", "a.jpg"),
        ("sub/dir/b.png", "sub/dir/b.png"),
        ("./c.jpg", "c.jpg"),
        ("d//e.jpg", "d/e.jpg"),
        ("图片/猫.jpg", "图片/猫.jpg"),
        ("x..y.jpg", "x..y.jpg"),
    ],
)
def test_safe_relative_path_keeps_plain_names(name, expected):
    assert safe_relative_path(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "../x.jpg",
        "a/../../x.jpg",
        "a/..",
        "/etc/x.jpg",
        "..\\x.jpg",
        "a\\b.jpg",
        "C:x.jpg",
        "c:/x.jpg",
        "a\x00.jpg",
        "a\n.jpg",
        "",
        "   ",
        ".",
        "./",
        "dir/",
        ".hidden.jpg",
        "a/.tmp/x.jpg",
        "a" * 256 + ".jpg",
        None,
    ],
)
def test_safe_relative_path_refuses_escapes(name):
    with pytest.raises(DataError, match="file name"):
        safe_relative_path(name)


def test_unsafe_filenames_fail_their_row_and_write_nothing_outside(tmp_path, server, make_jpeg_bytes):
    image = make_jpeg_bytes(color=RED)
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)  # a folder that leads out of out_dir
    (out / "blocker").write_bytes(b"a file from an earlier manifest")
    names = {
        "/p1.jpg": "../x.jpg",
        "/p2.jpg": "/etc/x.jpg",
        "/p3.jpg": "..\\..\\x.jpg",
        "/p4.jpg": "C:\\x.jpg",
        "/p5.jpg": "link/x.jpg",
        "/p6.jpg": "link/deeper/x.jpg",
        "/p7.jpg": "_status.jsonl",
        "/p8.jpg": "good/a.jpg",
        "/p9.jpg": "good/a.jpg",
        "/p10.jpg": "good",
        "/p11.jpg": "",
        "/p12.jpg": "blocker/x.jpg",
    }
    for path in names:
        server.add(path, Route(body=image))
    result = download_images(
        manifest([server.url(p) for p in names], list(names.values())),
        out,
        DownloadConfig(**FAST),
        progress=False,
    )
    kinds = {r["url"].rsplit("/", 1)[1]: (r["status"], r["error_kind"]) for r in by_url(result).values()}
    assert kinds.pop("p8.jpg") == ("ok", "")  # the first url to claim good/a.jpg gets it
    assert set(kinds.values()) == {("error", "unsafe_filename")}
    # Only names that look harmless reach the network; the symlink is caught when writing.
    assert {p for p in names if server.hits[p]} == {"/p5.jpg", "/p6.jpg", "/p8.jpg", "/p12.jpg"}
    assert list(outside.iterdir()) == []
    assert files_under(out) == {"link", "blocker", "good/a.jpg"} | STATUS_FILES
    assert "cannot write 'blocker/x.jpg'" in by_url(result)[server.url("/p12.jpg")]["error"]
    assert "already used by" in by_url(result)[server.url("/p9.jpg")]["error"]
    assert "also a folder" in by_url(result)[server.url("/p10.jpg")]["error"]


# ----------------------------------------------------------------------------- resizing


def test_resize_shrinks_large_images_and_keeps_small_ones(tmp_path, server, make_jpeg_bytes):
    upright = Image.new("RGB", (300, 400), (220, 20, 20))  # portrait: red top half, blue bottom half
    upright.paste((20, 20, 220), (0, 200, 300, 400))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it back
    rotated = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, "JPEG", quality=95, exif=exif)
    rgba = png(400, 300, "RGBA", (0, 0, 0, 0))  # fully transparent: white once flattened
    small = png(80, 60)
    routes = {
        "/big.jpg": Route(body=make_jpeg_bytes(400, 300, color=RED)),
        "/small.png": Route(body=small, content_type="image/png"),
        "/rotated.jpg": Route(body=rotated.getvalue()),
        "/alpha.png": Route(body=rgba, content_type="image/png"),
        "/broken.jpg": Route(body=b"\xff\xd8\xff\xe0" + bytes(5000)),
    }
    for path, route in routes.items():
        server.add(path, route)
    result = download_images(
        manifest([server.url(p) for p in routes]),
        tmp_path,
        DownloadConfig(**FAST, resize_shorter_side=100),
        progress=False,
    )
    rows = {r["url"].rsplit("/", 1)[1]: r for r in by_url(result).values()}

    def stored(name):
        image = Image.open(tmp_path / rows[name]["path"])
        image.load()
        return image

    big = stored("big.jpg")
    assert (big.format, big.size, big.mode) == ("JPEG", (133, 100), "RGB")
    assert rows["small.png"]["sha1"] == sha1(small) and stored("small.png").size == (80, 60)
    turned = stored("rotated.jpg")
    assert turned.size == (100, 133) and turned.getexif().get(0x0112) in (None, 1)
    top, bottom = turned.getpixel((50, 20)), turned.getpixel((50, 110))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
    assert stored("alpha.png").size == (133, 100) and min(stored("alpha.png").getpixel((60, 50))) >= 250
    assert (rows["broken.jpg"]["error_kind"], rows["broken.jpg"]["http_status"]) == ("resize_failed", 200)
    assert not (tmp_path / rows["broken.jpg"]["path"]).exists()
    for row in rows.values():
        if row["status"] == "ok":
            assert sha1((tmp_path / row["path"]).read_bytes()) == row["sha1"]


# ----------------------------------------------------------------------------- kill and resume

CHILD = """
import sys
from nbutils.data.download import DownloadConfig, download_images, read_manifest
download_images(read_manifest(sys.argv[1]), sys.argv[2], DownloadConfig(workers=2, read_timeout=5, backoff=0.01),
                progress=False)
"""


def test_sigkill_mid_run_then_resume_fetches_only_what_was_not_finished(tmp_path, server, make_jpeg_bytes):
    bodies = {
        f"/img{i:02d}.jpg": make_jpeg_bytes(96, 64, color=(i * 6, 255 - i * 6, (i * 37) % 256))
        for i in range(40)
    }
    for i, (path, body) in enumerate(bodies.items()):
        server.add(path, Route(body=body, delay=0.25 if i % 3 == 0 else 0.05))
    urls = [server.url(p) for p in bodies]
    rows = [(u, f"caption {i}") for i, u in enumerate(urls)] + [
        (urls[5], "second caption"),
        (urls[30], "again"),
    ]
    csv = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["url", "text"]).to_csv(csv, index=False)
    out = tmp_path / "out"
    log = out / "_status.jsonl"

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(csv), str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(600):  # until a few rows are persisted (or the child is gone)
            if child.poll() is not None or (log.exists() and log.read_bytes().count(b"\n") >= 6):
                break
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate()
    assert child.returncode == -signal.SIGKILL, stderr.decode()
    assert not (out / "status.parquet").exists()
    finished = [json.loads(line) for line in log.read_bytes().split(b"\n") if line.endswith(b"}")]
    done_before = {r["url"] for r in finished}
    # Rows reach the log one by one (flushed), not in 8 KB batches of ~30 that a kill would lose.
    assert 6 <= len(done_before) < 25 and all(r["status"] == "ok" for r in finished)
    hits_before = dict(server.hits)
    with open(log, "ab") as f:  # as if killed in the middle of writing a row
        f.write(b'{"id": "7", "url": "http://127.0.0.1/img07.jp')
    # A temporary that a killed writer left for a row no longer in the manifest: only the sweep removes it.
    (out / "old").mkdir()
    (out / "old" / f".gone.jpg.tmp-{_dead_pid()}-abc123").write_bytes(b"half an image")

    result = download_images(
        read_manifest(csv), out, DownloadConfig(workers=4, read_timeout=5, backoff=0.01), progress=False
    )

    status = result.status
    assert len(status) == 40 and set(status["status"]) == {"ok"}
    for url in urls:  # finished rows were not fetched again, the others exactly once more
        path = "/" + url.rsplit("/", 1)[1]
        assert server.hits[path] == (1 if url in done_before else hits_before.get(path, 0) + 1)
    for row in status.itertuples():
        data = (out / row.path).read_bytes()
        assert sha1(data) == row.sha1 == sha1(bodies["/" + row.url.rsplit("/", 1)[1]])
        Image.open(io.BytesIO(data)).load()
    leftovers = [
        p for p in out.rglob("*") if p.name.startswith(".") or ".tmp-" in p.name or ".part" in p.name
    ]
    assert leftovers == []
    assert files_under(out) == set(status["path"]) | STATUS_FILES and (out / "old").is_dir()
    lines = log.read_text(encoding="utf-8").splitlines()  # compacted: one whole row per url
    assert sorted(json.loads(line)["url"] for line in lines) == sorted(urls)
    assert len(result.table) == 42
    assert set(result.table.loc[result.table["url"] == urls[5], "text"]) == {"caption 5", "second caption"}
    assert result.summary["skipped"] == len(done_before)

    again = download_images(read_manifest(csv), out, DownloadConfig(workers=4), progress=False)
    assert again.summary["skipped"] == 40
    assert sum(server.hits.values()) == sum(hits_before.values()) + 40 - len(done_before)
    assert again.status.equals(status)


def test_status_log_cuts_a_torn_last_line_before_appending(tmp_path):
    log = tmp_path / "_status.jsonl"
    rows = [{"url": f"http://h/{i}.jpg", "path": f"{i}.jpg", "status": "ok"} for i in range(2)]
    whole = "".join(json.dumps(r) + "\n" for r in rows)
    log.write_text(whole + '{"url": "http://h/2.jpg", "pa', encoding="utf-8")
    assert _read_log(log) == {(r["url"], r["path"]): r for r in rows}
    assert log.read_text(encoding="utf-8") == whole  # the next row starts on a line of its own
    log.write_text(whole + "garbage\n" + json.dumps({"url": "u"}) + "\n", encoding="utf-8")
    assert len(_read_log(log)) == 2  # damaged lines are skipped, not fatal


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def test_proxies_ca_bundle_and_netrc_come_from_the_environment(
    tmp_path, server, monkeypatch, make_jpeg_bytes
):
    from nbutils.data.download import _Http

    for name in (*PROXY_VARIABLES, "NO_PROXY", "no_proxy", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    image = make_jpeg_bytes(color=RED)
    # The fault server doubles as an HTTP proxy: a proxied request names the whole url.
    server.routes["http://images.invalid/far.jpg"] = Route(body=image)
    server.add("/near.jpg", Route(body=image))
    monkeypatch.setenv("HTTP_PROXY", server.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    urls = ["http://images.invalid/far.jpg", server.url("/near.jpg")]
    result = download_images(manifest(urls), tmp_path / "out", DownloadConfig(**FAST), progress=False)
    assert list(result.status["status"]) == ["ok", "ok"]
    assert (server.hits["http://images.invalid/far.jpg"], server.hits["/near.jpg"]) == (1, 1)

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "corporate-ca.pem"))
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login reader password secret\n", encoding="utf-8")
    http = _Http(DownloadConfig())
    assert http.direct.connection_pool_kw["ca_certs"] == str(tmp_path / "corporate-ca.pem")
    assert http.headers_for(server.url("/a.jpg"))["authorization"] == "Basic cmVhZGVyOnNlY3JldA=="
    assert "authorization" not in {k.lower() for k in http.headers_for("http://other.invalid/a.jpg")}


def _dead_pid() -> int:
    """The pid of a process that has exited (so nobody's temporaries carry it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- reruns


def test_rerun_keeps_failures_unless_retry_failed_and_verifies_kept_files(tmp_path, server, make_jpeg_bytes):
    image = make_jpeg_bytes(color=RED)
    server.add("/ok.jpg", Route(body=image))
    m = manifest([server.url("/ok.jpg"), server.url("/later.jpg")])
    config = DownloadConfig(**FAST)
    first = download_images(m, tmp_path, config, progress=False)
    assert list(first.status["error_kind"]) == ["", "http_404"]

    server.add("/later.jpg", Route(body=png(), content_type="image/png"))  # the host has it now
    second = download_images(m, tmp_path, config, progress=False)
    assert list(second.status["error_kind"]) == ["", "http_404"] and second.summary["skipped"] == 2
    assert server.hits == {"/ok.jpg": 1, "/later.jpg": 1}

    third = download_images(m, tmp_path, DownloadConfig(**FAST, retry_failed=True), progress=False)
    assert list(third.status["status"]) == ["ok", "ok"] and third.summary["skipped"] == 1
    assert server.hits == {"/ok.jpg": 1, "/later.jpg": 2}

    kept = tmp_path / third.status["path"][0]
    damaged = bytearray(image)
    damaged[-10] ^= 0xFF  # same size, other bytes: only the sha1 tells
    kept.write_bytes(bytes(damaged))
    download_images(m, tmp_path, DownloadConfig(**FAST, verify_existing=False), progress=False)
    assert server.hits["/ok.jpg"] == 1  # trusted without reading it
    fourth = download_images(m, tmp_path, config, progress=False)
    assert server.hits["/ok.jpg"] == 2 and kept.read_bytes() == image and fourth.summary["skipped"] == 1
    kept.unlink()
    download_images(m, tmp_path, DownloadConfig(**FAST, verify_existing=False), progress=False)
    assert server.hits["/ok.jpg"] == 3 and kept.read_bytes() == image


def test_second_run_on_the_same_folder_is_refused_while_one_holds_it(tmp_path, server):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="another download"):
            download_images(
                manifest([server.url("/a.jpg")]), tmp_path, DownloadConfig(**FAST), progress=False
            )
    finally:
        os.close(fd)
    assert server.hits == {}


# ----------------------------------------------------------------------------- manifests


def test_shared_urls_are_fetched_once_and_every_caption_is_kept(tmp_path, server, capsys, make_jpeg_bytes):
    image = make_jpeg_bytes(color=RED)
    server.add("/a.jpg", Route(body=image))
    a, b = server.url("/a.jpg"), server.url("/b.jpg")
    texts = ["一只猫", "a cat", "猫在睡觉", "missing"]
    result = download_images(manifest([a, a, b, a], texts=texts), tmp_path, DownloadConfig(**FAST))
    assert server.hits == {"/a.jpg": 1, "/b.jpg": 1}
    assert list(result.status["id"]) == ["0", "2"] and list(result.status["url"]) == [a, b]
    table = result.table
    assert list(table.columns) == ["image_path", "text", "url", "id"]
    assert list(table["text"]) == ["一只猫", "a cat", "missing"] and list(table["id"]) == ["0", "1", "3"]
    assert set(table["image_path"]) == {str(tmp_path / wukong_filename(a))}
    s = result.summary
    assert {k: s[k] for k in ("rows", "images", "ok", "failed", "skipped")} == {
        "rows": 4,
        "images": 2,
        "ok": 1,
        "failed": 1,
        "skipped": 0,
    }
    assert s["failed_by_kind"] == {"http_404": 1} and s["rows_per_second"] > 0 and s["bytes"] == len(image)
    assert "ok 50.0%, failed 1" in capsys.readouterr().err  # the progress bar's live success rate


def test_read_manifest_columns_ids_and_formats(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text(
        "link,caption,name,key\nhttp://h/a.jpg , 猫 ,cat.jpg,k1\nhttp://h/b.png,狗,dog.jpg,k2\n",
        encoding="utf-8",
    )
    m = read_manifest(
        csv, url_column="link", caption_column="caption", filename_column="name", id_column="key"
    )
    assert m.to_dict("list") == {
        "id": ["k1", "k2"],
        "url": ["http://h/a.jpg", "http://h/b.png"],
        "filename": ["cat.jpg", "dog.jpg"],
        "text": ["猫", "狗"],
    }
    m = read_manifest(csv, url_column="link", caption_column="caption")
    assert list(m["id"]) == ["0", "1"]
    assert list(m["filename"]) == [wukong_filename("http://h/a.jpg"), wukong_filename("http://h/b.png")]
    assert m["filename"][1].endswith(".png")
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"url": "http://h/a.jpg", "text": "x"}\n{"url": "http://h/a.jpg", "text": "y"}\n')
    parquet = tmp_path / "m.parquet"
    pd.DataFrame({"url": ["http://h/a.jpg", "http://h/a.jpg"], "text": ["x", "y"]}).to_parquet(parquet)
    assert read_manifest(jsonl).equals(read_manifest(parquet))


def test_bad_manifests_raise_data_error_naming_the_problem(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("link,caption\nhttp://h/a.jpg,猫\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_manifest(csv)
    assert (
        str(csv) in str(e.value)
        and "url_column='url'" in str(e.value)
        and "['link', 'caption']" in str(e.value)
    )
    with pytest.raises(DataError, match=r"caption_column='text'.*\['link', 'caption'\]"):
        read_manifest(csv, url_column="link")
    with pytest.raises(DataError, match="filename_column='file'"):
        read_manifest(csv, url_column="link", caption_column="caption", filename_column="file")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_manifest(empty)
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("url,text\nhttp://h/a.jpg,ok\nhttp://h/b.jpg,中文说明\n".encode("gb18030"))
    with pytest.raises(DataError, match="UTF-8 at line 3"):
        read_manifest(gbk)
    with pytest.raises(DataError, match="missing column"):
        download_images(pd.DataFrame({"link": ["http://h/a.jpg"], "text": ["x"]}), tmp_path / "out")
    with pytest.raises(ValueError, match="workers"):
        download_images(manifest(["http://h/a.jpg"]), tmp_path / "out", DownloadConfig(workers=0))


def test_importers_with_urls_feed_the_downloader(tmp_path, make_jpeg_bytes):
    """AI Challenger JSON, Wukong parquet and the original url,filename,text CSV download as they are."""
    import json as _json

    from nbutils.data import importers

    routes = {f"/p/{i}.jpg": Route(body=make_jpeg_bytes(40, 30, color=RED)) for i in range(6)}
    with FaultServer(routes) as server:
        ai = tmp_path / "ai.json"
        ai.write_text(
            _json.dumps(
                [
                    {
                        "url": server.url(f"/p/{i}.jpg"),
                        "image_id": f"{i}.jpg",
                        "caption": [f"图{i}说明{j}" for j in range(5)],
                    }
                    for i in range(2)
                ],
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )
        wk = tmp_path / "wukong.parquet"
        pd.DataFrame(
            {"url": [server.url("/p/2.jpg"), server.url("/p/3.jpg")], "caption": ["一只猫", "一条狗"]}
        ).to_parquet(wk)
        orig = tmp_path / "orig.csv"
        orig.write_text(
            "url,filename,text\n" + "".join(f"{server.url(f'/p/{i}.jpg')},{i}.jpg,第{i}张\n" for i in (4, 5)),
            encoding="utf-8",
        )
        for fmt, path, rows in (("ai_challenger", ai, 10), ("wukong", wk, 2), ("original_csv", orig, 2)):
            out = tmp_path / f"out_{fmt}"
            table = importers.import_captions(fmt, path, images_root=str(out))
            result = download_images(table, out, DownloadConfig(workers=2), progress=False)
            assert result.summary["failed"] == 0 and len(result.table) == rows, fmt
            for p in result.table["image_path"]:
                assert Image.open(p).size == (40, 30)


def test_headline_says_what_happened_in_one_sentence():
    from nbutils.data import download

    summary = {"rows": 15000, "images": 3000, "ok": 2810, "failed": 190, "skipped": 0,
               "failed_by_kind": {"http_404": 81, "bad_content_type": 51, "too_large": 18,
                                  "too_many_redirects": 18, "truncated": 18, "timeout": 4}}  # fmt: skip
    assert download.headline(summary) == (
        "2,810 of 3,000 images downloaded; 190 failed (not found 81, bad content type 51, too large 18, others 40)."
    )
    rerun = {**summary, "ok": 3000, "failed": 0, "failed_by_kind": {}, "skipped": 3000}
    assert download.headline(rerun) == "All 3,000 images downloaded; 3,000 settled by an earlier run."
    html = download.failures_table(summary).to_html()
    assert "http_404" in html and "2.7 %" in html and "{" not in html.split("<tbody>")[1]
