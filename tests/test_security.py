"""Security: ``--web.config.file`` (TLS, mutual TLS, basic auth, headers; unknown keys
refused), nothing in a request selects what is opened, and nothing can put a write
command on the bus."""

from __future__ import annotations

import ast
import base64
import socket
import ssl
import tokenize
import urllib.error
import urllib.request

import bcrypt
import pytest
from support import REPO
from support.inprocess import InProcessExporter, bank, fd_targets
from support.metrics import key, parse, readings
from support.pki import TLS, web
from support.processes import Exporter, run_cli
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.rs485.client import Pylontech
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.serve import TcpSimulator
from pylontech_exporter.webconfig import parse_web_config

READ_COMMANDS = {0x42, 0x44, 0x47, 0x4F, 0x51, 0x92, 0x93, 0x96}
PASSWORD = "s3cret pässword"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def tcp():
    with TcpSimulator(
        Rs485Responder(frozen_stack(modules=2, model="US3000C")), latency=0
    ) as server:
        yield server


def client_context(ca, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def fails(exporter: InProcessExporter, context: ssl.SSLContext | None) -> bool:
    try:
        status, _, _ = exporter.get("/metrics", context=context, timeout=5)
    except (urllib.error.URLError, ssl.SSLError, ConnectionError, OSError):
        return True
    return status != 200


def test_tls_scrape_and_plain_http_refused(ca, pki, tcp, tmp_path):
    with InProcessExporter(bank(tcp.url), web_config=web(pki, tmp_path, TLS)) as exporter:
        assert exporter.base.startswith("https://")
        status, _, body = exporter.get("/metrics", context=client_context(ca))
        assert status == 200
        assert parse(body.decode())[key("pylontech_up", bank="0")] == 1.0
        assert fails(exporter, ssl.create_default_context())  # server cert not trusted
        with socket.create_connection(("127.0.0.1", exporter.server.port), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = conn.recv(4096)
            except ConnectionResetError:
                answer = b""
        assert b"pylontech_up" not in answer and not answer.startswith(b"HTTP/1.1 200")
        # A failed handshake leaves the server working.
        assert exporter.get("/", context=client_context(ca))[0] == 200


def test_min_version_is_enforced(ca, pki, tcp, tmp_path):
    config = web(pki, tmp_path, TLS + "  min_version: TLS13\n")
    with InProcessExporter(bank(tcp.url), web_config=config) as exporter:
        old = client_context(ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        assert fails(exporter, old)
        assert exporter.get("/", context=client_context(ca))[0] == 200


def test_mutual_tls_require_and_verify(ca, pki, tcp, tmp_path):
    config = web(
        pki,
        tmp_path,
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: DIR/clients.crt\n"
        "  client_allowed_sans: [prometheus.example.net]\n",
    )
    with InProcessExporter(bank(tcp.url), web_config=config) as exporter:
        status, _, _ = exporter.get("/metrics", context=client_context(ca, pki["client"]))
        assert status == 200
        assert fails(exporter, client_context(ca))  # no client certificate
        assert fails(exporter, client_context(ca, pki["untrusted"]))  # signed by another CA
        assert fails(exporter, client_context(ca, pki["other_client"]))  # SAN not allowed
        assert exporter.get("/", context=client_context(ca, pki["client"]))[0] == 200


def test_verify_client_cert_if_given(ca, pki, tcp, tmp_path):
    config = web(
        pki,
        tmp_path,
        TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: DIR/clients.crt\n",
    )
    with InProcessExporter(bank(tcp.url), web_config=config) as exporter:
        assert exporter.get("/", context=client_context(ca))[0] == 200
        assert exporter.get("/", context=client_context(ca, pki["client"]))[0] == 200
        assert fails(exporter, client_context(ca, pki["untrusted"]))


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth_on_every_path_with_cached_verification(pki, tcp, tmp_path):
    config = web(
        pki,
        tmp_path,
        f"basic_auth_users:\n  prometheus: '{HASH}'\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        "    X-Frame-Options: deny\n",
    )
    with InProcessExporter(bank(tcp.url), web_config=config) as exporter:
        for _ in range(5):
            status, headers, _ = exporter.get("/metrics", basic("prometheus", PASSWORD))
            assert status == 200
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["X-Frame-Options"] == "deny"
        assert exporter.server.auth.bcrypt_checks == 1  # verified once, then cached
        for headers in (
            {},
            basic("prometheus", "wrong"),
            basic("prometheus", PASSWORD + "x"),
            basic("nobody", PASSWORD),
            {"Authorization": "Basic !!!notbase64"},
            {"Authorization": "Bearer abc"},
        ):
            for path in ("/metrics", "/", "/nope"):
                status, answer, body = exporter.get(path, headers)
                assert status == 401, (path, headers)
                assert answer["WWW-Authenticate"].startswith("Basic realm=")
                assert answer["X-Frame-Options"] == "deny"
                assert b"pylontech" not in body


def test_tls_and_auth_in_a_real_process(ca, pki, tcp, tmp_path):
    path = tmp_path / "web.yml"
    path.write_text(TLS.replace("DIR", str(pki["dir"])) + f"basic_auth_users:\n  prom: '{HASH}'\n")
    with Exporter(
        "--serial.port", tcp.url, "--cache.ttl", "0", "--web.config.file", str(path), ready=False
    ) as exporter:
        exporter.base = exporter.base.replace("http://", "https://")
        assert any("tls=True auth=True" in line for line in exporter.lines)

        def get(path: str) -> int:
            request = urllib.request.Request(exporter.base + path, headers=basic("prom", PASSWORD))
            with urllib.request.urlopen(request, context=client_context(ca), timeout=10) as answer:
                return int(answer.status)

        assert wait_for(lambda: _ok(get, "/-/ready"))
        request = urllib.request.Request(
            exporter.base + "/metrics", headers=basic("prom", PASSWORD)
        )
        with urllib.request.urlopen(request, context=client_context(ca), timeout=10) as response:
            assert response.status == 200
            assert parse(response.read().decode())[key("pylontech_up", bank="0")] == 1.0
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(
                urllib.request.Request(exporter.base + "/metrics", headers=basic("prom", "no")),
                context=client_context(ca),
                timeout=10,
            )
        assert error.value.code == 401


def test_web_config_inline_pem_and_cli_exit_codes(ca, pki, tmp_path):
    d = pki["dir"]
    inline = parse_web_config(
        {
            "tls_server_config": {
                "cert": (d / "server.crt").read_text(),
                "key": (d / "server.key").read_text(),
            }
        },
        "web.yml",
    )
    assert inline.ssl_context() is not None
    bad = tmp_path / "bad.yml"
    bad.write_text("basic_auth_users:\n  alice: hunter2\n")
    result = run_cli("--serial.port", "socket://127.0.0.1:1", "--web.config.file", str(bad))
    assert result.returncode == 2
    assert "must be a bcrypt hash" in result.stderr and result.stderr.count("\n") == 1
    good = tmp_path / "good.yml"
    good.write_text(TLS.replace("DIR", str(d)))
    result = run_cli(
        "--serial.port", "socket://127.0.0.1:1", "--web.config.file", str(good), "--config.check"
    )
    assert result.returncode == 0, result.stderr
    assert f"{good}: ok" in result.stdout


# --- nothing in a request chooses what is opened --------------------------------------------


def test_request_parameters_open_nothing(tcp):
    decoy = socket.create_server(("127.0.0.1", 0))
    decoy.settimeout(0.2)
    decoy_url = f"socket://127.0.0.1:{decoy.getsockname()[1]}"
    try:
        with Exporter("--serial.port", tcp.url, "--cache.ttl", "0") as exporter:
            reference = readings(exporter.scrape())
            pid = exporter.process.pid
            before = sorted(t for t in fd_targets(pid) if not t.startswith("socket:"))
            sockets_before = sum(t.startswith("socket:") for t in fd_targets(pid))
            for query in (
                "?target=/dev/ttyS0",
                f"?target={decoy_url}",
                f"?port={decoy_url}&group=3",
                "?serial.port=/dev/ttyS0&module=9",
                f"?config.file=/etc/passwd&web.listen-address={decoy_url}",
                "?name[]=pylontech_up&target=/dev/ttyS0",
            ):
                for path in ("/metrics", "/", "/probe"):
                    exporter.get(path + query)
                status, _, body = exporter.get("/metrics" + query.replace("name[]", "x"))
                assert status == 200
                assert readings(parse(body.decode())) == reference, query
            with pytest.raises(socket.timeout):
                decoy.accept()  # nobody connected to the address named in a request
            after = sorted(t for t in fd_targets(pid) if not t.startswith("socket:"))
            assert after == before
            assert "/dev/ttyS0" not in after
            assert sum(t.startswith("socket:") for t in fd_targets(pid)) <= sockets_before + 1
    finally:
        decoy.close()


# --- read-only: no code path puts 0x94 or 0x95 on the bus -----------------------------------


def test_no_write_command_reaches_the_bus(tmp_path):
    """The exporter (with faults that drive it through fallbacks and rediscovery), scan,
    dump and every client method, against a simulator that records each CID2."""
    stack = frozen_stack(modules=3, model="US3000C")
    seen: set[int] = set()
    slave = Rs485Responder(stack)
    handle = slave.handle

    def recording(request: bytes):
        start = request.rfind(b"~")
        seen.add(int(request[start + 7 : start + 9], 16))
        return handle(request)

    slave.handle = recording  # type: ignore[method-assign]
    with TcpSimulator(slave, latency=0) as server:
        with Exporter(
            "--serial.port", server.url, "--serial.timeout", "0.1", "--cache.ttl", "0"
        ) as e:
            e.scrape()
            stack.faults.add("nobank", count=2)
            stack.faults.add("drop", address=3, count=4)
            stack.faults.add("rtn", code=0x90, address=2, count=2)
            for _ in range(3):
                e.scrape()
            for path in ("/", "/metrics?target=x", "/nope"):
                e.get(path)
        assert (
            run_cli(
                "scan", "--serial.port", server.url, "--group", "0", "--scan.timeout", "0.05"
            ).returncode
            == 0
        )
        assert run_cli("dump", "--serial.port", server.url, "--json").returncode == 0
        with Pylontech(server.url, timeout=0.2) as client:
            client.get_values(0)
            client.get_values_bank(0)
            client.get_values_single(2)
            client.get_alarm_info(2)
            client.get_alarm_info_bank(0)
            client.get_system_parameters(2)
            client.get_management_info(2)
            client.get_module_serial_number(2)
            client.get_manufacturer_info(2)
            client.get_protocol_version(2)
            client.get_software_version(2)
            client.discover(0)
            client.scan_for_batteries(2, 8, timeout=0.05)
    assert seen <= READ_COMMANDS, {hex(c) for c in seen - READ_COMMANDS}
    assert seen == READ_COMMANDS  # every read command was exercised


def test_write_command_codes_appear_nowhere_but_the_refusal():
    """Static: outside the simulator (which must answer them), the numbers 0x94 and 0x95
    appear in the package's code (comments and strings aside) only in the encoder's
    refusal list."""
    hits = []
    for path in sorted((REPO / "pylontech_exporter").rglob("*.py")):
        if "simulator" in path.parts:
            continue
        with path.open("rb") as source:
            for token in tokenize.tokenize(source.readline):
                if token.type == tokenize.NUMBER and ast.literal_eval(token.string) in (0x94, 0x95):
                    hits.append((path.name, token.line.strip()))
    assert hits == [("frame.py", "WRITE_COMMANDS = frozenset({0x94, 0x95})")] * 2, hits


def _ok(get, path: str) -> bool:
    try:
        return get(path) == 200
    except urllib.error.HTTPError:
        return False
