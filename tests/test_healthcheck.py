"""The container health check: ``/-/healthy`` of the local exporter, over HTTP or TLS,
with basic auth configured or not, on whatever port it listens."""

from __future__ import annotations

import ssl

import bcrypt
from support.inprocess import InProcessExporter, bank
from support.net import free_port
from support.pki import TLS, web

from pylontech_exporter.healthcheck import healthy


def test_plain_http_on_another_port(tcp_simulator):
    with InProcessExporter(bank(tcp_simulator.url)) as exporter:
        assert healthy(f"127.0.0.1:{exporter.server.port}")
        assert healthy(f":{exporter.server.port}")
    assert not healthy(f"127.0.0.1:{free_port()}")


def test_tls_and_basic_auth(tcp_simulator, pki, tmp_path):
    password_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    config = web(pki, tmp_path, TLS + f"basic_auth_users:\n  prom: '{password_hash}'\n")
    with InProcessExporter(bank(tcp_simulator.url), web_config=config) as exporter:
        assert healthy(f"127.0.0.1:{exporter.server.port}")
        status, _, _ = exporter.get("/-/ready", context=_unverified())
        assert status == 401  # only /-/healthy is open


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
