"""The serial line: open a pyserial URL, send a request, read back one frame.

Knows nothing about what frames mean: the framer handed in cuts the byte stream into
units (RS485 frames, console answers). Any pyserial URL works: a device path
(``/dev/ttyUSB0``, ``/dev/serial/by-id/...``), ``socket://host:port`` for RS485-to-Ethernet
gateways, ``rfc2217://host:port``. After an I/O failure (adapter unplugged, gateway reset)
the port is closed and the next request reopens it, so callers see one failed request,
not a dead object; ``generation`` counts the openings, so that a caller can tell it may be
talking to another device now. A line opened ``listen_only`` refuses every write: it is
for buses where another device is the master.

Every blocking step is bounded by the caller's :class:`~pylontech_exporter.deadline.
Deadline`, also when it moves or is cut while the step waits: connecting to a gateway,
waiting for the line to go quiet, writing, reading. Lines share no lock: a gateway that
never answers a connect costs only its own line. Not bounded by the deadline: resolving a
gateway's host name (give an IP address), an ``rfc2217://`` TCP connect (up to 5 s, fixed
inside pyserial's ``open()``; its negotiation waits are bounded), an ``rfc2217://`` write
(its socket's 5 s), and pyserial's own short sleeps (closing a TCP port: 0.3 s).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import select
import socket
import time
from collections import deque
from typing import Any, Protocol
from urllib.parse import urlsplit

import serial
from serial import rfc2217
from serial.urlhandler import protocol_socket

from .deadline import Deadline
from .errors import DeadlinePassed, ListenOnlyError, ResponseTimeout, TransportError

try:
    import termios
except ImportError:  # pragma: no cover - not POSIX
    termios = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: What a port that went away raises. termios.error (tcflush on a pty or USB adapter that
#: is gone: EIO) is not an OSError.
_IO_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError) + (
    (termios.error,) if termios is not None else ()
)

DEFAULT_BAUDRATE = 115200
#: A write that cannot go out in this time means a wedged adapter.
WRITE_TIMEOUT = 2.0
#: A TCP connect to a gateway takes at most this long (and never past the deadline).
CONNECT_TIMEOUT = 5.0
#: Reads wait in slices of at most this long: a deadline may move, and the timeout stays
#: the same from one read to the next (setting it reconfigures the port).
DEADLINE_SLICE = 0.05
#: The line counts as quiet after this many byte times without a byte (and 20 ms at least).
QUIET_BYTES = 30


class Framer(Protocol):
    """Cuts received bytes into units (frames, answers); see ``rs485.stream.FrameSplitter``."""

    #: The longest unit it hands out, in bytes.
    max_frame_bytes: int

    def feed(self, data: bytes) -> list[bytes]: ...
    def clear(self) -> None: ...
    @property
    def buffered(self) -> int:
        """Bytes held of a unit not complete yet (0: the last bytes were not part of one)."""
        ...


class SerialTransport:
    """One serial line. Not thread-safe: the client serialises access."""

    def __init__(
        self,
        port: str,
        baudrate: int = DEFAULT_BAUDRATE,
        *,
        framer: Framer,
        command_gap: float = 0.0,
        listen_only: bool = False,
    ) -> None:
        if baudrate <= 0:
            raise ValueError(f"baud rate must be positive, not {baudrate}")
        if command_gap < 0:
            raise ValueError(f"command gap must not be negative, not {command_gap}")
        self.port = port
        self.baudrate = baudrate
        #: Minimum pause between the end of one exchange and the next request.
        self.command_gap = command_gap
        #: Never write: another device is the bus master.
        self.listen_only = listen_only
        self._serial: serial.Serial | _SocketPort | _Rfc2217Port | None = None
        self._splitter = framer
        #: Frames already received but not yet handed out (two frames in one read).
        self._pending: deque[bytes] = deque()
        self._last_activity = 0.0
        #: How often the port was opened: a change means it may be another device now.
        self.generation = 0
        #: The last read ended without its frame: the rest may still be on its way.
        self._abandoned = False

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self, deadline: Deadline | None = None) -> None:
        if self._serial is not None:
            return
        scheme = urlsplit(self.port).scheme if "://" in self.port else ""
        connect = _connect_deadline(deadline)
        if connect.passed():
            raise DeadlinePassed(f"no time left to open {self.port}")
        try:
            port: serial.Serial | _SocketPort | _Rfc2217Port
            if scheme in _BOUNDED_PORTS:
                port = _BOUNDED_PORTS[scheme](**_SETTINGS, baudrate=self.baudrate)
                port.port = self.port
            else:
                port = serial.serial_for_url(
                    self.port, **_SETTINGS, baudrate=self.baudrate, do_not_open=True
                )
            if not scheme:
                port.exclusive = True  # two readers on one bus garble each other
            if isinstance(port, (_SocketPort, _Rfc2217Port)):
                port.open_by(connect)
            else:  # a device opens at once
                port.open()
        except (serial.SerialException, OSError, ValueError, NotImplementedError) as error:
            if deadline is not None and deadline.passed():
                raise DeadlinePassed(f"opening {self.port} took the time left") from None
            raise TransportError(f"cannot open {self.port}: {_describe(error)}") from None
        self._serial = port
        self.generation += 1
        self._abandoned = False
        log.debug("opened %s at %d baud", self.port, self.baudrate)

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(*_IO_ERRORS):
                port.close()

    @property
    def quiet_gap(self) -> float:
        return max(0.02, QUIET_BYTES * 10 / self.baudrate)

    def send(self, request: bytes, deadline: Deadline | None = None) -> None:
        """Let the rest of an abandoned answer drain (a request on a busy line collides),
        honour the command gap, discard stale input, write ``request``."""
        if self.listen_only:
            raise ListenOnlyError(f"{self.port} is open listen-only; nothing may be sent")
        self.open(deadline)
        assert self._serial is not None
        try:
            if self._abandoned:
                self._drain(deadline)
            pause = self._last_activity + self.command_gap - time.monotonic()
            if pause > 0:
                if deadline is not None and pause > deadline.remaining():
                    raise DeadlinePassed("the command gap outlasts the time left")
                time.sleep(pause)
            self._bound_exchange(deadline)
            self._serial.reset_input_buffer()
            self._splitter.clear()
            self._pending.clear()
            self._serial.write(request)
            self._serial.flush()
        except _IO_ERRORS as error:
            self.close()
            if deadline is not None and deadline.passed():
                raise DeadlinePassed(f"the write to {self.port} took the time left") from None
            raise TransportError(f"write to {self.port} failed: {_describe(error)}") from None
        self._last_activity = time.monotonic()

    def _bound_exchange(self, deadline: Deadline | None) -> None:
        """A write ends by the deadline, and after WRITE_TIMEOUT at the latest. pyserial's
        RFC 2217 has no write timeout (its socket's 5 s bound a write); its waits for the
        gateway's acknowledgements in this exchange are bounded instead."""
        assert self._serial is not None
        left = math.inf if deadline is None else deadline.remaining()
        if left <= 0:
            raise DeadlinePassed(f"no time left to write to {self.port}")
        if isinstance(self._serial, _Rfc2217Port):
            self._serial.bound_waits(left)
        elif self._serial.write_timeout != min(WRITE_TIMEOUT, left):
            self._serial.write_timeout = min(WRITE_TIMEOUT, left)

    def _drain(self, deadline: Deadline | None) -> None:
        """Read and drop bytes until the line has been quiet for :attr:`quiet_gap`, for as
        long as the longest frame takes at most: a line that never goes quiet is another
        master's, and waiting would not help."""
        assert self._serial is not None
        give_up = time.monotonic() + self.quiet_gap + self.longest_frame_seconds
        quiet_until = time.monotonic() + self.quiet_gap
        while (now := time.monotonic()) < min(quiet_until, give_up):
            if deadline is not None and deadline.passed():
                raise DeadlinePassed("the line did not go quiet in time")
            self._serial.timeout = quiet_until - now
            if self._serial.read(max(1, self._serial.in_waiting)):
                quiet_until = time.monotonic() + self.quiet_gap
        self._abandoned = False

    @property
    def longest_frame_seconds(self) -> float:
        """Time the longest possible frame takes on the wire at this baud rate."""
        return self._splitter.max_frame_bytes * 10 / self.baudrate

    def read_frame(
        self, timeout: float, limit: float = math.inf, deadline: Deadline | None = None
    ) -> bytes:
        """The next candidate frame (``~`` .. CR).

        Raises :class:`ResponseTimeout` after ``timeout`` seconds of silence, or at
        ``limit`` (a :func:`time.monotonic` value) at the latest, and
        :class:`DeadlinePassed` when ``deadline`` comes first. The timeout bounds silence,
        not the whole answer: a 16-module answer takes two seconds to arrive at 9600 baud,
        and it is not late while its bytes keep coming. Only bytes that can belong to a
        frame count: junk between frames does not keep the wait open.
        """
        self.open(deadline)
        assert self._serial is not None
        quiet_until = time.monotonic() + timeout
        while not self._pending:
            now = time.monotonic()
            end = min(quiet_until, limit)
            cut = deadline is not None and deadline.when <= end
            if cut:
                end = deadline.when  # type: ignore[union-attr]
            if now >= end:
                self._abandoned = True
                if cut:
                    raise DeadlinePassed(f"the deadline came before the answer from {self.port}")
                raise ResponseTimeout(f"no complete response from {self.port} in time")
            wait = min(end - now, DEADLINE_SLICE)
            try:
                if self._serial.timeout != wait:  # a tcsetattr each time; rfc2217 renegotiates
                    self._serial.timeout = wait
                data = self._serial.read(1)
                if data and self._serial.in_waiting:
                    data += self._serial.read(self._serial.in_waiting)
            except _IO_ERRORS as error:
                self.close()
                raise TransportError(f"read from {self.port} failed: {_describe(error)}") from None
            if data:
                self._last_activity = time.monotonic()
                frames = self._splitter.feed(data)
                if frames or self._splitter.buffered:  # bytes of a frame, not junk
                    quiet_until = self._last_activity + timeout
                self._pending.extend(frames)
        return self._pending.popleft()


#: How every line is opened (RS485 and the console alike: 8N1); reads set their own timeout.
_SETTINGS: dict[str, Any] = {
    "bytesize": serial.EIGHTBITS,
    "parity": serial.PARITY_NONE,
    "stopbits": serial.STOPBITS_ONE,
    "timeout": 0,
}


def _connect_deadline(deadline: Deadline | None) -> Deadline:
    """The caller's deadline, or CONNECT_TIMEOUT from now if that comes first; it moves
    (and is cut) with the caller's."""
    give_up = time.monotonic() + CONNECT_TIMEOUT
    if deadline is None:
        return Deadline(give_up)
    return _Sooner(deadline, give_up)


class _Sooner(Deadline):
    """The earlier of a deadline (which may move) and a fixed time."""

    def __init__(self, deadline: Deadline, latest: float) -> None:
        super().__init__(latest)
        self._deadline = deadline

    @property
    def when(self) -> float:
        return min(self._deadline.when, super().when)


def tcp_connect(host: str, port: int, deadline: Deadline) -> socket.socket:
    """A TCP connection to ``host``:``port`` (each address it resolves to in turn), given
    up when ``deadline`` passes, also when it is cut or moved while connecting.

    Resolving the host name is not bounded (the system resolver has no deadline); a
    gateway's address given as an IP address resolves at once.
    """
    failure: OSError = OSError(f"{host} resolves to no address")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            while code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                wait = min(deadline.remaining(), DEADLINE_SLICE)
                if wait <= 0:
                    raise TimeoutError(errno.ETIMEDOUT, "connect timed out")
                if select.select([], [sock], [], wait)[1]:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            return sock
        except OSError as error:
            sock.close()
            failure = error
            if deadline.passed():
                break
        except BaseException:
            sock.close()
            raise
    raise failure


class _SocketPort(protocol_socket.Serial):
    """pyserial's ``socket://`` port with a TCP connect that ends at a deadline: pyserial's
    own waits a module-wide ``POLL_TIMEOUT`` (5 s) that no caller can cut short. All but
    the connect is pyserial's."""

    _socket: socket.socket | None

    def open(self) -> None:
        self.open_by(Deadline(time.monotonic() + CONNECT_TIMEOUT))

    def open_by(self, deadline: Deadline) -> None:
        if self.is_open:
            raise serial.SerialException("Port is already open.")
        self.logger = None
        host, port = self.from_url(str(self.portstr))  # applies ?logging= too
        try:
            self._socket = tcp_connect(host, port, deadline)
        except OSError as error:
            self._socket = None
            raise serial.SerialException(f"Could not open port {self.portstr}: {error}") from None
        self.is_open = True
        self.reset_input_buffer()
        self.reset_output_buffer()


class _Rfc2217Port(rfc2217.Serial):
    """pyserial's ``rfc2217://`` port whose waits for the gateway's acknowledgements
    (Telnet options, port settings, purges: 3 s each, or the URL's ``?timeout=``) end by
    the deadline given. Its TCP connect waits up to 5 s whatever the deadline: pyserial
    fixes that inside ``open()``."""

    _network_timeout: float
    #: The waits as the URL sets them, and the bound on them.
    _url_timeout = 3.0
    _bound = math.inf

    def bound_waits(self, seconds: float) -> None:
        """No wait for an acknowledgement lasts longer than ``seconds`` from now on."""
        self._bound = seconds
        if self.is_open:
            self._network_timeout = min(self._url_timeout, seconds)

    def open_by(self, deadline: Deadline) -> None:
        self.bound_waits(deadline.remaining())
        self.open()

    def from_url(self, url: str) -> tuple[str, int]:
        address = super().from_url(url)  # open() calls it first: ?timeout= is read here
        self._url_timeout = self._network_timeout
        self._network_timeout = min(self._url_timeout, self._bound)
        return address


#: The URL schemes opened by a port class of this module rather than by pyserial's own.
_BOUNDED_PORTS: dict[str, type[_SocketPort | _Rfc2217Port]] = {
    "socket": _SocketPort,
    "rfc2217": _Rfc2217Port,
}


_ERRNO_HINTS = {
    errno.ENOENT: "no such device (is the adapter plugged in? check the path)",
    errno.EACCES: "permission denied (add the user to the 'dialout' group)",
    errno.EAGAIN: "the port is in use by another program",
    errno.EBUSY: "the port is in use by another program",
    errno.ECONNREFUSED: "connection refused (is the gateway's TCP port right?)",
    errno.EHOSTUNREACH: "host unreachable (check the gateway's address)",
}


def _describe(error: BaseException) -> str:
    """pyserial's message with a hint at the usual cause."""
    text = str(error)
    found = re.search(r"\[Errno (\d+)\]", text)
    code = int(found.group(1)) if found else getattr(error, "errno", None)
    hint = _ERRNO_HINTS.get(code) if isinstance(code, int) else None
    if "exclusively lock" in text:
        hint = _ERRNO_HINTS[errno.EBUSY]
    return f"{hint} [{text}]" if hint else text
