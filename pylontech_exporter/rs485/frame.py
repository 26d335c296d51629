"""The frame envelope: ``~ VER ADR CID1 CID2 LENGTH INFO CHKSUM \\r``.

Everything between SOI and EOI is hex-ASCII. LENGTH carries the number of INFO
characters (LENID, 12 bits) guarded by a 4-bit checksum (LCHKSUM); CHKSUM guards every
character between SOI and CHKSUM. This module turns such bytes into :class:`Frame`
objects and back, and knows nothing about what INFO means.
"""

from __future__ import annotations

import binascii
import enum
import re
from dataclasses import dataclass

from ..errors import RETURN_CODE_NAMES, ChecksumError, FrameError, WriteCommandRefused

SOI = 0x7E  # "~"
EOI = 0x0D  # "\r"
CID1_BATTERY = 0x46
#: VER byte of requests, and of the answers real batteries give.
REQUEST_VERSION = 0x20
MAX_LENID = 0xFFF
HEX_ASCII = re.compile(rb"[0-9A-Fa-f]*")
#: SOI + VER ADR CID1 CID2 LENGTH (12 chars) + CHKSUM (4) + EOI.
MIN_FRAME_LENGTH = 18


class Command(enum.IntEnum):
    """The read commands (CID2 of a request). Write commands are deliberately absent."""

    ANALOG_VALUES = 0x42
    ALARM_INFO = 0x44
    SYSTEM_PARAMETERS = 0x47
    PROTOCOL_VERSION = 0x4F
    MANUFACTURER_INFO = 0x51
    MANAGEMENT_INFO = 0x92
    SERIAL_NUMBER = 0x93
    SOFTWARE_VERSION = 0x96


READ_COMMANDS = frozenset(Command)
#: 0x94 sets charge/discharge limits, 0x95 turns a module off. Never sent by this package.
WRITE_COMMANDS = frozenset({0x94, 0x95})


class ReturnCode(enum.IntEnum):
    """RTN, the CID2 of a response; the names are in ``errors.RETURN_CODE_NAMES``."""

    NORMAL = 0x00
    VER_ERROR = 0x01
    CHKSUM_ERROR = 0x02
    LCHKSUM_ERROR = 0x03
    CID2_INVALID = 0x04
    COMMAND_FORMAT_ERROR = 0x05
    INVALID_DATA = 0x06
    ADR_ERROR = 0x90
    INTERNAL_COMMUNICATION_ERROR = 0x91

    @property
    def description(self) -> str:
        return RETURN_CODE_NAMES[self.value]


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``cid2`` is the command in a request, the RTN in a response;
    ``info`` is the binary INFO (already converted from hex-ASCII)."""

    version: int
    address: int
    cid1: int
    cid2: int
    info: bytes = b""


def length_checksum(lenid: int) -> int:
    """LCHKSUM: two's complement of the sum of LENID's three nibbles, modulo 16."""
    return (-((lenid & 0xF) + ((lenid >> 4) & 0xF) + ((lenid >> 8) & 0xF))) & 0xF


def frame_checksum(body: bytes) -> int:
    """CHKSUM: two's complement of the sum of the ASCII bytes, modulo 65536."""
    return -sum(body) & 0xFFFF


def encode_frame(frame: Frame) -> bytes:
    """The bytes of a frame on the wire, SOI and EOI included."""
    info = binascii.hexlify(frame.info).upper()
    lenid = len(info)
    if lenid > MAX_LENID:
        raise FrameError(f"INFO of {len(frame.info)} bytes does not fit in a frame")
    length = (length_checksum(lenid) << 12) | lenid
    body = (
        b"%02X%02X%02X%02X%04X" % (frame.version, frame.address, frame.cid1, frame.cid2, length)
        + info
    )
    return b"~" + body + b"%04X" % frame_checksum(body) + b"\r"


def encode_request(address: int, command: int, info: bytes = b"") -> bytes:
    """A request frame. Refuses the write commands, whatever the caller passes."""
    if command in WRITE_COMMANDS:
        raise WriteCommandRefused(
            f"command 0x{command:02X} writes to the battery; this package is read-only"
        )
    if command not in READ_COMMANDS:
        raise ValueError(f"0x{command:02X} is not a read command of the protocol")
    if not 0 < address < 0xFF:
        raise ValueError(f"address 0x{address:02X} is reserved")
    return encode_frame(Frame(REQUEST_VERSION, address, CID1_BATTERY, command, info))


def check_envelope(frame: Frame) -> None:
    """Refuse an answer that is not a Pylontech battery's: CID1 other than 0x46, or a VER
    outside 2.x (a frame from another protocol sharing the bus)."""
    if frame.cid1 != CID1_BATTERY:
        raise FrameError(f"answer with CID1 0x{frame.cid1:02X}, not a battery's (0x46)")
    if frame.version >> 4 != REQUEST_VERSION >> 4:
        raise FrameError(f"answer with VER 0x{frame.version:02X}, not protocol version 2.x")


def _hex_field(raw: bytes, start: int, width: int) -> int:
    """A field of a frame already checked to be hex-ASCII."""
    return int(raw[start : start + width], 16)


def decode_frame(raw: bytes) -> Frame:
    """Decode one frame from ``~`` to ``\\r`` inclusive, checking every guard."""
    if len(raw) < MIN_FRAME_LENGTH:
        raise FrameError(f"frame too short ({len(raw)} bytes): {raw[:40]!r}")
    if raw[0] != SOI or raw[-1] != EOI:
        raise FrameError(f"frame must start with '~' and end with CR: {raw[:40]!r}")
    body = raw[1:-5]
    if not HEX_ASCII.fullmatch(raw, 1, len(raw) - 1):
        raise FrameError(f"non hex-ASCII characters in frame: {raw[:40]!r}")
    expected = frame_checksum(body)
    received = _hex_field(raw, len(raw) - 5, 4)
    if received != expected:
        raise ChecksumError(f"CHKSUM is {received:04X}, expected {expected:04X}")
    length = _hex_field(raw, 9, 4)
    lenid = length & MAX_LENID
    if length >> 12 != length_checksum(lenid):
        raise ChecksumError(
            f"LCHKSUM is {length >> 12:X}, expected {length_checksum(lenid):X} for LENID {lenid}"
        )
    info_hex = raw[13:-5]
    if lenid != len(info_hex):
        raise FrameError(f"LENID says {lenid} INFO characters, frame holds {len(info_hex)}")
    if lenid % 2:
        raise FrameError(f"odd number of INFO characters ({lenid})")
    return Frame(
        version=_hex_field(raw, 1, 2),
        address=_hex_field(raw, 3, 2),
        cid1=_hex_field(raw, 5, 2),
        cid2=_hex_field(raw, 7, 2),
        info=binascii.unhexlify(info_hex),
    )
