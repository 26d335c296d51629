"""Recorded bus traffic played back through a TCP "gateway" that pushes it unasked, as an
RS485-to-Ethernet converter does beside an inverter; and a capture of live traffic."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from .waiting import wait_for


class ReplayGateway:
    """Accepts one client at a time; :meth:`push` sends bytes to it. ``received`` counts
    what clients sent: on a listen-only line it must stay 0."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        self.received = 0
        self.connections = 0
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._client = client
                self.connections += 1
            threading.Thread(target=self._count, args=(client,), daemon=True).start()

    def _count(self, client: socket.socket) -> None:
        while True:
            try:
                data = client.recv(4096)
            except OSError:
                return
            if not data:
                return
            self.received += len(data)

    def wait_connected(self, connections: int = 1) -> None:
        assert wait_for(lambda: self.connections >= connections), "nobody connected"

    def push(self, data: bytes) -> None:
        with self._lock:
            assert self._client is not None, "no client connected"
            self._client.sendall(data)

    def drop_client(self) -> None:
        """The gateway resets the connection (as after a power cut)."""
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(OSError):  # wakes the thread counting its bytes
                    self._client.shutdown(socket.SHUT_RDWR)
                self._client.close()
                self._client = None

    def close(self) -> None:
        self._closed = True
        self.drop_client()
        self._server.close()

    def __enter__(self) -> ReplayGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def capture(url: str, seconds: float) -> bytes:
    """Every byte a broadcast gateway at ``url`` (``socket://host:port``) carries in
    ``seconds``, read by a client that sends nothing."""
    host, port = url.removeprefix("socket://").rsplit(":", 1)
    data = b""
    with socket.create_connection((host, int(port))) as client:
        client.settimeout(0.05)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data += client.recv(65536)
            except TimeoutError:
                continue
    return data
