"""Ports and plain HTTP."""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request
from typing import Any


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
