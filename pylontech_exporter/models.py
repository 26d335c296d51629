"""Typed readings, in base units (V, A, degrees Celsius, Ah, ratio).

These are what the library returns and what the simulator serves; the codec turns them
into INFO bytes and back. Nothing here knows about bytes or I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

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
    """Analog values of one module (command 0x42, or what the RS232 console prints).

    A 0x42 answer gives every field. The console reports less at once; its readings say
    so with the optional fields below, None or True for 0x42: a value it did not read is
    NaN (capacities before ``info N`` was read), ``cell_numbers`` and ``sensors`` name the
    entries of ``cell_voltages`` and ``temperatures`` (a row that did not parse leaves a
    gap), ``printed_state_of_charge`` is the BMS's own figure, and ``cycles_known`` is
    False until the cycle count was read.
    """

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
    #: 1-based cell of each of ``cell_voltages`` (None: 1, 2, 3, ...).
    cell_numbers: tuple[int, ...] | None = None
    #: Sensor label of each of ``temperatures`` (None: the 0x42 order of sensor_name).
    sensors: tuple[str, ...] | None = None
    #: The state of charge as the BMS prints it, 0..1 (None: remaining / total).
    printed_state_of_charge: float | None = None
    cycles_known: bool = True

    @property
    def power(self) -> float:
        """Watts, positive while charging."""
        return self.voltage * self.current

    @property
    def state_of_charge(self) -> float:
        """Remaining / total capacity, 0..1 (NaN when the module reports no capacity), or
        the figure the BMS printed."""
        if self.printed_state_of_charge is not None:
            return self.printed_state_of_charge
        return self.remaining_capacity / self.total_capacity if self.total_capacity else math.nan

    def cells(self) -> list[tuple[int, float]]:
        """(1-based cell, volts) of every cell voltage read."""
        numbers = self.cell_numbers or range(1, len(self.cell_voltages) + 1)
        return list(zip(numbers, self.cell_voltages))

    def sensor_temperatures(self) -> list[tuple[str, float]]:
        """(sensor label, degrees Celsius) of every temperature read."""
        names = self.sensors or [sensor_name(i) for i in range(len(self.temperatures))]
        return list(zip(names, self.temperatures))


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


#: How bad each state is, for the worst of several (the console prints one per group).
ALARM_SEVERITY = {AlarmState.NORMAL: 0, AlarmState.LOW: 1, AlarmState.HIGH: 2, AlarmState.FAULT: 3}


def worst_alarm(states: Iterable[AlarmState | None]) -> AlarmState | None:
    """The most severe of ``states`` (None ignored; None when none is known)."""
    known = [s for s in states if s is not None]
    return max(known, key=ALARM_SEVERITY.__getitem__) if known else None


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


# --- what the RS232 console reports beyond the 0x42 values ---------------------------------


class BaseState(str, enum.Enum):
    """What a module is doing, as the console's ``pwr`` prints it (``Base.St``)."""

    CHARGE = "charge"
    DISCHARGE = "discharge"
    IDLE = "idle"
    BALANCE = "balance"
    #: A word this package does not know (the source logs it).
    OTHER = "other"


@dataclass(frozen=True)
class CellDetail:
    """One cell as ``bat N`` prints it, beyond its voltage (in ModuleValues). None: the
    firmware has no such column, or the field did not parse."""

    #: 1-based (the ``bat`` row + 1).
    cell: int
    temperature: float | None = None
    voltage_state: AlarmState | None = None
    temperature_state: AlarmState | None = None
    state_of_charge: float | None = None
    #: Ah.
    remaining_capacity: float | None = None
    balancing: bool | None = None


@dataclass(frozen=True)
class ModuleDetail:
    """What the console's ``pwr`` and ``bat N`` report of one module beyond its values."""

    base_state: BaseState | None = None
    #: ``module_voltage``, ``current``, ``cell_voltage``, ``cell_temperature`` -> state.
    measurement_states: dict[str, AlarmState] = field(default_factory=dict)
    #: Temperature sensor (``bms``, ``mosfet``) -> state.
    temperature_states: dict[str, AlarmState] = field(default_factory=dict)
    #: Lowest and highest cell voltage (V) and cell temperature (degrees Celsius).
    cell_voltage_min: float | None = None
    cell_voltage_max: float | None = None
    cell_temperature_min: float | None = None
    cell_temperature_max: float | None = None
    #: Per cell, from ``bat N``: empty when it was not read in this scrape.
    cells: tuple[CellDetail, ...] = ()


@dataclass(frozen=True)
class ModuleIdentity:
    """``info N``: the identity of one module, as printed ("" where not printed)."""

    device_name: str
    manufacturer: str
    #: ``Barcode``.
    serial_number: str
    #: ``Main Soft version``.
    main_software_version: str
    software_version: str = ""
    boot_version: str = ""
    comm_version: str = ""
    board_version: str = ""
    release_date: str = ""
    #: e.g. ``48V/100AH``.
    specification: str = ""
    #: Ah, from the specification (None: not printed or not understood).
    capacity: float | None = None
    cell_count: int | None = None
    #: Amperes; the discharge limit signed as printed (negative).
    max_charge_current: float | None = None
    max_discharge_current: float | None = None


@dataclass(frozen=True)
class ModuleStatistics:
    """``stat N``: lifetime counters of one module."""

    #: Counter name (the printed key, lowercased, e.g. ``coc_times``) -> count.
    events: dict[str, int] = field(default_factory=dict)
    #: ``CYCLE Times``.
    cycles: int | None = None
    #: ``SOH`` / 100 (printed by B69 and newer firmware).
    state_of_health: float | None = None
    #: ``Dsg Cap``: Ah discharged over the module's life.
    discharged: float | None = None


@dataclass(frozen=True)
class CellHealth:
    """One row of ``soh N``."""

    cell: int
    #: ``SOHCount`` (None: the firmware prints none).
    count: int | None
    #: ``SOHStatus`` as printed (``Normal``, ``00000000``, ...).
    status: str


def active_states(detail: ModuleDetail) -> list[str]:
    """What is not normal in the console's states of a module, in words ("current high",
    "temperature mosfet fault", "cell 4 low"): what ``dump`` shows as its alarms."""
    active = [
        f"{name.replace('_', ' ')} {state.name.lower()}"
        for name, state in detail.measurement_states.items()
        if state != AlarmState.NORMAL
    ]
    active += [
        f"temperature {sensor} {state.name.lower()}"
        for sensor, state in detail.temperature_states.items()
        if state != AlarmState.NORMAL
    ]
    for cell in detail.cells:
        for what, state in (("", cell.voltage_state), (" temperature", cell.temperature_state)):
            if state is not None and state != AlarmState.NORMAL:
                active.append(f"cell {cell.cell}{what} {state.name.lower()}")
    return active
