"""Typed readings, in base units (V, A, degrees Celsius, Ah, ratio).

These are what the library returns and what the simulator serves; the codec turns them
into INFO bytes and back. Nothing here knows about bytes or I/O.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields

#: Modules per group the addressing can express (n = 2 .. 17 in ADR = n + 0x10 * m).
MAX_MODULES_PER_GROUP = 16


def module_address(group: int, position: int) -> int:
    """Bus address of the module at 1-based ``position`` in ``group`` (master is position 1).

    ADR = n + 0x10 * m with n = 2 for the master, 3, 4, ... for the slaves.
    """
    if not 0 <= group <= 7:
        raise ValueError(f"group must be 0..7, not {group}")
    if not 1 <= position <= MAX_MODULES_PER_GROUP:
        raise ValueError(f"module position must be 1..{MAX_MODULES_PER_GROUP}, not {position}")
    return position + 1 + 0x10 * group


def master_address(group: int) -> int:
    """Address of the master of ``group``: the target of bank-wide queries."""
    return module_address(group, 1)


def module_position(address: int, group: int) -> int:
    """1-based position in ``group`` of the module at ``address`` (the inverse of
    :func:`module_address`; the group is needed because n may exceed 15)."""
    return address - 0x10 * group - 1


@dataclass(frozen=True)
class ModuleValues:
    """Analog values of one module (command 0x42)."""

    address: int
    cell_voltages: tuple[float, ...]
    #: First the BMS board, then the cell groups (1-4, 5-8, 9-12, 13-15/16), MOSFET, ...
    temperatures: tuple[float, ...]
    #: Positive while charging.
    current: float
    voltage: float
    remaining_capacity: float
    total_capacity: float
    cycle_number: int
    #: True when the module reports capacities in the 3-byte (> 65 Ah) form.
    extended_capacity: bool = False

    @property
    def power(self) -> float:
        """Watts, positive while charging."""
        return self.voltage * self.current

    @property
    def state_of_charge(self) -> float:
        """Remaining / total capacity, 0..1 (NaN when the module reports no capacity)."""
        return self.remaining_capacity / self.total_capacity if self.total_capacity else math.nan


@dataclass(frozen=True)
class GroupValues:
    """Analog values of every module of one group."""

    group: int
    modules: tuple[ModuleValues, ...]

    @property
    def total_power(self) -> float:
        return sum(m.power for m in self.modules)

    @property
    def state_of_charge(self) -> float:
        """Capacity-weighted state of charge of the group, 0..1."""
        total = sum(m.total_capacity for m in self.modules)
        return sum(m.remaining_capacity for m in self.modules) / total if total else math.nan


def sensor_name(index: int) -> str:
    """Label of the ``index``-th (0-based) temperature of a module's 0x42 answer: ``bms``,
    ``cells_1`` .. ``cells_4`` (the cell-group averages), ``mosfet``, then ``t7``, ``t8``..."""
    if index == 0:
        return "bms"
    if index <= 4:
        return f"cells_{index}"
    if index == 5:
        return "mosfet"
    return f"t{index + 1}"


class AlarmState(enum.IntEnum):
    """State byte of one measurement in the alarm info (command 0x44)."""

    NORMAL = 0x00
    LOW = 0x01  # below lower limit
    HIGH = 0x02  # above upper limit
    FAULT = 0xF0  # other error

    @classmethod
    def from_raw(cls, raw: int) -> AlarmState:
        """Values outside the spec are reported as FAULT rather than rejected."""
        try:
            return cls(raw)
        except ValueError:
            return cls.FAULT


@dataclass(frozen=True)
class _Flags:
    def active(self) -> list[str]:
        """Names of the flags that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class Protections(_Flags):
    """Status 1 of the alarm info: protections that have triggered."""

    module_under_voltage: bool = False
    charge_over_temperature: bool = False
    discharge_over_temperature: bool = False
    discharge_over_current: bool = False
    charge_over_current: bool = False
    cell_under_voltage: bool = False
    module_over_voltage: bool = False


@dataclass(frozen=True)
class ModuleStatus(_Flags):
    """Status 2 and 3 of the alarm info: MOSFETs and operating state."""

    using_battery_power: bool = False
    discharge_mosfet_on: bool = False
    charge_mosfet_on: bool = False
    pre_mosfet_on: bool = False
    effective_charge_current: bool = False
    effective_discharge_current: bool = False
    heater_on: bool = False
    fully_charged: bool = False
    buzzer_on: bool = False


@dataclass(frozen=True)
class ModuleAlarms:
    """Alarm info of one module (command 0x44)."""

    address: int
    cell_states: tuple[AlarmState, ...]
    temperature_states: tuple[AlarmState, ...]
    charge_current_state: AlarmState
    voltage_state: AlarmState
    discharge_current_state: AlarmState
    protections: Protections
    status: ModuleStatus
    #: Status 4 and 5: per cell (at most 16), True when the BMS flags its voltage as an error.
    cell_voltage_errors: tuple[bool, ...]


@dataclass(frozen=True)
class SystemParameters:
    """Protection thresholds of one module (command 0x47)."""

    cell_high_voltage_limit: float
    cell_low_voltage_limit: float
    cell_under_voltage_limit: float
    charge_high_temperature_limit: float
    charge_low_temperature_limit: float
    charge_current_limit: float
    module_high_voltage_limit: float
    module_low_voltage_limit: float
    module_under_voltage_limit: float
    discharge_high_temperature_limit: float
    discharge_low_temperature_limit: float
    discharge_current_limit: float


@dataclass(frozen=True)
class ManagementInfo:
    """Charge and discharge management info of one module (command 0x92)."""

    address: int
    charge_voltage_limit: float
    discharge_voltage_limit: float
    charge_current_limit: float
    #: Signed as the BMS reports it.
    discharge_current_limit: float
    charge_enable: bool
    discharge_enable: bool
    charge_immediately_1: bool
    charge_immediately_2: bool
    full_charge_request: bool


@dataclass(frozen=True)
class ModuleSerialNumber:
    """Serial number of one module (command 0x93)."""

    address: int
    serial_number: str


@dataclass(frozen=True)
class SoftwareVersion:
    """Firmware version of one module (command 0x96), as dotted numbers."""

    address: int
    manufacturer_version: str
    mainline_version: str


@dataclass(frozen=True)
class ManufacturerInfo:
    """Manufacturer info (command 0x51): the master's, whatever address is asked."""

    device_name: str
    software_version: str
    manufacturer_name: str


@dataclass(frozen=True)
class ProtocolVersion:
    """Protocol version (command 0x4F), carried in the VER byte of the response."""

    major: int
    minor: int

    @classmethod
    def from_ver(cls, ver: int) -> ProtocolVersion:
        return cls(ver >> 4, ver & 0x0F)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def active_alarms(alarms: ModuleAlarms) -> list[str]:
    """What is not normal in a module's alarm info, in words ("cell 4 high",
    "temperature cells_1 low", "protection module_over_voltage"...): the one summary the
    landing page and ``dump`` show."""
    active = [f"protection {name}" for name in alarms.protections.active()]
    active += [
        f"cell {i} {s.name.lower()}"
        for i, s in enumerate(alarms.cell_states, 1)
        if s != AlarmState.NORMAL
    ]
    active += [
        f"temperature {sensor_name(i)} {s.name.lower()}"
        for i, s in enumerate(alarms.temperature_states)
        if s != AlarmState.NORMAL
    ]
    for name, state in (
        ("charge current", alarms.charge_current_state),
        ("module voltage", alarms.voltage_state),
        ("discharge current", alarms.discharge_current_state),
    ):
        if state != AlarmState.NORMAL:
            active.append(f"{name} {state.name.lower()}")
    active += [f"cell {i} voltage error" for i, e in enumerate(alarms.cell_voltage_errors, 1) if e]
    return active
