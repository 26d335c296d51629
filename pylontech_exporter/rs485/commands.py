"""Each read command once: the INFO its request carries and the answer it gets.

The client builds requests and checks answers from this table, the simulator answers
from it, and the passive decoder (listen-only) decodes an answer from the request it
followed. What a command's answer holds is declared in :mod:`.payloads`; this table adds
what the protocol says around it: which INFO the request carries, whether the bank-wide
(FF) form exists, where the answer repeats the address and how long a fixed-size answer
is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import construct as c

from ..errors import WriteCommandRefused
from ..models import (
    MAX_MODULES_PER_GROUP,
    AlarmState,
    ModuleAlarms,
    ModuleStatus,
    ModuleValues,
    Protections,
)
from . import payloads
from .frame import MIN_FRAME_LENGTH, WRITE_COMMANDS, Command, Frame, ReturnCode

#: INFO of a bank-wide request (0x42 and 0x44 to a group's master).
ALL_MODULES_INFO = bytes([payloads.ALL_MODULES])

T = TypeVar("T")
#: Bytes a fixed-size answer may carry beyond its declared size (firmwares pad).
FIXED_SIZE_SLACK = 2
#: The most cells and temperatures a module reports (48 V modules have up to 16 cells).
MAX_CELLS = 16
MAX_TEMPERATURES = 8


class RequestInfo(enum.Enum):
    """What a request's INFO holds."""

    #: The address of the module asked ("Command should be matched with ADR", spec 3.3).
    ADDRESS = "address"
    #: Nothing (LENID 0).
    NONE = "none"


def _fixed_size(payload: payloads.Payload[Any] | None) -> int | None:
    if payload is None:
        return None
    try:
        return int(payload.struct.sizeof())
    except c.SizeofError:
        return None


@dataclass(frozen=True)
class ReadCommand(Generic[T]):
    """One read command: request form and answer declaration (``T``: the typed reading
    of one module's answer)."""

    code: Command
    #: Short name, used in logs and as the key of per-command results.
    name: str
    request_info: RequestInfo
    #: The answer's INFO for one module; None where the answer has no INFO (0x4F).
    answer: payloads.Payload[T] | None
    #: The answer to the bank-wide (FF) form, for the commands that have one.
    bank_answer: payloads.BankPayload[T] | None = None
    #: INFO offset at which a per-module answer repeats the address asked.
    echo_offset: int | None = None

    @property
    def fixed_size(self) -> int | None:
        """INFO length of the answer when it is the same for every module."""
        return _fixed_size(self.answer)

    def max_answer_bytes(self, bank: bool = False) -> int:
        """The longest answer frame this command can get (bank: the FF form), in bytes:
        what bounds the wait for it on the wire."""
        size = self.fixed_size
        if size is None:
            size = _LARGEST_INFO.get((self.code, bank), 0)
        return MIN_FRAME_LENGTH + 2 * (size + FIXED_SIZE_SLACK)

    def parse(self, info: bytes) -> T:
        """The typed reading of one module's answer INFO."""
        if self.answer is None:
            raise TypeError(f"0x{self.code:02X} answers without INFO")
        return self.answer.parse(info)

    def build(self, reading: T, **fields: Any) -> bytes:
        """The answer INFO for ``reading`` (the simulator's side of :meth:`parse`)."""
        if self.answer is None:
            raise TypeError(f"0x{self.code:02X} answers without INFO")
        return self.answer.build(reading, **fields)

    def info(self, address: int) -> bytes:
        """The INFO of a request of this command to ``address``."""
        return bytes([address]) if self.request_info is RequestInfo.ADDRESS else b""

    def answers(self, info: bytes, address: int, response: Frame) -> bool:
        """Whether ``response`` (already from ``address``) can be the answer to this
        command sent with ``info``. A late answer to an earlier request to the same
        address (one that timed out) looks the same on the frame level; its INFO gives it
        away: a fixed size that does not match, or another address repeated."""
        if response.cid2 != ReturnCode.NORMAL:
            return True
        size = self.fixed_size
        if size is not None and not size <= len(response.info) <= size + FIXED_SIZE_SLACK:
            return False
        if self.echo_offset is not None and info == bytes([address]):
            offset = self.echo_offset
            return len(response.info) > offset and response.info[offset] == address
        return True


VALUES = ReadCommand(
    Command.ANALOG_VALUES,
    "values",
    RequestInfo.ADDRESS,
    payloads.ANALOG_VALUES,
    payloads.ANALOG_VALUES_BANK,
    echo_offset=1,  # after the INFOFLAG
)
ALARMS = ReadCommand(
    Command.ALARM_INFO,
    "alarms",
    RequestInfo.ADDRESS,
    payloads.ALARM_INFO,
    payloads.ALARM_INFO_BANK,
    echo_offset=1,
)
PARAMETERS = ReadCommand(
    Command.SYSTEM_PARAMETERS, "parameters", RequestInfo.NONE, payloads.SYSTEM_PARAMETERS_INFO
)
PROTOCOL_VERSION: ReadCommand[None] = ReadCommand(
    Command.PROTOCOL_VERSION, "protocol", RequestInfo.NONE, None
)
MANUFACTURER = ReadCommand(
    Command.MANUFACTURER_INFO, "manufacturer", RequestInfo.NONE, payloads.MANUFACTURER
)
MANAGEMENT = ReadCommand(
    Command.MANAGEMENT_INFO, "management", RequestInfo.ADDRESS, payloads.MANAGEMENT, echo_offset=0
)
SERIAL_NUMBER = ReadCommand(
    Command.SERIAL_NUMBER, "serial", RequestInfo.ADDRESS, payloads.SERIAL, echo_offset=0
)
SOFTWARE_VERSION = ReadCommand(
    Command.SOFTWARE_VERSION, "software", RequestInfo.ADDRESS, payloads.SOFTWARE, echo_offset=0
)

#: Every read command by its CID2.
COMMANDS: dict[int, ReadCommand[Any]] = {
    command.code: command
    for command in (
        VALUES,
        ALARMS,
        PARAMETERS,
        PROTOCOL_VERSION,
        MANUFACTURER,
        MANAGEMENT,
        SERIAL_NUMBER,
        SOFTWARE_VERSION,
    )
}


def _largest_info() -> dict[tuple[int, bool], int]:
    """INFO bytes of the largest 0x42 and 0x44 answers the protocol can carry: 16 cells,
    8 temperatures, 3-byte capacities; a bank of 16 such modules."""
    values = ModuleValues(
        address=2,
        cell_voltages=(3.3,) * MAX_CELLS,
        temperatures=(25.0,) * MAX_TEMPERATURES,
        current=0.0,
        voltage=52.8,
        remaining_capacity=50.0,
        total_capacity=100.0,
        cycle_number=0,
        extended_capacity=True,
    )
    alarms = ModuleAlarms(
        address=2,
        cell_states=(AlarmState.NORMAL,) * MAX_CELLS,
        temperature_states=(AlarmState.NORMAL,) * MAX_TEMPERATURES,
        charge_current_state=AlarmState.NORMAL,
        voltage_state=AlarmState.NORMAL,
        discharge_current_state=AlarmState.NORMAL,
        protections=Protections(),
        status=ModuleStatus(),
        cell_voltage_errors=(False,) * MAX_CELLS,
    )
    return {
        (Command.ANALOG_VALUES, False): len(payloads.ANALOG_VALUES.build(values)),
        (Command.ANALOG_VALUES, True): len(
            payloads.ANALOG_VALUES_BANK.build([values] * MAX_MODULES_PER_GROUP)
        ),
        (Command.ALARM_INFO, False): len(payloads.ALARM_INFO.build(alarms)),
        (Command.ALARM_INFO, True): len(
            payloads.ALARM_INFO_BANK.build([alarms] * MAX_MODULES_PER_GROUP)
        ),
    }


_LARGEST_INFO = _largest_info()


def lookup(code: int) -> ReadCommand[Any]:
    """The read command with CID2 ``code``. Refuses the write commands (0x94, 0x95) with
    :class:`WriteCommandRefused` and anything else unknown with ``ValueError``."""
    if code in WRITE_COMMANDS:
        raise WriteCommandRefused(
            f"command 0x{code:02X} writes to the battery; this package is read-only"
        )
    try:
        return COMMANDS[code]
    except KeyError:
        raise ValueError(f"0x{code:02X} is not a read command of the protocol") from None
