"""The HTTP server: the scrape budget from Prometheus' header, gzip negotiation, internal
errors as 500; under bad and slow clients only GET and HEAD, 404 elsewhere, oversized and
malformed requests refused without disturbing other scrapes, slow clients cut off without
blocking anybody."""

from __future__ import annotations

import http.client
import logging
import math
import re
import socket
import threading
import time

import pytest
from prometheus_client.registry import CollectorRegistry
from support import REPO
from support.inprocess import InProcessExporter, bank, handler_threads, resources
from support.metrics import key
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.collector import DEFAULT_SCRAPE_TIMEOUT
from pylontech_exporter.exposition import Exposition
from pylontech_exporter.server import (
    MAX_CONNECTIONS,
    MAX_SCRAPE_TIMEOUT,
    ExporterServer,
    scrape_budget,
)
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.responder import Reply
from pylontech_exporter.simulator.serve import TcpSimulator
from pylontech_exporter.snapshot import Snapshot
from pylontech_exporter.transport import Framer


@pytest.mark.parametrize("header", ["inf", "-inf", "nan", "1e12", "1e400", "0", "-3", "x"])
def test_scrape_budget_refuses_non_finite_and_huge_timeouts(header):
    budget = scrape_budget(header, 0.5)
    assert math.isfinite(budget) and 0 < budget <= 300
    if header in ("inf", "-inf", "nan", "0", "-3", "x", "1e400"):
        assert budget == DEFAULT_SCRAPE_TIMEOUT - 0.5
    if header == "1e12":
        assert budget == MAX_SCRAPE_TIMEOUT - 0.5


def test_scrape_budget_keeps_sane_values():
    assert scrape_budget("15", 0.5) == 14.5
    assert scrape_budget("0.4", 0.5) == 0.2
    assert scrape_budget(None, 0.5) == DEFAULT_SCRAPE_TIMEOUT - 0.5


class _Broken:
    def collect(self):
        raise RuntimeError("collector bug")


def _serve(registry: CollectorRegistry, landing=lambda: "<html></html>"):
    exposition = Exposition(registry, lambda deadline: Snapshot(banks=[]))
    server = ExporterServer(("127.0.0.1", 0), exposition=exposition, landing=landing)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread


def _get(server: ExporterServer, path: str, headers: dict[str, str] | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_internal_errors_answer_500_and_are_logged(caplog):
    registry = CollectorRegistry()
    registry.register(_Broken())

    def landing() -> str:
        raise ValueError("landing bug")

    server, thread = _serve(registry, landing)
    try:
        with caplog.at_level(logging.ERROR, logger="pylontech_exporter.server"):
            status, _, body = _get(server, "/metrics")
            assert status == 500 and b"internal" in body
            status, _, _ = _get(server, "/")
            assert status == 500
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 2 and all(r.exc_info for r in errors)
        # The server still answers afterwards.
        assert _get(server, "/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity, gzip;q=0.0", False),
        ("gzip;q=x", False),
        ("", False),
    ],
)
def test_gzip_only_when_accepted_with_a_positive_quality(accept_encoding, gzipped):
    server, thread = _serve(CollectorRegistry())
    try:
        status, headers, _ = _get(server, "/metrics", {"Accept-Encoding": accept_encoding})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert status == 200
    assert (headers.get("Content-Encoding") == "gzip") is gzipped


@pytest.fixture(scope="module")
def exporter():
    stack = frozen_stack(modules=2, model="US3000C")
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url), cache_ttl=0, request_timeout=0.8, idle_timeout=1.0) as e,
    ):
        yield e


def raw(exporter: InProcessExporter, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", exporter.server.port), timeout=timeout) as conn:
        conn.sendall(data)
        answer = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            answer += chunk
        return answer


def test_get_and_head_only(exporter):
    assert exporter.get("/metrics")[0] == 200
    status, _, body = exporter.get("/metrics", method="HEAD")
    assert status == 200 and body == b""
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW"):
        status, headers, body = exporter.get("/metrics", method=method)
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
        assert b"use GET or HEAD" in body


def test_a_post_body_is_not_read_as_the_next_request(exporter):
    answer = raw(
        exporter,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n"
        b"GET /metrics HTTP/1.1\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert answer.count(b"HTTP/1.1") == 1  # the body was not served as a second request


def test_unknown_paths_are_404(exporter):
    for path in ("/nope", "/metrics/", "/metricsx", "/../etc/passwd", "/%00", "/index.html"):
        assert exporter.get(path)[0] == 404, path
    for path in ("/docs/", "/docs/nope", "/docs/../README", "/docs/Metrics", "/docs/%2e%2e"):
        assert exporter.get(path)[0] == 404, path


def test_the_landing_pages_links_lead_to_the_shipped_docs(exporter):
    links = re.findall(r"href='(/docs/[^']+)'", exporter.get("/")[2].decode())
    assert links == ["/docs/metrics", "/docs/troubleshooting"]
    for link in links:
        status, headers, body = exporter.get(link)
        assert status == 200, link
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        name = link.removeprefix("/docs/")
        assert body == (REPO / "docs" / f"{name}.md").read_bytes()
    assert exporter.get("/docs/listen-only.md")[0] == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/9.9\r\n\r\n", b"505"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"431"),  # over 16 KiB in all
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", b"431"),
    ],
    ids=["garbage", "tls-hello", "version", "long-line", "huge-header", "many-headers"],
)
def test_malformed_requests_are_refused_and_others_still_served(exporter, request_bytes, status):
    results = []

    def scrape() -> None:
        results.append(exporter.scrape()[key("pylontech_up", bank="0")])

    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for thread in threads:
        thread.start()
    answer = raw(exporter, request_bytes)
    for thread in threads:
        thread.join(10)
    # A request line http.server cannot parse gets an HTTP/0.9-style answer (no status
    # line), the error page naming the status.
    assert answer.startswith(b"HTTP/1.1 " + status) or b"Error code: " + status in answer, answer[
        :80
    ]
    assert results == [1.0, 1.0, 1.0]


def test_slow_clients_do_not_block_others_and_are_cut_off(exporter):
    port = exporter.server.port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    dripper = socket.create_connection(("127.0.0.1", port))
    stop = threading.Event()
    dripped = []

    def drip() -> None:  # slowloris: a valid request, one byte every 0.1 s, never finished
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            if stop.is_set():
                return
            try:
                dripper.sendall(bytes([byte]))
            except OSError:
                dripped.append("closed by the server")
                return
            time.sleep(0.1)

    dripping = threading.Thread(target=drip)
    dripping.start()
    try:
        started = time.monotonic()
        for _ in range(5):  # scrapes are served meanwhile, at normal speed
            status, _, _ = exporter.get("/metrics", timeout=5)
            assert status == 200
        assert time.monotonic() - started < 3
        # Past request_timeout (0.8 s) the server hangs up on all of them.
        for conn in silent:
            conn.settimeout(3)
            assert conn.recv(100) == b"", "an idle connection was not closed"
        dripping.join(5)
        assert dripped == ["closed by the server"]
        assert time.monotonic() - started < 4
    finally:
        stop.set()
        dripping.join(5)
        for conn in [*silent, dripper]:
            conn.close()


def test_idle_keep_alive_connection_is_closed_and_threads_come_back(exporter):
    assert wait_for(lambda: handler_threads() == 0, 5)  # earlier tests' connections are gone
    before = resources()["threads"]
    conn = http.client.HTTPConnection("127.0.0.1", exporter.server.port, timeout=5)
    for _ in range(3):  # keep-alive: one connection, several scrapes
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        response.read()
    sock = conn.sock
    assert sock is not None
    assert sock.recv(1) == b""  # closed by the server after idle_timeout (1 s)
    conn.close()
    for _ in range(30):
        raw(exporter, b"JUNK\r\n\r\n")
    assert wait_for(lambda: resources()["threads"] <= before, 5), (resources(), before)


def test_a_get_with_a_body_is_not_read_as_a_second_request(exporter):
    body = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = raw(
        exporter,
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1


def test_headers_larger_than_16_kib_in_all_are_refused(exporter):
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 4000) for i in range(8))
    answer = raw(exporter, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


def test_connections_beyond_the_cap_are_closed_at_once(stack):
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url), max_connections=4, request_timeout=5) as exporter,
    ):
        idle = [socket.create_connection(("127.0.0.1", exporter.server.port)) for _ in range(4)]
        try:
            assert wait_for(lambda: handler_threads() >= 4)
            extra = socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5)
            assert extra.recv(100) == b""  # closed without an answer
            extra.close()
            assert exporter.server.refused >= 1
        finally:
            for conn in idle:
                conn.close()
        assert wait_for(lambda: handler_threads() == 0)
        assert exporter.get("/-/healthy")[0] == 200  # slots are free again


def test_concurrent_scrapes_of_one_snapshot_share_one_render(stack):
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url), cache_ttl=60) as exporter,
    ):
        scrapers = MAX_CONNECTIONS // 2  # under the cap: every scrape must be answered
        start = threading.Barrier(scrapers)
        results: list[int] = []

        def scrape() -> None:
            start.wait()
            results.append(exporter.get("/metrics")[0])

        threads = [threading.Thread(target=scrape) for _ in range(scrapers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == [200] * scrapers
        assert exporter.server.exposition.renders == 1


class _HeldAfter:
    """The stack's responder that answers ``free`` requests, then holds every answer
    until ``release`` is set: discovery stops half-way for as long as a test wants."""

    def __init__(self, responder: Rs485Responder, free: int) -> None:
        self.inner = responder
        self.stack = responder.stack
        self.free = free
        self.release = threading.Event()

    def framer(self) -> Framer:
        return self.inner.framer()

    def handle(self, request: bytes) -> Reply:
        if self.free <= 0:
            self.release.wait(30)
        self.free -= 1
        return self.inner.handle(request)


def test_a_scrape_during_discovery_is_not_cached_for_the_next_one(stack):
    """A restart under a running Prometheus: the scrape after discovery has the modules,
    though the one before (bank still discovering) is younger than the cache's TTL."""
    held = _HeldAfter(Rs485Responder(stack), free=1)
    with (
        TcpSimulator(held, latency=0) as tcp,
        InProcessExporter(bank(tcp.url), cache_ttl=60, ready=False) as exporter,
    ):
        during = exporter.scrape()
        assert during[key("pylontech_bank_discovering", bank="0")] == 1
        assert during[key("pylontech_up", bank="0")] == 0
        held.release.set()
        assert wait_for(lambda: all(b.settled for b in exporter.poller.banks), 30)
        after = exporter.scrape()
        assert after[key("pylontech_bank_discovering", bank="0")] == 0
        assert after[key("pylontech_up", bank="0")] == 1
        up = [k for k, v in after.items() if k[0] == "pylontech_module_up" and v == 1]
        assert len(up) == len(stack.modules)
