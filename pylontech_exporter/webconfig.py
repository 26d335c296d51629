"""``--web.config.file``: TLS, client certificates, basic auth and response headers, in the
file format of the Prometheus exporter-toolkit (shared by node_exporter and most others)::

    tls_server_config:
      cert_file: server.crt          # or cert: <PEM text>
      key_file: server.key           # or key: <PEM text>
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients.crt    # or client_ca: <PEM text>
      client_allowed_sans: [prometheus.example.net]
      min_version: TLS12             # TLS12 TLS13 (TLS 1.0 and 1.1 never negotiate)
      max_version: TLS13
      prefer_server_cipher_suites: true
    http_server_config:
      http2: true                    # accepted; this server speaks HTTP/1.1
      headers:
        X-Content-Type-Options: nosniff
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Differences from the toolkit, each refused with a message rather than silently ignored:
``client_auth_type`` ``RequestClientCert`` and ``RequireAnyClientCert`` (they accept
certificates nobody verified; Python's ssl module cannot do that, and the toolkit calls
them insecure), ``cipher_suites`` and ``curve_preferences`` (Go names), ``rate_limit``.
Relative ``cert_file``, ``key_file`` and ``client_ca_file`` names are relative to the
directory of the web config file, as in the toolkit. The file is read once at start;
restart the exporter to apply changes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import check_bool, shown
from .errors import ConfigError
from .yamlfile import read_yaml

TLS_VERSIONS = {
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
#: client_auth_type -> ssl verify mode (None: refused, see the module docstring).
CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode | None] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": None,
    "RequireAnyClientCert": None,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Response headers the toolkit allows, with the values it accepts (None: any).
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_HTTP_KEYS = ("http2", "headers")
_UNSUPPORTED = {
    "rate_limit": "rate_limit is not supported by this exporter; put a reverse proxy in front",
    "cipher_suites": "tls_server_config.cipher_suites is not supported (Go cipher names); "
    "leave it out to use OpenSSL's secure defaults",
    "curve_preferences": "tls_server_config.curve_preferences is not supported; "
    "leave it out to use OpenSSL's defaults",
}
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


@dataclass
class TLSSettings:
    cert_file: str | None = None
    key_file: str | None = None
    cert: str | None = None
    key: str | None = None
    client_ca_file: str | None = None
    client_ca: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    prefer_server_cipher_suites: bool = True


@dataclass
class WebConfig:
    """A checked web configuration. The default (no file) is plain HTTP, no auth."""

    tls: TLSSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side SSLContext, or None for plain HTTP. Raises ConfigError when a
        certificate or key cannot be loaded."""
        if self.tls is None:
            return None
        tls, where = self.tls, f"{self.source}: tls_server_config"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[tls.min_version]
        context.maximum_version = TLS_VERSIONS[tls.max_version]
        if tls.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        try:
            with (
                _pem_file(tls.cert_file, tls.cert) as cert,
                _pem_file(tls.key_file, tls.key) as key,
            ):
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"{where}: cannot load the certificate and key: {_reason(error)}"
            ) from None
        mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
        assert mode is not None
        if tls.client_ca_file or tls.client_ca:
            try:
                context.load_verify_locations(cafile=tls.client_ca_file, cadata=tls.client_ca)
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(f"{where}: cannot load the client CA: {_reason(error)}") from None
        context.verify_mode = mode
        return context

    @property
    def auth(self) -> BasicAuth | None:
        return BasicAuth(self.users) if self.users else None


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    if isinstance(error, OSError) and error.strerror:
        name = f" {error.filename}" if error.filename else ""
        return f"{error.strerror}{name}"
    return str(error)


@contextlib.contextmanager
def _pem_file(path: str | None, text: str | None) -> Iterator[str]:
    """``path``, or ``text`` written to a private temporary file (load_cert_chain wants
    files) that is removed again."""
    if path is not None:
        yield path
        return
    assert text is not None
    fd, name = tempfile.mkstemp(prefix="pylontech-exporter-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        yield name
    finally:
        os.unlink(name)


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    - A successful check is remembered (as a SHA-256 of user, password and hash, never
      the password), so bcrypt's cost is paid once per credential, not per scrape.
    - An unknown user costs a bcrypt check too, at the cost of the configured hashes
      (which must all be the same), so timing does not tell which users exist.
    - One bcrypt check at a time, and a client with ``MAX_FAILURES`` failed attempts in
      ``FAILURE_WINDOW`` seconds is refused without one: guessing uses one core at most,
      and remembered credentials (Prometheus') never wait behind it. An attempt counts
      as failed from before its bcrypt check until it succeeds, so a burst of concurrent
      guesses from one client gets ``MAX_FAILURES`` checks, not one per guess.
    - Passwords longer than 72 bytes are refused: bcrypt only uses the first 72 (bcrypt
      4 cuts them silently, bcrypt 5 raises), so a longer one would match more than it
      says.
    """

    #: A hash of a random password, checked for unknown users (its cost is replaced).
    _DUMMY = b"$2b$10$eXldDHCTktn4O2wb6PiFleV.UZzgH4obML/rO1DPRu8MInHJ3G59a"
    #: Remembered successes (legitimate credentials only, so this stays tiny).
    MAX_CACHED = 256
    #: bcrypt reads this many bytes of a password and no more.
    MAX_PASSWORD_BYTES = 72
    MAX_FAILURES = 10
    FAILURE_WINDOW = 60.0

    def __init__(
        self, users: dict[str, bytes], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.users = dict(users)
        # The dummy gets the cost configured ("$2y$12$..." -> 12): checking it takes as
        # long as checking a real user's password.
        costs = {int(h[4:6]) for h in self.users.values() if h[4:6].isdigit()}
        self._dummy = b"$2b$%02d$" % max(costs, default=10) + self._DUMMY[7:]
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()
        self._bcrypt = threading.Lock()
        self._clock = clock
        #: Per client address: times of its recent failed attempts.
        self._failures: dict[str, list[float]] = {}
        #: bcrypt verifications done (for tests: proves the cache works).
        self.bcrypt_checks = 0

    def check(self, header: str | None, client: str = "") -> str | None:
        """The user name when ``header`` carries valid credentials, else None."""
        if not header:
            return None
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeError, ValueError):  # also non-ASCII in the header
            return None
        user, sep, password = decoded.partition(":")
        if not sep or len(password.encode()) > self.MAX_PASSWORD_BYTES or "\0" in password:
            return None
        hashed = self.users.get(user)
        token = hashlib.sha256(
            b"\0".join((user.encode(), password.encode(), hashed or b""))
        ).digest()
        with self._lock:
            if hashed is not None and token in self._ok:
                return user
            slot = self._take_failure_slot(client)
        if slot is None:
            return None  # guessing: refused without spending bcrypt on it
        import bcrypt

        with self._bcrypt:
            self.bcrypt_checks += 1
            try:
                good = bcrypt.checkpw(password.encode(), hashed or self._dummy)
            except ValueError:  # a malformed hash; rejected at load, but be safe
                good = False
        with self._lock:
            if not good or hashed is None:
                return None  # the slot stays taken: it is this failure
            self._give_back(client, slot)
            if len(self._ok) >= self.MAX_CACHED:
                self._ok.clear()
            self._ok.add(token)
        return user

    def _take_failure_slot(self, client: str) -> float | None:
        """Count an attempt as failed before bcrypt runs (call with ``_lock`` held), so
        concurrent guesses from one client stop at ``MAX_FAILURES`` too; None when the
        client has no slot left. The slot is the attempt's time, given back on success."""
        now = self._clock()
        recent = [t for t in self._failures.get(client, []) if now - t < self.FAILURE_WINDOW]
        if len(recent) >= self.MAX_FAILURES:
            self._failures[client] = recent
            return None
        recent.append(now)
        self._failures[client] = recent
        if len(self._failures) > self.MAX_CACHED:  # many clients: forget the oldest
            self._failures.pop(next(iter(self._failures)))
        return now

    def _give_back(self, client: str, slot: float) -> None:
        """Undo ``_take_failure_slot`` for an attempt that succeeded (``_lock`` held)."""
        taken = self._failures.get(client, [])
        if slot in taken:  # it may have been forgotten meanwhile (window, many clients)
            taken.remove(slot)
        if not taken:
            self._failures.pop(client, None)


# --- loading -------------------------------------------------------------------------------


def load_web_config(path: str) -> WebConfig:
    """Read and check a web config file; ConfigError (one line) when it is wrong."""
    document = read_yaml(path, "web config file")
    # Relative certificate and key paths are relative to this file, as in the toolkit.
    config = parse_web_config(document, path, base_dir=os.path.dirname(os.path.abspath(path)))
    config.ssl_context()  # certificates and keys must load now, not at the first scrape
    return config


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping, got {shown(value)}")
    return value


def _unknown(mapping: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {shown(key)}; allowed keys are {', '.join(allowed)}"
            )


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a non-empty string, got {shown(value)}")
    return value


def _file(value: Any, where: str, base_dir: str = "") -> str:
    path = os.path.join(base_dir, _string(value, where))
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: file {path} does not exist")
    return path


def parse_web_config(document: Any, source: str, *, base_dir: str = "") -> WebConfig:
    """Check a parsed web config document (see the module docstring). Relative file
    names are taken relative to ``base_dir`` (the web config file's directory)."""
    if document is None:
        return WebConfig(source=source)
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping (tls_server_config, basic_auth_users...)")
    if "rate_limit" in document:
        raise ConfigError(f"{source}: {_UNSUPPORTED['rate_limit']}")
    _unknown(document, _TOP_KEYS, source)
    config = WebConfig(source=source)

    tls_doc = document.get("tls_server_config")
    if tls_doc is not None:
        config.tls = _parse_tls(_mapping(tls_doc, f"{source}: tls_server_config"), source, base_dir)

    http_doc = _mapping(document.get("http_server_config"), f"{source}: http_server_config")
    _unknown(http_doc, _HTTP_KEYS, f"{source}: http_server_config")
    if "http2" in http_doc:
        check_bool(http_doc["http2"], f"{source}: http_server_config.http2")
    headers = _mapping(http_doc.get("headers"), f"{source}: http_server_config.headers")
    for name, value in headers.items():
        where = f"{source}: http_server_config.headers.{name}"
        if name not in ALLOWED_HEADERS:
            raise ConfigError(
                f"{where}: header not allowed; allowed are {', '.join(ALLOWED_HEADERS)}"
            )
        if value in (None, ""):
            continue
        text = _string(value, where)
        if "\r" in text or "\n" in text:
            raise ConfigError(f"{where}: must be one line")
        try:
            text.encode("latin-1")  # what http.server sends header values as
        except UnicodeEncodeError as error:
            bad = text[error.start]
            raise ConfigError(
                f"{where}: character {bad!r} (U+{ord(bad):04X}) is not latin-1 and cannot be "
                "sent in an HTTP header; use plain ASCII (e.g. ' instead of typographic quotes)"
            ) from None
        allowed = ALLOWED_HEADERS[name]
        if allowed is not None and text.lower() not in allowed:
            raise ConfigError(f"{where}: must be one of {', '.join(allowed)}, got {shown(text)}")
        config.headers[name] = text

    users = _mapping(document.get("basic_auth_users"), f"{source}: basic_auth_users")
    for user, hashed in users.items():
        where = f"{source}: basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{where}: user names must be non-empty strings without ':'")
        if not isinstance(hashed, str) or not hashed.startswith(_BCRYPT_PREFIXES):
            raise ConfigError(
                f"{where}: must be a bcrypt hash ($2y$..., e.g. from "
                "htpasswd -nBC 10 \"\" | tr -d ':\\n'), not a plain password"
            )
        if len(hashed) != 60:
            raise ConfigError(f"{where}: not a complete bcrypt hash (60 characters)")
        config.users[user] = hashed.encode()
    costs = sorted({h[4:6].decode() for h in config.users.values()})
    if len(costs) > 1:
        raise ConfigError(
            f"{source}: basic_auth_users: every hash must have the same bcrypt cost (found "
            f"{', '.join(costs)}): else the time a check takes tells which users exist"
        )
    return config


def _parse_tls(doc: dict[str, Any], source: str, base_dir: str = "") -> TLSSettings:
    where = f"{source}: tls_server_config"
    for key in ("cipher_suites", "curve_preferences"):
        if key in doc:
            raise ConfigError(f"{source}: {_UNSUPPORTED[key]}")
    _unknown(doc, _TLS_KEYS, where)
    tls = TLSSettings()
    for inline, path in (
        ("cert", "cert_file"),
        ("key", "key_file"),
        ("client_ca", "client_ca_file"),
    ):
        if inline in doc and path in doc:
            raise ConfigError(f"{where}: give {inline} or {path}, not both")
        if inline in doc:
            setattr(tls, inline, _string(doc[inline], f"{where}.{inline}"))
        if path in doc:
            setattr(tls, path, _file(doc[path], f"{where}.{path}", base_dir))
    if tls.cert is None and tls.cert_file is None:
        raise ConfigError(f"{where}: cert_file (or cert) is missing")
    if tls.key is None and tls.key_file is None:
        raise ConfigError(f"{where}: key_file (or key) is missing")
    if "client_auth_type" in doc:
        kind = doc["client_auth_type"]
        if kind not in CLIENT_AUTH_TYPES:
            raise ConfigError(
                f"{where}.client_auth_type: must be one of {', '.join(CLIENT_AUTH_TYPES)}, "
                f"got {shown(kind)}"
            )
        if CLIENT_AUTH_TYPES[kind] is None:
            raise ConfigError(
                f"{where}.client_auth_type: {kind} accepts client certificates without "
                "verifying them and is not supported; use RequireAndVerifyClientCert "
                "(or VerifyClientCertIfGiven) with client_ca_file"
            )
        tls.client_auth_type = kind
    verifying = tls.client_auth_type != "NoClientCert"
    if verifying and tls.client_ca is None and tls.client_ca_file is None:
        raise ConfigError(
            f"{where}: client_auth_type {tls.client_auth_type} needs client_ca_file (or client_ca)"
        )
    if "client_allowed_sans" in doc:
        sans = doc["client_allowed_sans"]
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            raise ConfigError(f"{where}.client_allowed_sans: must be a list of strings")
        if tls.client_auth_type != "RequireAndVerifyClientCert" and sans:
            raise ConfigError(
                f"{where}.client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert"
            )
        tls.client_allowed_sans = tuple(sans)
    for key in ("min_version", "max_version"):
        if key in doc:
            if doc[key] in ("TLS10", "TLS11"):
                raise ConfigError(
                    f"{where}.{key}: {doc[key]} is not supported: OpenSSL here never "
                    "negotiates TLS 1.0 or 1.1; use TLS12 or TLS13"
                )
            if doc[key] not in TLS_VERSIONS:
                raise ConfigError(
                    f"{where}.{key}: must be one of {', '.join(TLS_VERSIONS)}, "
                    f"got {shown(doc[key])}"
                )
            setattr(tls, key, doc[key])
    if TLS_VERSIONS[tls.min_version] > TLS_VERSIONS[tls.max_version]:
        raise ConfigError(f"{where}: min_version {tls.min_version} is above max_version")
    if "prefer_server_cipher_suites" in doc:
        tls.prefer_server_cipher_suites = check_bool(
            doc["prefer_server_cipher_suites"], f"{where}.prefer_server_cipher_suites"
        )
    return tls


def allowed_san(certificate: dict[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether a verified peer certificate (``SSLSocket.getpeercert()``) has a subject
    alternative name (DNS, IP, e-mail or URI) equal to one of ``allowed``."""
    if not allowed:
        return True
    if not certificate:
        return False
    names = {value for _kind, value in certificate.get("subjectAltName", ())}
    return any(hmac.compare_digest(n.encode(), a.encode()) for n in names for a in allowed)
