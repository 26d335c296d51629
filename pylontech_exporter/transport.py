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
Deadline`: connecting to a gateway, waiting for the line to go quiet, reading.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import re
import threading
import time
from collections import deque
from typing import Protocol

import serial

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
#: While a deadline may move, reads wait in slices of at most this long.
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
        self._serial: serial.Serial | None = None
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
        local = "://" not in self.port
        bound = CONNECT_TIMEOUT if deadline is None else min(CONNECT_TIMEOUT, deadline.remaining())
        if bound <= 0:
            raise DeadlinePassed(f"no time left to open {self.port}")
        try:
            port = serial.serial_for_url(
                self.port,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=0,
                do_not_open=True,
            )
            if not self.port.startswith("rfc2217://"):  # pyserial's RFC 2217 has none
                port.write_timeout = WRITE_TIMEOUT
            if local:
                port.exclusive = True  # two readers on one bus garble each other
            if self.port.startswith("socket://"):
                _open_within(port, bound)
            else:  # a device opens at once; pyserial's RFC 2217 connect waits up to 5 s
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
            self._serial.reset_input_buffer()
            self._splitter.clear()
            self._pending.clear()
            self._serial.write(request)
            self._serial.flush()
        except _IO_ERRORS as error:
            self.close()
            raise TransportError(f"write to {self.port} failed: {_describe(error)}") from None
        self._last_activity = time.monotonic()

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
            wait = end - now if deadline is None else min(end - now, DEADLINE_SLICE)
            try:
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


#: pyserial's socket:// connect waits ``protocol_socket.POLL_TIMEOUT`` seconds, a module
#: global read when it connects: set per connect, one connect at a time.
_CONNECT_LOCK = threading.Lock()


def _open_within(port: serial.Serial, seconds: float) -> None:
    """Open a socket:// port, the TCP connect bounded by ``seconds``."""
    from serial.urlhandler import protocol_socket

    with _CONNECT_LOCK:
        default = protocol_socket.POLL_TIMEOUT
        protocol_socket.POLL_TIMEOUT = seconds
        try:
            port.open()
        finally:
            protocol_socket.POLL_TIMEOUT = default


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
