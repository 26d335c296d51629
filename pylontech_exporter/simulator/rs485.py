"""The RS485 slave: one request frame in, the stack's answer out. No I/O.

Behaviour where the spec is silent, chosen to match what real modules are reported to
do (and documented here because clients depend on it):

- Silence for: bytes without a ``~``/non-hex garbage, ADR FF, an address with no
  (present) module. A module checks the address before anything else, like on a bus
  where every module sees every frame.
- ADR 0: the master of group 0 answers 0x4F and 0x51 there (python-pylontech relies on
  it) and refuses other commands with RTN 90; a US5000 master refuses ADR 0 altogether
  with RTN 90.
- RTN 02 for a wrong CHKSUM; RTN 03 for a wrong LCHKSUM and for a LENID that does not
  match the INFO actually sent (or is odd); RTN 01 for a VER other than the module's
  (0x20), except for 0x4F which ignores VER (spec 3.1); RTN 04 for a CID1 other than
  0x46 and for any CID2 that is not a read command, 0x94 and 0x95 included (the
  simulator never changes state).
- RTN 05 for INFO of the wrong length: 1 byte for 42, 44, 92, 93, 96; empty or 1 byte
  for 47; empty for 4F and 51.
- RTN 90 (ADR error) when a per-module INFO is not the request's ADR, and for the FF
  bank query sent to a module that is not its group's master or with a command other
  than 42/44.
- Bank-wide (ADR = master, INFO FF, 42/44): flag, count and the *present* modules of the
  group in address order. A master whose firmware ignores FF answers with its own
  single-module response (command value = its address), and so does a ``nobank`` fault.
- 0x51 answers with the group master's data at every address where a module is.
- 0x4F answers RTN 00 with empty INFO; the protocol version is the response's VER.
- Every answer: VER 0x20 (the model's), ADR = request ADR, CID1 0x46, CID2 = RTN.
"""

from __future__ import annotations

import binascii

from ..models import master_address
from ..rs485.frame import (
    CID1_BATTERY,
    HEX_ASCII,
    READ_COMMANDS,
    Command,
    Frame,
    ReturnCode,
    encode_frame,
    frame_checksum,
    length_checksum,
)
from ..rs485.payloads import (
    ALARM_INFO,
    ALARM_INFO_BANK,
    ALL_MODULES,
    ANALOG_VALUES,
    ANALOG_VALUES_BANK,
    MANAGEMENT,
    MANUFACTURER,
    SERIAL,
    SOFTWARE,
    SYSTEM_PARAMETERS_INFO,
)
from ..rs485.stream import FrameSplitter
from .battery import BatteryStack, VirtualModule
from .faults import WIRE_FAULTS, Fault, FaultKind, corrupt_chksum, corrupt_lchksum, corrupt_lenid
from .responder import SILENCE, Reply

_PER_MODULE = frozenset({0x42, 0x44, 0x92, 0x93, 0x96})
_BANK_COMMANDS = frozenset({0x42, 0x44})
_ADDRESS_ZERO_COMMANDS = frozenset({Command.PROTOCOL_VERSION, Command.MANUFACTURER_INFO})
_VANISH = frozenset({FaultKind.VANISH})
_NOBANK = frozenset({FaultKind.NOBANK})


class _Request:
    """A request split into its fields, guards checked but not enforced."""

    def __init__(self, body: bytes) -> None:
        self.version = int(body[0:2], 16)
        self.address = int(body[2:4], 16)
        self.cid1 = int(body[4:6], 16)
        self.command = int(body[6:8], 16)
        length = int(body[8:12], 16)
        lenid = length & 0xFFF
        info_hex = body[12:-4]
        self.chksum_ok = int(body[-4:], 16) == frame_checksum(body[:-4])
        self.lchksum_ok = length >> 12 == length_checksum(lenid)
        self.lenid_ok = lenid == len(info_hex) and lenid % 2 == 0
        self.info = binascii.unhexlify(info_hex) if self.lenid_ok else b""


def _split(request: bytes) -> _Request | None:
    """The request from its last ``~`` to CR; None for anything that is not a frame."""
    start = request.rfind(b"~")
    if start < 0:
        return None
    body = request[start + 1 :].rstrip(b"\r\n\x00")
    if len(body) < 16 or not HEX_ASCII.fullmatch(body):
        return None
    return _Request(body)


class Rs485Responder:
    """The stack as RS485 slaves: request frames in, answer frames out."""

    def __init__(self, stack: BatteryStack) -> None:
        self.stack = stack
        #: The last answer sent without faults (what a ``stale`` fault repeats).
        self.last_reply: bytes | None = None

    def framer(self) -> FrameSplitter:
        """Cuts one connection's incoming bytes into request frames."""
        return FrameSplitter()

    def respond(self, request: bytes) -> bytes | None:
        """The answer a real stack gives to ``request`` (None: silence), faults included
        but without their delay. No I/O and no sleeping; fault counters and the answer a
        ``stale`` fault repeats are updated."""
        return self.handle(request).data

    def handle(self, request: bytes) -> Reply:
        """Like :meth:`respond`, also telling how long a fault delays the answer."""
        with self.stack.lock:
            return self._handle(request)

    def _handle(self, request: bytes) -> Reply:
        stack = self.stack
        req = _split(request)
        if req is None or req.address == 0xFF:
            return SILENCE
        if req.address == 0:
            return _address_zero(stack, req)
        plan = stack.faults
        vanished = {f.module for f in plan.draw(req.address, req.command, _VANISH)}
        module = stack.present(req.address)
        if module is None or module.address in vanished:
            return SILENCE
        frame = _answer(stack, module, req, vanished)
        fired = plan.draw(req.address, req.command, WIRE_FAULTS)
        if not fired:
            data = encode_frame(frame)
            self.last_reply = data
            return Reply(data)
        return self._apply(frame, fired)

    def _apply(self, frame: Frame, fired: list[Fault]) -> Reply:
        kinds = {f.kind: f for f in fired}
        if FaultKind.DROP in kinds:
            return SILENCE
        clean = encode_frame(frame)
        if FaultKind.RTN in kinds:
            frame = Frame(frame.version, frame.address, frame.cid1, kinds[FaultKind.RTN].code)
        if FaultKind.WRONG_ADDRESS in kinds:
            to = kinds[FaultKind.WRONG_ADDRESS].to
            address = to if to is not None else (frame.address + 1) & 0xFF
            frame = Frame(frame.version, address, frame.cid1, frame.cid2, frame.info)
        data = encode_frame(frame)
        if FaultKind.CHKSUM in kinds:
            data = corrupt_chksum(data)
        if FaultKind.LCHKSUM in kinds:
            data = corrupt_lchksum(data)
        if FaultKind.LENID in kinds:
            data = corrupt_lenid(data)
        if FaultKind.TRUNCATE in kinds:
            size = kinds[FaultKind.TRUNCATE].size
            data = data[: size if size is not None else len(data) // 2]
        if FaultKind.STALE in kinds:
            stale = self.last_reply or encode_frame(
                Frame(frame.version, frame.address, CID1_BATTERY, 0)
            )
            data = stale + data
        if FaultKind.JUNK in kinds:
            size = kinds[FaultKind.JUNK].size
            data = self.stack.faults.junk(size if size is not None else 4) + data
        if FaultKind.NUL in kinds:
            size = kinds[FaultKind.NUL].size
            data += b"\x00" * (size if size is not None else 3)
        self.last_reply = clean
        delay = sum(f.seconds for f in fired if f.kind is FaultKind.DELAY)
        return Reply(data, delay)


def _address_zero(stack: BatteryStack, req: _Request) -> Reply:
    master = stack.present(master_address(0)) if 0 in stack.groups else None
    if master is None:
        return SILENCE
    if master.model.answers_address_zero and req.command in _ADDRESS_ZERO_COMMANDS:
        return Reply(encode_frame(_answer(stack, master, req, set())))
    return Reply(encode_frame(_error(master, req, ReturnCode.ADR_ERROR)))


def _error(module: VirtualModule, req: _Request, code: ReturnCode) -> Frame:
    return Frame(module.model.protocol_version, req.address, CID1_BATTERY, code)


def _answer(
    stack: BatteryStack, module: VirtualModule, req: _Request, vanished: set[int | None]
) -> Frame:
    if not req.chksum_ok:
        return _error(module, req, ReturnCode.CHKSUM_ERROR)
    if not req.lchksum_ok or not req.lenid_ok:
        return _error(module, req, ReturnCode.LCHKSUM_ERROR)
    command, info = req.command, req.info
    if req.version != module.model.protocol_version and command != Command.PROTOCOL_VERSION:
        return _error(module, req, ReturnCode.VER_ERROR)
    if req.cid1 != CID1_BATTERY or command not in READ_COMMANDS:
        return _error(module, req, ReturnCode.CID2_INVALID)

    if command in _PER_MODULE and info == bytes([ALL_MODULES]):
        return _bank(stack, module, req, vanished)
    if command in _PER_MODULE:
        if len(info) != 1:
            return _error(module, req, ReturnCode.COMMAND_FORMAT_ERROR)
        if info[0] != req.address:
            return _error(module, req, ReturnCode.ADR_ERROR)
        payload = {
            0x42: lambda: ANALOG_VALUES.build(module.values()),
            0x44: lambda: ALARM_INFO.build(module.alarms()),
            0x92: lambda: MANAGEMENT.build(module.management()),
            0x93: lambda: SERIAL.build(module.serial()),
            0x96: lambda: SOFTWARE.build(module.software()),
        }[command]()
    elif command == Command.SYSTEM_PARAMETERS:
        if len(info) > 1:
            return _error(module, req, ReturnCode.COMMAND_FORMAT_ERROR)
        if info and info[0] != req.address:
            return _error(module, req, ReturnCode.ADR_ERROR)
        payload = SYSTEM_PARAMETERS_INFO.build(module.model.parameters)
    elif info:  # 0x4F and 0x51 take no INFO
        return _error(module, req, ReturnCode.COMMAND_FORMAT_ERROR)
    elif command == Command.MANUFACTURER_INFO:
        payload = MANUFACTURER.build(stack.master(module.group).manufacturer())
    else:  # 0x4F
        payload = b""
    return Frame(module.model.protocol_version, req.address, CID1_BATTERY, 0, payload)


def _bank(
    stack: BatteryStack, module: VirtualModule, req: _Request, vanished: set[int | None]
) -> Frame:
    group = stack.group_of(req.address)
    if req.command not in _BANK_COMMANDS or req.address != master_address(group):
        return _error(module, req, ReturnCode.ADR_ERROR)
    ignores_ff = not stack.supports_bank_query(group) or stack.faults.draw(
        req.address, req.command, _NOBANK
    )
    analog = req.command == Command.ANALOG_VALUES
    if ignores_ff:
        payload = (
            ANALOG_VALUES.build(module.values()) if analog else ALARM_INFO.build(module.alarms())
        )
    else:
        members = [m for m in stack.group_modules(group) if m.address not in vanished]
        payload = (
            ANALOG_VALUES_BANK.build([m.values() for m in members])
            if analog
            else ALARM_INFO_BANK.build([m.alarms() for m in members])
        )
    return Frame(module.model.protocol_version, req.address, CID1_BATTERY, 0, payload)
