"""The RS485 slave: one request frame in, the stack's answer out. No I/O.

What real firmware does where the spec is silent or wrong, from recorded traffic of
US2000, US2000B-Plus, US2000C, US3000, US3000C, US5000 and UP2500 stacks (see
docs/simulator.md, which also lists what is our best guess):

- Silence for: bytes without a ``~``/non-hex garbage, ADR 0 (every model), ADR FF, an
  address with no (present) module, a per-module command (0x42, 0x44, 0x92, 0x93, 0x96)
  without INFO, and the FF bank query on a firmware that ignores it. A module checks the
  address before anything else, like on a bus where every module sees every frame.
- Per-module commands take an INFO of one or more bytes; the first names the module, the
  rest is ignored (``0201`` from one published client is answered like ``02``). The
  first byte may be the address or, in a group, the position without the group bits
  (``~20124642E00202FD32``); anything else is RTN 90. The answer's command value is the
  address.
- 0x47, 0x4F and 0x51 ignore their INFO (none, ``0000``, ``8520``, the address). 0x4F
  also ignores VER (spec 3.1: some clients send ``00``); other commands with a VER other
  than the module's get RTN 01.
- RTN 02 for a wrong CHKSUM; RTN 03 for a wrong LCHKSUM and for a LENID that does not
  match the INFO actually sent (or is odd); RTN 04 for a CID1 other than 0x46 and for any
  CID2 that is not a read command, 0x94 and 0x95 included (nothing ever changes state).
- Bank-wide (ADR = master, INFO FF, 42/44): INFOFLAG, count and the *present* modules of
  the group in address order; FF to another module or with another command is RTN 90.
- INFOFLAG: 0x11 in bank-wide 0x42. Otherwise bit 4 says an alarm change has not been
  read yet (by 0x44) and bit 0 a switch (MOSFET) change, as recorded values (00, 10, 11
  in 0x42; 00, 10 in 0x44; 10, 11 in 0x47) suggest; reading 0x44 clears both (0x47 always
  has bit 4). A single-module 0x44 of
  some firmwares ends with one extra 00 byte (the model says which); bank-wide never.
- 0x51 answers with the group master's data at every address where a module is.
- 0x4F answers RTN 00 with empty INFO; the protocol version is the response's VER.
- Every answer: VER 0x20 (the model's), ADR = request ADR, CID1 0x46, CID2 = RTN.
"""

from __future__ import annotations

import binascii
import dataclasses
from typing import Any, Callable, ClassVar

from ..models import ModuleAlarms, ModuleValues, master_address
from ..rs485 import commands
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
from ..rs485.payloads import ALL_MODULES
from ..rs485.stream import FrameSplitter
from .battery import BatteryStack, VirtualModule
from .faults import (
    CONSOLE_ONLY_FAULTS,
    WIRE_FAULTS,
    Fault,
    FaultKind,
    corrupt_chksum,
    corrupt_lchksum,
    corrupt_lenid,
)
from .responder import SILENCE, Reply

_VANISH = frozenset({FaultKind.VANISH})
_NOBANK = frozenset({FaultKind.NOBANK})
_INFLATE = frozenset({FaultKind.INFLATE})
_IMPLAUSIBLE = frozenset({FaultKind.IMPLAUSIBLE})
_WIRE = WIRE_FAULTS - CONSOLE_ONLY_FAULTS
#: Modules an ``inflate`` fault lists when it says no number.
INFLATED = 20
#: INFOFLAG bits: an alarm change, a switch change not yet read by 0x44.
ALARM_CHANGED = 0x10
SWITCH_CHANGED = 0x01
#: INFOFLAG of every bank-wide 0x42 answer recorded.
BANK_VALUES_FLAG = 0x11

#: The typed reading each per-module command answers with.
_READINGS: dict[int, Callable[[VirtualModule], Any]] = {
    Command.ANALOG_VALUES: VirtualModule.values,
    Command.ALARM_INFO: VirtualModule.alarms,
    Command.MANAGEMENT_INFO: VirtualModule.management,
    Command.SERIAL_NUMBER: VirtualModule.serial,
    Command.SOFTWARE_VERSION: VirtualModule.software,
}


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


def _switches(alarms: ModuleAlarms) -> tuple[bool, bool]:
    return alarms.status.charge_mosfet_on, alarms.status.discharge_mosfet_on


class Rs485Responder:
    """The stack as RS485 slaves: request frames in, answer frames out."""

    #: The fault kinds it applies (the console-only ones it never draws).
    HONOURED: ClassVar[frozenset[FaultKind]] = frozenset(FaultKind) - CONSOLE_ONLY_FAULTS

    def __init__(self, stack: BatteryStack) -> None:
        self.stack = stack
        #: The last answer sent without faults (what a ``stale`` fault repeats).
        self.last_reply: bytes | None = None
        #: Per module: the alarm info its last 0x44 answer reported (INFOFLAG).
        self._reported: dict[int, ModuleAlarms] = {}

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

    # -- the answer ---------------------------------------------------------------------

    def _handle(self, request: bytes) -> Reply:
        stack = self.stack
        req = _split(request)
        if req is None or req.address in (0, 0xFF):
            return SILENCE
        plan = stack.faults
        vanished = {f.module for f in plan.draw(req.address, req.command, _VANISH)}
        module = stack.present(req.address)
        if module is None or module.address in vanished:
            return SILENCE
        frame = self._answer(module, req, vanished)
        if frame is None:
            return SILENCE
        fired = plan.draw(req.address, req.command, _WIRE)
        if not fired:
            data = encode_frame(frame)
            self.last_reply = data
            return Reply(data)
        return self._apply(frame, fired)

    def _answer(
        self, module: VirtualModule, req: _Request, vanished: set[int | None]
    ) -> Frame | None:
        """The answer frame, or None for silence."""
        if not req.chksum_ok:
            return _error(module, req, ReturnCode.CHKSUM_ERROR)
        if not req.lchksum_ok or not req.lenid_ok:
            return _error(module, req, ReturnCode.LCHKSUM_ERROR)
        command, info = req.command, req.info
        if req.version != module.model.protocol_version and command != Command.PROTOCOL_VERSION:
            return _error(module, req, ReturnCode.VER_ERROR)
        if req.cid1 != CID1_BATTERY or command not in READ_COMMANDS:
            return _error(module, req, ReturnCode.CID2_INVALID)
        spec = commands.COMMANDS[command]
        if spec.request_info is commands.RequestInfo.NONE:
            return _ok(module, req, self._unaddressed(module, command))
        if not info:
            return None
        if info[0] == ALL_MODULES and spec.bank_answer is not None:
            return self._bank(module, req, vanished)
        if info[0] not in (req.address, req.address - 0x10 * module.group):
            return _error(module, req, ReturnCode.ADR_ERROR)
        return _ok(module, req, self._single(module, command))

    def _unaddressed(self, module: VirtualModule, command: int) -> bytes:
        """0x47, 0x4F, 0x51: the same answer whatever the INFO."""
        if command == Command.SYSTEM_PARAMETERS:
            # Recorded: 10 or 11, never 00.
            flag = ALARM_CHANGED | (self._flag(module) & SWITCH_CHANGED)
            return commands.PARAMETERS.build(module.model.parameters, info_flag=flag)
        if command == Command.MANUFACTURER_INFO:
            master = self.stack.master(module.group)
            return commands.MANUFACTURER.build(master.manufacturer())
        return b""  # 0x4F: the version is the answer's VER

    def _single(self, module: VirtualModule, command: int) -> bytes:
        spec = commands.COMMANDS[command]
        reading = _READINGS[command](module)
        if command == Command.ANALOG_VALUES:
            if self.stack.faults.draw(module.address, command, _IMPLAUSIBLE):
                reading = _implausible(reading)
            return spec.build(reading, info_flag=self._flag(module))
        if command == Command.ALARM_INFO:
            flag = self._flag(module) & ALARM_CHANGED
            self._reported[module.address] = reading
            extra = b"\x00" if module.model.alarm_trailing_byte else b""
            return spec.build(reading, info_flag=flag) + extra
        return spec.build(reading)

    def _bank(
        self, module: VirtualModule, req: _Request, vanished: set[int | None]
    ) -> Frame | None:
        stack = self.stack
        group = module.group
        if req.address != master_address(group):
            return _error(module, req, ReturnCode.ADR_ERROR)
        if not stack.supports_bank_query(group) or stack.faults.draw(
            req.address, req.command, _NOBANK
        ):
            return None  # the firmware ignores FF
        members = [m for m in stack.group_modules(group) if m.address not in vanished]
        inflated = stack.faults.draw(req.address, req.command, _INFLATE)
        if inflated and members:
            count = inflated[0].size or INFLATED
            members += [members[-1]] * (count - len(members))
        spec = commands.COMMANDS[req.command]
        assert spec.bank_answer is not None
        if req.command == Command.ANALOG_VALUES:
            values = [m.values() for m in members]
            if values and stack.faults.draw(req.address, req.command, _IMPLAUSIBLE):
                values[0] = _implausible(values[0])
            payload = spec.bank_answer.build(values, info_flag=BANK_VALUES_FLAG)
        else:
            flag = max((self._flag(m) & ALARM_CHANGED for m in members), default=0)
            alarms = [m.alarms() for m in members]
            self._reported.update((m.address, a) for m, a in zip(members, alarms))
            payload = spec.bank_answer.build(alarms, info_flag=flag)
        return _ok(module, req, payload)

    def _flag(self, module: VirtualModule) -> int:
        """INFOFLAG: what changed since the module's last 0x44 answer."""
        reported = self._reported.get(module.address)
        if reported is None:
            return ALARM_CHANGED | SWITCH_CHANGED
        now = module.alarms()
        flag = ALARM_CHANGED if now != reported else 0
        if _switches(now) != _switches(reported):
            flag |= SWITCH_CHANGED
        return flag

    # -- faults -------------------------------------------------------------------------

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


def _implausible(values: ModuleValues) -> ModuleValues:
    """``values`` with cell 1 at 0xFFFF on the wire (-0.001 V): no module reports it."""
    return dataclasses.replace(values, cell_voltages=(-0.001, *values.cell_voltages[1:]))


def _ok(module: VirtualModule, req: _Request, payload: bytes) -> Frame:
    return Frame(module.model.protocol_version, req.address, CID1_BATTERY, 0, payload)


def _error(module: VirtualModule, req: _Request, code: ReturnCode) -> Frame:
    return Frame(module.model.protocol_version, req.address, CID1_BATTERY, code)
