"""Parsing and checking ``--web.config.file``: what is refused and how it is said,
relative certificate paths, and basic auth that does not leak which users exist."""

from __future__ import annotations

import base64
import threading

import bcrypt
import pytest
from support.pki import TLS, web

from pylontech_exporter.config import ConfigError
from pylontech_exporter.webconfig import load_web_config, parse_web_config


def test_web_config_header_values_must_be_latin1():
    document = {
        "http_server_config": {
            "headers": {"Content-Security-Policy": "default-src \u2019self\u2019"}
        }
    }
    with pytest.raises(ConfigError, match=r"Content-Security-Policy.*latin-1") as error:
        parse_web_config(document, "web.yml")
    assert "\n" not in str(error.value)
    ok = {"http_server_config": {"headers": {"Content-Security-Policy": "default-src 'self'"}}}
    assert parse_web_config(ok, "web.yml").headers


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_config: {}\n", "unknown key 'tls_config'"),
        ("rate_limit: {interval: 1s, burst: 5}\n", "rate_limit is not supported"),
        (TLS + "  client_auth: x\n", "tls_server_config: unknown key 'client_auth'"),
        (TLS + "  client_auth_type: RequireAnyClientCert\n", "without verifying them"),
        (TLS + "  client_auth_type: Always\n", "must be one of NoClientCert"),
        (TLS + "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
        (TLS + "  min_version: TLS14\n", "min_version: must be one of TLS12, TLS13"),
        (TLS + "  min_version: TLS10\n", "never negotiates TLS 1.0 or 1.1"),
        (TLS + "  min_version: TLS13\n  max_version: TLS12\n", "above max_version"),
        (TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites is not supported"),
        ("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /x.key\n", "does not"),
        ("tls_server_config:\n  key_file: DIR/server.key\n", "cert_file (or cert) is missing"),
        (
            "tls_server_config:\n  cert_file: DIR/server.key\n  key_file: DIR/server.key\n",
            "cannot load the certificate",
        ),
        ("basic_auth_users:\n  alice: hunter2\n", "must be a bcrypt hash"),
        ("basic_auth_users:\n  alice: $2y$10$short\n", "not a complete bcrypt hash"),
        ("basic_auth_users: [alice]\n", "basic_auth_users: must be a mapping"),
        ("http_server_config:\n  headers:\n    Server: x\n", "header not allowed"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "must be one of deny"),
        ("http_server_config:\n  http2: maybe\n", "http2: must be true or false"),
        ("- a\n", "expected a mapping"),
        ("tls_server_config: [\n", "not valid YAML"),
    ],
)
def test_bad_web_config_says_what_to_fix(pki, tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        web(pki, tmp_path, text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


HUGE = "x" * 100_000


@pytest.mark.parametrize(
    "document",
    [
        {"http_server_config": {"http2": HUGE}},
        {"basic_auth_users": HUGE},
        {"tls_server_config": {"cert": [HUGE]}},
        {HUGE: 1},
        {"http_server_config": {"headers": {"X-Frame-Options": HUGE}}},
    ],
)
def test_a_huge_bad_value_gives_a_short_error(document):
    with pytest.raises(ConfigError) as error:
        parse_web_config(document, "web.yml")
    assert len(str(error.value)) < 300


def test_relative_certificate_paths_are_relative_to_the_web_config_file(pki, tmp_path, monkeypatch):
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n"
        "  cert_file: server.crt\n  key_file: ./server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients.crt\n"
    )
    for name in ("server.crt", "server.key", "clients.crt"):
        (tmp_path / name).write_bytes((pki["dir"] / name).read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_web_config(str(tmp_path / "web.yml"))
    assert config.tls.cert_file == str(tmp_path / "server.crt")
    assert config.tls.client_ca_file == str(tmp_path / "clients.crt")
    assert config.ssl_context() is not None
    # The same names relative to the working directory are not used.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere" / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    with pytest.raises(ConfigError, match="does not exist"):
        load_web_config("elsewhere/web.yml")


@pytest.mark.parametrize("cost", [4, 5])
def test_unknown_users_cost_the_same_bcrypt_rounds_as_known_ones(cost, monkeypatch):
    from pylontech_exporter.webconfig import BasicAuth

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(cost))
    checked = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda pw, h: checked.append(h) or real(pw, h))
    auth = BasicAuth({"prometheus": hashed})
    header = "Basic " + base64.b64encode(b"nobody:pw").decode()
    assert auth.check(header) is None
    assert auth.check("Basic " + base64.b64encode(b"prometheus:pw").decode()) == "prometheus"
    assert [h[4:6] for h in checked] == [hashed[4:6]] * 2


def _basic(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


def test_hashes_of_different_costs_are_refused(pki, tmp_path):
    low = bcrypt.hashpw(b"a", bcrypt.gensalt(4)).decode()
    high = bcrypt.hashpw(b"b", bcrypt.gensalt(5)).decode()
    with pytest.raises(ConfigError, match="same bcrypt cost \\(found 04, 05\\)"):
        web(pki, tmp_path, f"basic_auth_users:\n  a: '{low}'\n  b: '{high}'\n")


def test_odd_authorization_headers_are_refused_not_fatal():
    from pylontech_exporter.webconfig import BasicAuth

    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))})
    for header in (
        "Basic \xe9\xe9\xe9",  # a non-ASCII byte, as http.server hands it (latin-1)
        "Basic " + base64.b64encode("prometheus:p\xe9".encode("latin-1")).decode(),
        _basic(b"prometheus", b"pw\x00"),
        "Basic",
        "",
    ):
        assert auth.check(header) is None


def test_passwords_over_72_bytes_are_refused_whatever_bcrypt_does_with_them():
    """bcrypt reads 72 bytes: a hash of the first 72 would accept any longer password
    starting with them (bcrypt 4), or raise (bcrypt 5). Refused either way."""
    from pylontech_exporter.webconfig import BasicAuth

    password = b"p" * 72
    auth = BasicAuth({"prometheus": bcrypt.hashpw(password, bcrypt.gensalt(4))})
    assert auth.check(_basic(b"prometheus", password)) == "prometheus"
    assert auth.check(_basic(b"prometheus", password + b"tail")) is None


def test_a_guessing_client_is_refused_without_bcrypt_and_others_are_not():
    from pylontech_exporter.webconfig import BasicAuth

    now = [0.0]
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))}, clock=lambda: now[0])
    for attempt in range(BasicAuth.MAX_FAILURES):
        assert auth.check(_basic(b"prometheus", b"guess%d" % attempt), "10.0.0.9") is None
    checks = auth.bcrypt_checks
    assert auth.check(_basic(b"prometheus", b"pw"), "10.0.0.9") is None  # even right: later
    assert auth.bcrypt_checks == checks
    assert auth.check(_basic(b"prometheus", b"pw"), "10.0.0.2") == "prometheus"
    now[0] += BasicAuth.FAILURE_WINDOW
    assert auth.check(_basic(b"prometheus", b"pw"), "10.0.0.9") == "prometheus"


def test_a_burst_of_concurrent_guesses_gets_max_failures_bcrypt_checks(monkeypatch):
    """Each guess counts as a failure before its bcrypt check, so 48 guesses at once from
    one client run MAX_FAILURES checks, not 48. The first check is held until every guess
    without a slot has been refused: if the limit were looked at before bcrypt and the
    failure recorded after it, all 48 would be past the limit by then."""
    from pylontech_exporter.webconfig import BasicAuth

    guesses = 48
    now = [0.0]
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))}, clock=lambda: now[0])
    refused_at_once = threading.Semaphore(0)
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        if not checked:  # the first check: wait for the guesses that get no slot
            for _ in range(guesses - BasicAuth.MAX_FAILURES):
                if not refused_at_once.acquire(timeout=10):
                    break  # the old order: nobody is refused, all wait for bcrypt
        checked.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    start = threading.Barrier(guesses)
    results: list[str | None] = []

    def guess(number: int) -> None:
        start.wait()
        result = auth.check(_basic(b"prometheus", b"guess%d" % number), "10.0.0.9")
        results.append(result)
        refused_at_once.release()

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [None] * guesses
    assert len(checked) == BasicAuth.MAX_FAILURES
    assert auth.check(_basic(b"prometheus", b"pw"), "10.0.0.9") is None  # still guessing
    now[0] += BasicAuth.FAILURE_WINDOW
    assert auth.check(_basic(b"prometheus", b"pw"), "10.0.0.9") == "prometheus"
    assert len(checked) == BasicAuth.MAX_FAILURES + 1


def test_a_success_gives_its_failure_slot_back():
    """One slot short of the limit, right passwords still get in one after the other: each
    success frees the slot it took for its bcrypt check."""
    from pylontech_exporter.webconfig import BasicAuth

    users = {name: bcrypt.hashpw(b"pw-" + name.encode(), bcrypt.gensalt(4)) for name in "abc"}
    auth = BasicAuth(users, clock=lambda: 0.0)
    for attempt in range(BasicAuth.MAX_FAILURES - 1):
        assert auth.check(_basic(b"a", b"guess%d" % attempt), "10.0.0.9") is None
    for name in (b"a", b"b", b"c"):
        assert auth.check(_basic(name, b"pw-" + name), "10.0.0.9") == name.decode()
    assert auth.check(_basic(b"a", b"last guess"), "10.0.0.9") is None
    checks = auth.bcrypt_checks
    assert auth.check(_basic(b"b", b"another"), "10.0.0.9") is None
    assert auth.bcrypt_checks == checks  # the limit: refused without bcrypt


def test_a_second_basic_auth_users_is_refused_with_both_lines(tmp_path):
    """A second ``basic_auth_users: {}`` must not silently replace the first (turning basic
    auth off while the file looks protected): the file is refused, saying both lines."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\nbasic_auth_users: {{}}\n")
    with pytest.raises(ConfigError) as error:
        load_web_config(str(path))
    assert str(error.value) == (
        f"{path}: not valid YAML at line 3: key 'basic_auth_users' given twice (first at line 1)"
    )
