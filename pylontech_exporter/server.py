"""The HTTP side: ``/metrics`` (text or OpenMetrics, gzip when asked), a landing page at
``/``, 404 elsewhere. Stdlib ThreadingHTTPServer plus prometheus_client's encoders.

Hardening: one thread per connection, so a slow client holds only its own thread; the
request line and headers must arrive within ``request_timeout`` seconds (a client that
connects and sends nothing, or a byte a second, is cut off), an idle keep-alive connection
is closed after ``idle_timeout``; only GET and HEAD (anything else: 405 with ``Allow``);
oversized request lines and headers are refused by http.server (414, 431). With a
:class:`~pylontech_exporter.webconfig.WebConfig`: TLS (the handshake runs in the
connection's thread, bounded by ``request_timeout``), client certificates, basic auth
on every path, extra response headers. Nothing in a request selects what is read: the
banks come from the configuration only.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import socket
import socketserver
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from .collector import DEFAULT_SCRAPE_TIMEOUT
from .exposition import Exposition
from .logging_setup import kv
from .webconfig import WebConfig, allowed_san

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
#: Seconds a client has to send a request line and its headers (and to finish the TLS
#: handshake) on a new connection.
REQUEST_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 60.0
#: Seconds one send to a client may block (a client that does not read).
WRITE_TIMEOUT = 30.0
ALLOWED_METHODS = ("GET", "HEAD")
HEALTHY_PATH = "/-/healthy"
READY_PATH = "/-/ready"
#: ``/docs/NAME``: the shipped documentation page NAME (plain Markdown).
DOCS_PREFIX = "/docs/"
#: Largest scrape timeout taken from the header (seconds); larger values are capped.
MAX_SCRAPE_TIMEOUT = 300.0
#: Connections served at once; more are closed at once (each holds a thread and memory).
MAX_CONNECTIONS = 64
#: Bytes a request line and its headers may take in all (Prometheus sends about 300).
MAX_HEADER_BYTES = 16 * 1024


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
    (half the timeout when the offset would eat it all). A header that is not a finite
    positive number (``inf``, ``nan``, ``-1``...) gets the default; one above
    MAX_SCRAPE_TIMEOUT (``1e12``) is capped there."""
    try:
        timeout = float(header) if header is not None else DEFAULT_SCRAPE_TIMEOUT
    except ValueError:
        timeout = DEFAULT_SCRAPE_TIMEOUT
    if not (math.isfinite(timeout) and timeout > 0):
        timeout = DEFAULT_SCRAPE_TIMEOUT
    timeout = min(timeout, MAX_SCRAPE_TIMEOUT)
    return timeout - offset if timeout > offset else timeout / 2


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header lists gzip with a quality above 0 (``gzip;q=0``
    means "not gzip")."""
    for part in (header or "").split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() != "gzip":
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


class ExporterServer(ThreadingHTTPServer):
    """Carries what the handler needs."""

    daemon_threads = True
    #: Do not wait for slow clients' threads when closing.
    block_on_close = False
    allow_reuse_address = True
    #: Room for many scrapes arriving at once (the default, 5, drops connections).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        *,
        exposition: Exposition,
        landing: Callable[[], str],
        ready: Callable[[], str | None] = lambda: None,
        docs: Callable[[str], bytes | None] = lambda name: None,
        telemetry_path: str = "/metrics",
        timeout_offset: float | None = None,
        web_config: WebConfig | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
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
        self.exposition = exposition
        self.landing = landing
        #: None when ready to serve, else why not (e.g. "discovering the modules").
        self.ready = ready
        #: A documentation page by name (None: there is none).
        self.docs = docs
        self.telemetry_path = telemetry_path
        #: Seconds to finish before Prometheus' timeout; None: the measured render time.
        self.timeout_offset = timeout_offset
        self.web_config = web_config or WebConfig()
        self.ssl_context = self.web_config.ssl_context()
        self.auth = self.web_config.auth
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        #: Connections closed because all slots were taken (for tests and logs).
        self.refused = 0
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

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to ``max_connections``; beyond, closed at once."""
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.debug("too many connections; closing one", extra=kv(client=client_address[0]))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def get_request(self) -> tuple[Any, Any]:
        try:
            connection, client = self.socket.accept()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                # Out of file descriptors: the listening socket stays readable, so
                # accepting again at once would spin. Give the connections time to end.
                time.sleep(0.1)
            raise
        if self.ssl_context is not None:
            # The handshake happens in the connection's own thread (Handler.setup), so a
            # client that never finishes it blocks nobody.
            connection = self.ssl_context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, client

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or sent garbage is not the exporter's problem: log it
        at debug level instead of printing a traceback. Anything else is a bug: logged
        with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (OSError, ssl.SSLError)):
            log.debug("connection failed", exc_info=True, extra=kv(client=client_address[0]))
        else:
            log.exception("serving a connection failed", extra=kv(client=client_address[0]))

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail once ``deadline`` (time.monotonic()) has passed, however
    slowly the bytes trickle in."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.deadline: float | None = None
        #: Bytes still allowed (while a request line and headers are read), or None.
        self.budget: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request not received in time")
            self.connection.settimeout(remaining)
        if self.budget is None:
            return self.connection.recv_into(buffer)
        if self.budget <= 0:
            raise _TooLarge("request line and headers too large")
        view = memoryview(buffer)[: self.budget]
        received = self.connection.recv_into(view)
        self.budget -= received
        return received


class _TooLarge(OSError):
    pass


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = "pylontech-exporter"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.connection = self.request
        self._usable = True
        self._requests = 0
        if isinstance(self.connection, ssl.SSLSocket):
            self._usable = self._handshake(self.connection)
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = socketserver._SocketWriter(self.connection)  # type: ignore[attr-defined]

    def _handshake(self, connection: ssl.SSLSocket) -> bool:
        connection.settimeout(self.server.request_timeout)
        try:
            connection.do_handshake()
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            log.debug("TLS handshake failed", extra=kv(client=self.client_address[0], err=error))
            return False
        tls = self.server.web_config.tls
        if tls is not None and not allowed_san(connection.getpeercert(), tls.client_allowed_sans):
            log.debug("client certificate SAN not allowed", extra=kv(client=self.client_address[0]))
            return False
        return True

    def handle(self) -> None:
        if self._usable:
            super().handle()

    def handle_one_request(self) -> None:
        """http.server's, with a deadline on the request line and headers, and 405 for
        methods other than GET and HEAD."""
        first = self._requests == 0
        self._requests += 1
        wait = self.server.request_timeout if first else self.server.idle_timeout
        self._reader.deadline = time.monotonic() + wait
        self._reader.budget = MAX_HEADER_BYTES
        # What an error answer before parse_request needs.
        self.command, self.requestline = "", ""
        self.request_version = "HTTP/1.1"
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self._reader.deadline = self._reader.budget = None
            if self.headers.get("Content-Length", "0").strip() not in ("", "0") or (
                "Transfer-Encoding" in self.headers
            ):
                # A body nobody reads: never taken for the next request.
                self.close_connection = True
            self.connection.settimeout(self.server.write_timeout)
            if self.command not in ALLOWED_METHODS:
                self._not_allowed()
                return
            if self.command == "HEAD":
                self.do_HEAD()
            else:
                self.do_GET()
            self.wfile.flush()
        except _TooLarge:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        except (TimeoutError, socket.timeout) as error:
            log.debug("request timed out", extra=kv(client=self.client_address[0], err=error))
            self.close_connection = True
        except (ConnectionError, ssl.SSLError) as error:
            log.debug("connection lost", extra=kv(client=self.client_address[0], err=error))
            self.close_connection = True

    def end_headers(self) -> None:
        for name, value in self.server.web_config.headers.items():
            self.send_header(name, value)
        super().end_headers()

    def _not_allowed(self) -> None:
        content = f"405 method not allowed: {self.command}; use GET or HEAD\n".encode()
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", ", ".join(ALLOWED_METHODS))
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Connection", "close")  # a body we did not read may follow
        self.close_connection = True
        self.end_headers()
        self.wfile.write(content)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _authorized(self) -> bool:
        auth = self.server.auth
        return (
            auth is None
            or auth.check(self.headers.get("Authorization"), client=self.client_address[0])
            is not None
        )

    def _serve(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        page = self._doc(url.path)
        # /-/healthy says nothing but "serving": a container's health check needs no
        # password for it.
        if url.path != HEALTHY_PATH and not self._authorized():
            status = 401
            headers = [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("WWW-Authenticate", 'Basic realm="pylontech-exporter", charset="UTF-8"'),
            ]
            content = b"401 unauthorized\n"
        elif url.path in (self.server.telemetry_path, "/", HEALTHY_PATH, READY_PATH) or (
            page is not None
        ):
            try:
                if url.path == self.server.telemetry_path:
                    status, headers, content = self._metrics(parse_qs(url.query))
                elif url.path == "/":
                    content = self.server.landing().encode("utf-8")
                    status, headers = 200, [("Content-Type", "text/html; charset=utf-8")]
                elif page is not None:
                    content = page
                    status, headers = 200, [("Content-Type", "text/plain; charset=utf-8")]
                else:
                    status, headers, content = self._probe(url.path)
            except Exception:  # a bug: say so, to the log and to the client
                log.exception(
                    "serving %s failed", url.path, extra=kv(client=self.client_address[0])
                )
                status = 500
                headers = [("Content-Type", "text/plain; charset=utf-8")]
                content = b"500 internal server error; see the exporter's log\n"
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

    def _doc(self, path: str) -> bytes | None:
        if not path.startswith(DOCS_PREFIX):
            return None
        return self.server.docs(path.removeprefix(DOCS_PREFIX))

    def _probe(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """``/-/healthy`` (the process serves) and ``/-/ready`` (every bank's modules are
        known), as Prometheus itself has them; neither touches the bus."""
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if path == HEALTHY_PATH:
            return 200, headers, b"Healthy.\n"
        waiting = self.server.ready()
        if waiting is None:
            return 200, headers, b"Ready.\n"
        return 503, headers, f"Not ready: {waiting}.\n".encode()

    def _metrics(self, params: dict[str, list[str]]) -> tuple[int, list[tuple[str, str]], bytes]:
        start = time.monotonic()
        server = self.server
        offset = server.timeout_offset
        if offset is None:
            offset = server.exposition.offset()
        budget = scrape_budget(self.headers.get(SCRAPE_TIMEOUT_HEADER), offset)
        gzipped = accepts_gzip(self.headers.get("Accept-Encoding"))
        output, content_type = server.exposition.body(
            start + budget, self.headers.get("Accept", ""), gzipped, params.get("name[]")
        )
        headers = [("Content-Type", content_type)]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        log.debug(
            "scrape served",
            extra=kv(seconds=round(time.monotonic() - start, 3), budget=round(budget, 3)),
        )
        return 200, headers, output

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format % args, extra=kv(client=self.client_address[0]))
