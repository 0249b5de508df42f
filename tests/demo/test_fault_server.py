import pytest
import requests

from nbutils.demo.fault_server import FaultServer, Route


def test_routes_behave_as_declared():
    routes = {
        "/ok.jpg": Route(body=b"\xff\xd8\xffdata"),
        "/flaky.jpg": Route(body=b"abc", fail_first=2),
        "/cut.jpg": Route(body=b"x" * 1000, truncate_to=10),
        "/loop1": Route(redirect_to="/loop2"),
        "/loop2": Route(redirect_to="/loop1"),
        "/page.jpg": Route(body=b"<html></html>", content_type="text/html"),
    }
    with FaultServer(routes) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        r = requests.get(server.url("/ok.jpg"), timeout=5)
        assert (r.status_code, r.content, r.headers["Content-Type"]) == (
            200,
            b"\xff\xd8\xffdata",
            "image/jpeg",
        )
        assert [requests.get(server.url("/flaky.jpg"), timeout=5).status_code for _ in range(3)] == [
            500,
            500,
            200,
        ]
        assert requests.get(server.url("/missing.jpg"), timeout=5).status_code == 404
        assert requests.get(server.url("/page.jpg"), timeout=5).headers["Content-Type"] == "text/html"
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            _ = requests.get(server.url("/cut.jpg"), timeout=5).content
        with pytest.raises(requests.exceptions.TooManyRedirects):
            requests.get(server.url("/loop1"), timeout=5)
        assert server.hits["/flaky.jpg"] == 3


def test_slow_route_times_out_and_server_only_binds_loopback():
    with FaultServer({"/slow.jpg": Route(body=b"x", delay=1.0)}) as server:
        with pytest.raises(requests.exceptions.Timeout):
            requests.get(server.url("/slow.jpg"), timeout=0.2)
    with pytest.raises(ValueError, match="loopback"):
        FaultServer(host="0.0.0.0")


def test_many_concurrent_clients_connect_without_stalling():
    # With http.server's default backlog of 5, some of 64 simultaneous connects wait for a
    # SYN retransmit (>= 1 s) and a 0.9 s timeout fires; the server's backlog of 128 avoids that.
    from concurrent.futures import ThreadPoolExecutor

    with FaultServer({"/a.jpg": Route(body=b"x" * 1000, delay=0.3)}) as server:
        with ThreadPoolExecutor(64) as pool:
            codes = list(
                pool.map(
                    lambda _: requests.get(server.url("/a.jpg"), timeout=(0.9, 5)).status_code, range(64)
                )
            )
    assert codes == [200] * 64


def test_clients_hanging_up_print_nothing(capfd):
    import socket

    with FaultServer({"/a.jpg": Route(body=b"x" * 10)}) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        for _ in range(5):  # connect, send half a request, reset the connection
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /a.jpg HTTP/1.1\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        assert requests.get(server.url("/a.jpg"), timeout=5).status_code == 200
    assert "Traceback" not in capfd.readouterr().err
