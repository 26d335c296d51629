"""The container health check: ``/-/healthy`` of the local exporter, over HTTP or TLS,
with basic auth or client certificates configured or not, on whatever port it listens:
the address as the exporter (PID 1 of the container) read it from its command line,
the environment or its default."""

from __future__ import annotations

import ssl

import bcrypt
import pytest
from support.inprocess import InProcessExporter, bank
from support.net import free_port
from support.pki import TLS, web

from pylontech_exporter.healthcheck import healthy, listen_address, main

ENV = "PYLONTECH_EXPORTER_WEB_LISTEN_ADDRESS"
#: What the image's ENTRYPOINT ["pylontech-exporter"] makes PID 1: the script's shebang.
SCRIPT = ["/usr/local/bin/python3.13", "/usr/local/bin/pylontech-exporter"]


def cmdline(tmp_path, words: list[str]) -> str:
    """A /proc/PID/cmdline: each word ended by a NUL."""
    path = tmp_path / "cmdline"
    path.write_bytes(b"".join(word.encode() + b"\0" for word in words))
    return str(path)


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


def test_the_address_given_to_docker_run_is_the_one_checked(tcp_simulator, tmp_path):
    """``docker run IMAGE --web.listen-address=:9100``: PID 1's flag wins over the image's
    environment variable (as in the exporter), in both spellings, also behind an init."""
    with InProcessExporter(bank(tcp_simulator.url)) as exporter:
        port = exporter.server.port
        environ = {ENV: f":{free_port()}"}  # the image's default, not where it listens
        for words in (
            [*SCRIPT, "--serial.port=/dev/ttyUSB0", f"--web.listen-address=:{port}"],
            [*SCRIPT, "--web.listen-address", f"127.0.0.1:{port}", "--serial.port", "x"],
            ["/sbin/docker-init", "--", "pylontech-exporter", f"--web.listen-address=:{port}"],
        ):
            assert main(cmdline(tmp_path, words), environ) == 0, words
        assert main(cmdline(tmp_path, [*SCRIPT, "--serial.port=x"]), environ) == 1
        assert main(str(tmp_path / "no-such-cmdline"), {ENV: f":{port}"}) == 0


@pytest.mark.parametrize(
    ("words", "environ", "address"),
    [
        (
            [*SCRIPT, "--serial.port=x", "--web.listen-address=[::1]:9100"],
            {ENV: ":1"},
            "[::1]:9100",
        ),
        ([*SCRIPT, "--serial.port=x"], {ENV: ":9100"}, ":9100"),  # the parser reads it too
        ([*SCRIPT, "--serial.port=x"], {}, ":10460"),
        (["/bin/sh", "-c", "sleep 1d"], {ENV: ":9100"}, ":9100"),  # PID 1 is not the exporter
        ([*SCRIPT, "--no-such-flag", "--web.listen-address=:1"], {ENV: ":9100"}, ":9100"),
        ([], {}, ":10460"),
        ([], {ENV: ":9100", "PYLONTECH_EXPORTER_SERIAL_BAUDRATE": "abc"}, ":9100"),
    ],
)
def test_where_the_address_comes_from(tmp_path, words, environ, address):
    assert listen_address(cmdline(tmp_path, words), environ) == address


def test_an_unreadable_cmdline_leaves_the_environment_then_the_default(tmp_path):
    assert listen_address(str(tmp_path / "absent"), {ENV: "127.0.0.1:9100"}) == "127.0.0.1:9100"
    assert listen_address(str(tmp_path / "absent"), {}) == ":10460"


def test_an_address_that_cannot_be_listened_on_is_unhealthy_in_one_line(tmp_path, capsys):
    assert main(str(tmp_path / "absent"), {ENV: "nonsense"}) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_client_certificates_required(tcp_simulator, pki, tmp_path):
    """The check has no client certificate: the exporter's TLS refusal of one is its
    answer, over TLS 1.3 (an alert after the handshake) and 1.2 (in the handshake)."""
    for version in ("TLS13", "TLS12"):
        config = web(
            pki,
            tmp_path,
            TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
            f"  client_ca_file: DIR/clients.crt\n  min_version: {version}\n"
            f"  max_version: {version}\n",
        )
        with InProcessExporter(bank(tcp_simulator.url), web_config=config) as exporter:
            assert healthy(f":{exporter.server.port}"), version


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
