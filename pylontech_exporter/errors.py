"""One exception hierarchy for everything that can go wrong talking to a battery.

Callers catch :class:`PylontechError` for any protocol trouble, or a subclass to tell a
garbled frame from a battery that said no from a silent bus. Each class carries a short
``reason`` that the exporter uses as the label of its failure counter. This module is a
leaf: it imports nothing of this package, so every layer can raise these.
"""

from __future__ import annotations

#: The return codes (RTN, the CID2 of a response) of the protocol and what they mean.
RETURN_CODE_NAMES: dict[int, str] = {
    0x00: "normal",
    0x01: "VER error",
    0x02: "CHKSUM error",
    0x03: "LCHKSUM error",
    0x04: "CID2 invalid",
    0x05: "command format error",
    0x06: "invalid data",
    0x90: "ADR error",
    0x91: "internal communication error",
}


class PylontechError(Exception):
    """Base class of every error raised by this package's protocol code."""

    reason = "error"


class FrameError(PylontechError):
    """Bytes that are not a well-formed frame: wrong SOI/EOI, not hex, bad length."""

    reason = "frame"


class ChecksumError(FrameError):
    """The frame's CHKSUM or the LCHKSUM nibble of its LENGTH field does not match."""

    reason = "checksum"


class PayloadError(FrameError):
    """A frame that is well-formed but whose INFO does not decode as the command's payload."""


class ImplausibleReading(PayloadError):
    """An answer that decodes but holds values no module can report (a cell at -0.001 V,
    -3549.9 degrees, a state of charge of 65535): not data, whatever the checksum says."""

    reason = "implausible"


class ConsoleAnswer(FrameError):
    """The port answers RS485 frames like the RS232 console shell (``pylon>``, ``try
    'help'``): the console jack, or a port set to the console protocol."""


class ResponseError(PylontechError):
    """The battery answered with a return code (RTN) other than 00."""

    reason = "return_code"

    def __init__(self, code: int, address: int | None = None) -> None:
        self.code = code
        self.address = address
        name = RETURN_CODE_NAMES.get(code, "unknown return code")
        where = f" from address 0x{address:02X}" if address is not None else ""
        super().__init__(f"{name} (0x{code:02X}){where}")


class ResponseTimeout(PylontechError, TimeoutError):
    """No complete response frame arrived within the response timeout."""

    reason = "timeout"


class DeadlinePassed(PylontechError):
    """The read's deadline (the scrape's time) came before the answer. Not a fault of the
    bus: not counted, not retried, and nothing is concluded about the firmware from it."""

    reason = "deadline"


class TransportError(PylontechError):
    """The port could not be opened, or it failed while in use (unplugged, reset)."""

    reason = "transport"


class WriteCommandRefused(PylontechError, ValueError):
    """Someone asked to send a command that could change a battery: an RS485 write (0x94,
    0x95) or a console command outside the allow-list (``console.shell.CommandRefused``).
    This package is read-only."""

    reason = "refused"


class ListenOnlyError(PylontechError):
    """Something tried to send on a line opened listen-only. Never happens by design; the
    transport raises it so that a mistake cannot put a byte on another master's bus."""

    reason = "refused"


class ConfigError(ValueError):
    """Configuration that cannot work (a file, a flag). ``str()`` is one line that says
    what to fix."""


#: What can go wrong with a request on the bus; their reasons label the failure counter,
#: which exports each of them from the start, at 0.
BUS_FAILURES: tuple[type[PylontechError], ...] = (
    ResponseTimeout,
    ChecksumError,
    FrameError,
    ImplausibleReading,
    ResponseError,
    TransportError,
)
#: Not an error of a request: a request frame on the line that this exporter did not send.
ANOTHER_MASTER = "another_master"
FAILURE_REASONS: tuple[str, ...] = (
    *(error.reason for error in BUS_FAILURES),
    ANOTHER_MASTER,
)
