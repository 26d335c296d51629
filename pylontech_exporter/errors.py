"""One exception hierarchy for everything that can go wrong talking to a battery.

Callers catch :class:`PylontechError` for any protocol trouble, or a subclass to tell a
garbled frame from a battery that said no from a silent bus. Each class carries a short
``reason`` that the exporter uses as the label of its failure counter.
"""

from __future__ import annotations


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


class ResponseError(PylontechError):
    """The battery answered with a return code (RTN) other than 00."""

    reason = "return_code"

    def __init__(self, code: int, address: int | None = None) -> None:
        from .codec.frame import ReturnCode  # local: the codec imports this module

        self.code = code
        self.address = address
        try:
            name = ReturnCode(code).description
        except ValueError:
            name = "unknown return code"
        where = f" from address 0x{address:02X}" if address is not None else ""
        super().__init__(f"{name} (0x{code:02X}){where}")


class ResponseTimeout(PylontechError, TimeoutError):
    """No complete response frame arrived within the response timeout."""

    reason = "timeout"


class TransportError(PylontechError):
    """The port could not be opened, or it failed while in use (unplugged, reset)."""

    reason = "transport"


class WriteCommandRefused(PylontechError, ValueError):
    """Someone asked to encode a write command (0x94, 0x95). This package is read-only."""

    reason = "refused"
