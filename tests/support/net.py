"""Ports and plain HTTP."""

from __future__ import annotations

import contextlib
import socket
import urllib.parse
import urllib.request
from typing import Any, Iterator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, params: dict[str, Any] | None = None, timeout: float = 5.0) -> bytes:
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 that never completes a TCP connect, like a gateway that drops
    SYNs: it listens, but its accept queue is full and nobody accepts."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = int(server.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later connects hang
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()
