"""``python -m pylontech_exporter.healthcheck``: exit 0 when the exporter on this host
answers ``/-/healthy`` (a container's HEALTHCHECK). Never touches the bus.

The address comes from ``PYLONTECH_EXPORTER_WEB_LISTEN_ADDRESS`` (default ``:10460``);
TLS is tried when plain HTTP is refused (the certificate is not checked: it is this
host's own exporter). ``/-/healthy`` needs no basic auth.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request

from .server import parse_listen_address


def healthy(address: str, timeout: float = 5.0) -> bool:
    host, port = parse_listen_address(address)
    host = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    for scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(
                f"{scheme}://{host}:{port}/-/healthy", timeout=timeout, context=unverified
            ) as answer:
                return bool(answer.status == 200)
        except (OSError, ValueError):
            continue
    return False


def main() -> int:
    address = os.environ.get("PYLONTECH_EXPORTER_WEB_LISTEN_ADDRESS", ":10460")
    return 0 if healthy(address) else 1


if __name__ == "__main__":
    sys.exit(main())
