"""``python -m pylontech_exporter.healthcheck``: exit 0 when the exporter on this host
answers ``/-/healthy`` (a container's HEALTHCHECK). Never touches the bus.

Where it listens is read as the exporter read it: from the exporter's command line when
it is PID 1 (the container's entrypoint, ``docker run IMAGE --web.listen-address=:9100``),
through the exporter's own flag parser, so ``PYLONTECH_EXPORTER_WEB_LISTEN_ADDRESS`` and
the default ``:10460`` apply the same way. TLS is tried when plain HTTP is refused (the
certificate is not checked: it is this host's own exporter). ``/-/healthy`` needs no basic
auth. When the exporter requires client certificates, its TLS refusal for want of one is
the answer (this check has no client certificate to give).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from .server import parse_listen_address

#: The command line of the container's first process.
PID1_CMDLINE = "/proc/1/cmdline"
#: What an exporter that requires a client certificate answers this check with.
_CERTIFICATE_REFUSED = ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE")


def exporter_flags(cmdline_path: str = PID1_CMDLINE) -> list[str] | None:
    """The flags of the exporter whose command line is in ``cmdline_path`` (NUL-separated,
    as in /proc), or None when it cannot be read or is not the exporter's. The program
    may come after an interpreter (a script's shebang) or an init (``docker run --init``)."""
    try:
        with open(cmdline_path, "rb") as stream:
            raw = stream.read()
    except OSError:
        return None
    words = [word.decode(errors="surrogateescape") for word in raw.split(b"\0")]
    if words and not words[-1]:
        words.pop()
    for index, word in enumerate(words):
        if os.path.basename(word) == "pylontech-exporter":
            return words[index + 1 :]
    return None


def listen_address(
    cmdline_path: str = PID1_CMDLINE, environ: Mapping[str, str] | None = None
) -> str:
    """The exporter's ``--web.listen-address``: from its command line when readable, else
    the environment, else the default."""
    from .cli import env_name, parse_args

    environ = dict(os.environ if environ is None else environ)
    flags = exporter_flags(cmdline_path)
    with contextlib.redirect_stderr(io.StringIO()):  # argparse's own error lines
        for argv in ([] if flags is None else [flags]) + [[]]:
            try:
                return str(parse_args(argv, environ).web_listen_address)
            except SystemExit:  # flags or variables it could not have started with
                pass
        # Another variable is bad: this one alone (the parser takes any address).
        name = env_name("--web.listen-address")
        return str(
            parse_args([], {name: environ[name]} if name in environ else {}).web_listen_address
        )


def healthy(address: str, timeout: float = 3.0) -> bool:
    """Whether the exporter at ``address`` answers ``/-/healthy``. At most three
    connections of ``timeout`` each: within the image's HEALTHCHECK --timeout of 10 s."""
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
        except (OSError, ValueError) as error:
            if scheme == "https" and _tls_error(error):
                return _wants_client_certificate(host.strip("[]"), port, unverified, timeout)
    return False


def _tls_error(error: BaseException) -> bool:
    """Whether ``error`` (urllib wraps handshake errors in URLError) came from TLS."""
    return isinstance(error, ssl.SSLError) or isinstance(
        getattr(error, "reason", None), ssl.SSLError
    )


def _wants_client_certificate(
    host: str, port: int, context: ssl.SSLContext, timeout: float
) -> bool:
    """Whether the TLS server at host:port refuses a client for want of a certificate: the
    answer of an exporter that requires them (``client_auth_type``) to a client without
    one. Nothing is sent after the handshake, so the refusal is read, not lost to a reset."""
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.recv(1)
    except ssl.SSLError as error:
        return error.reason in _CERTIFICATE_REFUSED
    except OSError:
        pass
    return False


def main(cmdline_path: str = PID1_CMDLINE, environ: Mapping[str, str] | None = None) -> int:
    try:
        return 0 if healthy(listen_address(cmdline_path, environ)) else 1
    except ValueError as error:  # an address the exporter could not have listened on
        print(f"pylontech_exporter.healthcheck: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
