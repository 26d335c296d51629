"""The serial line: open a pyserial URL, send a request, read back one frame.

Knows nothing about what frames mean: the framer handed in cuts the byte stream into
units (RS485 frames, console answers). Any pyserial URL works: a device path
(``/dev/ttyUSB0``, ``/dev/serial/by-id/...``), ``socket://host:port`` for RS485-to-Ethernet
gateways, ``rfc2217://host:port``. After an I/O failure (adapter unplugged, gateway reset)
the port is closed and the next request reopens it, so callers see one failed request,
not a dead object. A line opened ``listen_only`` refuses every write: it is for buses
where another device is the master.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import re
import time
from collections import deque
from typing import Protocol

import serial

from .errors import ListenOnlyError, ResponseTimeout, TransportError

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


class Framer(Protocol):
    """Cuts received bytes into units (frames, answers); see ``rs485.stream.FrameSplitter``."""

    #: The longest unit it hands out, in bytes.
    max_frame_bytes: int

    def feed(self, data: bytes) -> list[bytes]: ...
    def clear(self) -> None: ...


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

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        if self._serial is not None:
            return
        local = "://" not in self.port
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
            port.open()
        except (serial.SerialException, OSError, ValueError, NotImplementedError) as error:
            raise TransportError(f"cannot open {self.port}: {_describe(error)}") from None
        self._serial = port
        log.debug("opened %s at %d baud", self.port, self.baudrate)

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(*_IO_ERRORS):
                port.close()

    def send(self, request: bytes) -> None:
        """Discard stale input, honour the command gap, write ``request``."""
        if self.listen_only:
            raise ListenOnlyError(f"{self.port} is open listen-only; nothing may be sent")
        self.open()
        assert self._serial is not None
        pause = self._last_activity + self.command_gap - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        try:
            self._serial.reset_input_buffer()
            self._splitter.clear()
            self._pending.clear()
            self._serial.write(request)
            self._serial.flush()
        except _IO_ERRORS as error:
            self.close()
            raise TransportError(f"write to {self.port} failed: {_describe(error)}") from None
        self._last_activity = time.monotonic()

    @property
    def longest_frame_seconds(self) -> float:
        """Time the longest possible frame takes on the wire at this baud rate."""
        return self._splitter.max_frame_bytes * 10 / self.baudrate

    def read_frame(self, timeout: float, limit: float = math.inf) -> bytes:
        """The next candidate frame (``~`` .. CR).

        Raises :class:`ResponseTimeout` after ``timeout`` seconds without a byte, or at
        ``limit`` (a :func:`time.monotonic` value) at the latest. The timeout bounds
        silence, not the whole answer: a 16-module answer takes two seconds to arrive at
        9600 baud, and it is not late while its bytes keep coming.
        """
        self.open()
        assert self._serial is not None
        quiet_until = min(time.monotonic() + timeout, limit)
        while not self._pending:
            remaining = quiet_until - time.monotonic()
            if remaining <= 0:
                raise ResponseTimeout(f"no complete response from {self.port} in time")
            try:
                self._serial.timeout = remaining
                data = self._serial.read(1)
                if data and self._serial.in_waiting:
                    data += self._serial.read(self._serial.in_waiting)
            except _IO_ERRORS as error:
                self.close()
                raise TransportError(f"read from {self.port} failed: {_describe(error)}") from None
            if data:
                self._last_activity = time.monotonic()
                quiet_until = min(self._last_activity + timeout, limit)
                self._pending.extend(self._splitter.feed(data))
        return self._pending.popleft()


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
