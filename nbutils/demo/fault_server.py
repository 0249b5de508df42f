"""A local HTTP server that misbehaves on purpose, for tests and the demo.

Real image hosts return 404s, flaky 500s, slow or truncated responses, HTML error pages under
`.jpg` names and redirect loops. The downloader is tested against all of those here, on
127.0.0.1 only: nothing leaves the machine.

    routes = {"/a.jpg": Route(body=jpeg_bytes), "/flaky.jpg": Route(body=jpeg_bytes, fail_first=1)}
    with FaultServer(routes) as server:
        requests.get(server.url("/a.jpg"))
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """How the server answers one path. Unknown paths get 404."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "image/jpeg"  # None: no Content-Type header at all
    fail_first: int = 0  # answer `fail_status` to the first N requests, then normally
    fail_status: int = 500
    delay: float = 0.0  # seconds to wait before answering (a slow host)
    truncate_to: int | None = None  # announce len(body) but send only this many bytes, then close
    redirect_to: str | None = None  # answer 302 with this Location (path or full URL)
    headers: dict = field(default_factory=dict)
    make_body: Callable[[], bytes] | None = (
        None  # makes the body per request instead: a large site stays on disk
    )

    def payload(self) -> bytes:
        """The bytes this route answers with."""
        return self.make_body() if self.make_body is not None else self.body


class FaultServer:
    """Serve `routes` on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, routes: dict[str, Route] | None = None, host: str = "127.0.0.1", port: int = 0):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"FaultServer only binds to loopback, not {host!r}")
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: Counter = Counter()
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def add(self, path: str, route: Route) -> str:
        """Add a route; returns its full URL."""
        self.routes[path if path.startswith("/") else "/" + path] = route
        return self.url(path)

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _count(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]


class _Server(ThreadingHTTPServer):
    # http.server's default backlog of 5 makes 16+ concurrent clients stall on connect,
    # which the downloader would (rightly) report as timeouts of good images.
    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hanging up (timeouts, size limits) are what this server is for; anything else is a bug.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _handler_for(server: FaultServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate sends; with Nagle on, the second waits ~40 ms
        # for a delayed ACK on every kept-alive request.
        disable_nagle_algorithm = True

        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            route = server.routes.get(path)
            n = server._count(path)
            if route is None:
                return self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")
            if route.delay:
                time.sleep(route.delay)
            if n <= route.fail_first:
                return self._send(route.fail_status, b"<html><body>server error</body></html>", "text/html")
            if route.redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", route.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send(route.status, route.payload(), route.content_type, route.headers, route.truncate_to)

        def _send(self, status, body, content_type, headers=None, truncate_to=None):
            try:
                self.send_response(status)
                if content_type is not None:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if truncate_to is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body if truncate_to is None else body[:truncate_to])
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (timeout, size limit): that is its right.
                self.close_connection = True

        def log_message(self, *args):  # keep test and notebook output clean
            pass

    return Handler
