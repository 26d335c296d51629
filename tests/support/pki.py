"""Certificates for the TLS tests (trustme) and web config files that use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme

from pylontech_exporter.webconfig import WebConfig, load_web_config

#: A web config's TLS section with the server certificate of :func:`make_pki`.
TLS = "tls_server_config:\n  cert_file: DIR/server.crt\n  key_file: DIR/server.key\n"


def make_pki(ca: trustme.CA, directory: Path) -> dict[str, Any]:
    """Server certificate for 127.0.0.1 from ``ca`` in ``directory``; client certificates
    from a client CA (``clients.crt``) and from a CA the server does not trust."""
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(directory / "server.crt")
    server.private_key_pem.write_to_path(directory / "server.key")
    clients = trustme.CA()
    clients.cert_pem.write_to_path(directory / "clients.crt")
    return {
        "dir": directory,
        "client": clients.issue_cert("prometheus.example.net"),
        "other_client": clients.issue_cert("intruder.example.net"),
        "untrusted": trustme.CA().issue_cert("prometheus.example.net"),
    }


def web(pki: dict[str, Any], tmp_path: Path, text: str) -> WebConfig:
    """``text`` (``DIR`` standing for the certificates' directory) as a loaded web config."""
    path = tmp_path / "web.yml"
    path.write_text(text.replace("DIR", str(pki["dir"])))
    return load_web_config(str(path))
