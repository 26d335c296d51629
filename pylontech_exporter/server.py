"""The HTTP side: ``/metrics`` (text or OpenMetrics, gzip when asked), a landing page at
``/``, 404 elsewhere. Stdlib ThreadingHTTPServer plus prometheus_client's encoders.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from .collector import DEFAULT_SCRAPE_TIMEOUT, scrape_deadline
from .logging_setup import kv

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def parse_listen_address(address: str) -> tuple[str, int]:
    """``:10460`` (all interfaces), ``host:10460``, ``[::1]:10460`` -> (host, port).
    Raises ValueError with a message that says what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"--web.listen-address {address!r}: expected [host]:port, e.g. :10460")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(
            f"--web.listen-address {address!r}: write IPv6 addresses in brackets, e.g. [::1]:10460"
        )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"--web.listen-address {address!r}: port must be a number 0..65535")
    return host, port


def scrape_budget(header: str | None, offset: float) -> float:
    """Seconds the exporter may spend on a scrape: Prometheus' timeout minus ``offset``
    (half the timeout when the offset would eat it all)."""
    try:
        timeout = float(header) if header is not None else DEFAULT_SCRAPE_TIMEOUT
    except ValueError:
        timeout = DEFAULT_SCRAPE_TIMEOUT
    if timeout <= 0:
        timeout = DEFAULT_SCRAPE_TIMEOUT
    return timeout - offset if timeout > offset else timeout / 2


class ExporterServer(ThreadingHTTPServer):
    """Carries what the handler needs."""

    daemon_threads = True
    allow_reuse_address = True
    #: Room for many scrapes arriving at once (the default, 5, drops connections).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        *,
        registry: CollectorRegistry,
        landing: Callable[[], str],
        telemetry_path: str = "/metrics",
        timeout_offset: float = 0.5,
    ) -> None:
        host, port = address
        if host == "":
            # All interfaces: dual-stack IPv6 when available, else IPv4.
            if socket.has_ipv6:
                self.address_family = socket.AF_INET6
                host = "::"
        else:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            self.address_family = info[0][0]
        self.registry = registry
        self.landing = landing
        self.telemetry_path = telemetry_path
        self.timeout_offset = timeout_offset
        try:
            super().__init__((host, port), Handler)
        except OSError:
            if host != "::":
                raise
            self.address_family = socket.AF_INET
            super().__init__(("0.0.0.0", port), Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            with contextlib.suppress(AttributeError, OSError):  # platform dependent
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = "pylontech-exporter"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        if url.path == self.server.telemetry_path:
            status, headers, content = self._metrics(parse_qs(url.query))
        elif url.path == "/":
            content = self.server.landing().encode("utf-8")
            status, headers = 200, [("Content-Type", "text/html; charset=utf-8")]
        else:
            status = 404
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            content = (
                f"404 not found: {url.path}\nmetrics are at {self.server.telemetry_path}\n"
            ).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def _metrics(self, params: dict[str, list[str]]) -> tuple[int, list[tuple[str, str]], bytes]:
        start = time.monotonic()
        budget = scrape_budget(self.headers.get(SCRAPE_TIMEOUT_HEADER), self.server.timeout_offset)
        token = scrape_deadline.set(start + budget)
        try:
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            registry = self.server.registry
            if "name[]" in params:
                registry = registry.restricted_registry(params["name[]"])
            output = encoder(registry)
        finally:
            scrape_deadline.reset(token)
        headers = [("Content-Type", content_type)]
        accept_encoding = self.headers.get("Accept-Encoding") or ""
        if "gzip" in (part.split(";")[0].strip() for part in accept_encoding.split(",")):
            output = gzip.compress(output)
            headers.append(("Content-Encoding", "gzip"))
        log.debug(
            "scrape served",
            extra=kv(seconds=round(time.monotonic() - start, 3), budget=round(budget, 3)),
        )
        return 200, headers, output

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format % args, extra=kv(client=self.client_address[0]))
