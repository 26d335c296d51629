"""INFO payloads of the read commands, each declared once.

A declaration is the wire layout (a construct ``Struct`` of raw integers) plus the unit
of each field that is not a plain count. The same declaration parses a response (the
client) and builds one (the simulator), so the two cannot drift apart. Field names match
the dataclasses in :mod:`pylontech_exporter.models`, so mapping is by name.

The layouts use only what construct can compile, and are compiled: decoding a full
16-module bank-wide frame is the hot path of every scrape.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Generic, TypeVar

import construct as c

from ..errors import ImplausibleReading, PayloadError
from ..models import (
    MAX_MODULES_PER_GROUP,
    AlarmState,
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
    ModuleSerialNumber,
    ModuleStatus,
    ModuleValues,
    Protections,
    SoftwareVersion,
    SystemParameters,
    master_address,
)

#: INFOFLAG of analog and parameter responses, as in the V3.3 worked example.
INFO_FLAG = 0x11
#: The 2-byte capacity fields of the 4-item (> 65 Ah) form.
NO_SHORT_CAPACITY = 0xFFFF
#: Bank-wide query: INFO of a 0x42 or 0x44 request to the master.
ALL_MODULES = 0xFF

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Unit:
    """How a raw wire value maps to a value in base units, and back."""

    decode: Callable[[Any], Any]
    encode: Callable[[Any], Any]


MILLI = Unit(lambda raw: raw / 1000, lambda value: round(value * 1000))
DECI = Unit(lambda raw: raw / 10, lambda value: round(value * 10))  # currents: 0.1 A
DECIKELVIN = Unit(lambda raw: (raw - 2731) / 10, lambda value: round(value * 10) + 2731)
STATE = Unit(AlarmState.from_raw, int)
#: A version as bytes, shown as dotted numbers ("1.4", "2.7.4").
VERSION = Unit(
    lambda raw: ".".join(str(b) for b in raw),
    lambda text: bytes(int(part) for part in text.split(".")),
)


def text(length: int, pad: bytes = b"\x00") -> Unit:
    """Fixed-width text, padded with NULs, 0xFF, spaces or dashes on the wire (real 0x51
    answers say ``Pylon---------------``); built padded with ``pad``. Latin-1, so that an
    odd byte garbles one character rather than losing the whole reading."""
    return Unit(
        lambda raw: raw.decode("latin-1").rstrip("\x00\xff -"),
        lambda value: value.encode("latin-1")[:length].ljust(length, pad),
    )


def _convert(
    values: Mapping[str, Any], units: Mapping[str, Unit], direction: str
) -> dict[str, Any]:
    """Apply each field's unit (element-wise to sequences) in ``direction``."""
    converted = dict(values)
    for name, unit in units.items():
        if name in converted:
            function = getattr(unit, direction)
            value = converted[name]
            if isinstance(value, (list, tuple)):
                converted[name] = tuple(map(function, value))
            else:
                converted[name] = function(value)
    return converted


class PackedArray(c.Array):  # type: ignore[misc]  # construct is untyped
    """An :class:`~construct.Array` of a fixed-size integer (``Int16sb``...) whose compiled
    parser reads the whole array with one ``struct.unpack`` instead of one per element.
    Parses and builds exactly like ``Array``; only the compiled parse is faster (cell
    voltages are most of a bank-wide 0x42 answer)."""

    def __init__(self, count: Any, subcon: c.FormatField) -> None:
        if not isinstance(subcon, c.FormatField) or len(subcon.fmtstr) != 2:
            raise TypeError("PackedArray needs a fixed-size FormatField such as Int16sb")
        super().__init__(count, subcon)

    def _emitparse(self, code: Any) -> str:
        endian, kind = self.subcon.fmtstr
        count = f"({self.count})"
        return (
            f"ListContainer(struct.unpack({endian!r} + str({count}) + {kind!r}, "
            f"io.read({self.subcon.length} * {count})))"
        )


class UInt24(c.BytesInteger):  # type: ignore[misc]
    """``Int24ub`` whose compiled parser is one ``struct.unpack`` call (and, unlike the
    compiled ``Int24ub``, fails on fewer than 3 bytes instead of reading them as a number)."""

    def __init__(self) -> None:
        super().__init__(3, signed=False, swapped=False)

    def _emitparse(self, code: Any) -> str:
        return "struct.unpack('>I', b'\\x00' + io.read(3))[0]"


# -- wire layouts --------------------------------------------------------------------

ANALOG_MODULE = c.Struct(
    "cell_count" / c.Rebuild(c.Int8ub, c.len_(c.this.cell_voltages)),
    "cell_voltages" / PackedArray(c.this.cell_count, c.Int16sb),
    "temperature_count" / c.Rebuild(c.Int8ub, c.len_(c.this.temperatures)),
    "temperatures" / PackedArray(c.this.temperature_count, c.Int16sb),
    "current" / c.Int16sb,
    "voltage" / c.Int16ub,
    "remaining_capacity_2" / c.Int16ub,
    # 2: full capacity and cycles follow; 4: also 3-byte remaining and full capacity.
    "user_defined_items" / c.Int8ub,
    "total_capacity_2" / c.Int16ub,
    "cycle_number" / c.Int16ub,
    "remaining_capacity_3" / c.If(c.this.user_defined_items >= 4, UInt24()),
    "total_capacity_3" / c.If(c.this.user_defined_items >= 4, UInt24()),
)

ALARM_MODULE = c.Struct(
    "cell_count" / c.Rebuild(c.Int8ub, c.len_(c.this.cell_states)),
    "cell_states" / c.Array(c.this.cell_count, c.Int8ub),
    "temperature_count" / c.Rebuild(c.Int8ub, c.len_(c.this.temperature_states)),
    "temperature_states" / c.Array(c.this.temperature_count, c.Int8ub),
    "charge_current_state" / c.Int8ub,
    "voltage_state" / c.Int8ub,
    "discharge_current_state" / c.Int8ub,
    "protections"
    / c.BitStruct(  # Status 1
        "module_under_voltage" / c.Flag,
        "charge_over_temperature" / c.Flag,
        "discharge_over_temperature" / c.Flag,
        "discharge_over_current" / c.Flag,
        c.Padding(1),
        "charge_over_current" / c.Flag,
        "cell_under_voltage" / c.Flag,
        "module_over_voltage" / c.Flag,
    ),
    "status"
    / c.BitStruct(  # Status 2, then Status 3
        c.Padding(4),
        "using_battery_power" / c.Flag,
        "discharge_mosfet_on" / c.Flag,
        "charge_mosfet_on" / c.Flag,
        "pre_mosfet_on" / c.Flag,
        "effective_charge_current" / c.Flag,
        "effective_discharge_current" / c.Flag,
        "heater_on" / c.Flag,
        c.Padding(1),
        "fully_charged" / c.Flag,
        c.Padding(2),
        "buzzer_on" / c.Flag,
    ),
    # Status 4 holds cells 1-8 (bit 0 = cell 1), Status 5 cells 9-16.
    "cell_voltage_errors" / c.Int16ul,
)
ALARM_UNITS = {
    "cell_states": STATE,
    "temperature_states": STATE,
    "charge_current_state": STATE,
    "voltage_state": STATE,
    "discharge_current_state": STATE,
}

SYSTEM_PARAMETERS = c.Struct(
    "info_flag" / c.Default(c.Int8ub, INFO_FLAG),
    "cell_high_voltage_limit" / c.Int16sb,
    "cell_low_voltage_limit" / c.Int16sb,
    "cell_under_voltage_limit" / c.Int16sb,
    "charge_high_temperature_limit" / c.Int16sb,
    "charge_low_temperature_limit" / c.Int16sb,
    "charge_current_limit" / c.Int16sb,
    "module_high_voltage_limit" / c.Int16ub,
    "module_low_voltage_limit" / c.Int16ub,
    "module_under_voltage_limit" / c.Int16ub,
    "discharge_high_temperature_limit" / c.Int16sb,
    "discharge_low_temperature_limit" / c.Int16sb,
    "discharge_current_limit" / c.Int16sb,
)
SYSTEM_PARAMETER_UNITS = {
    "cell_high_voltage_limit": MILLI,
    "cell_low_voltage_limit": MILLI,
    "cell_under_voltage_limit": MILLI,
    "charge_high_temperature_limit": DECIKELVIN,
    "charge_low_temperature_limit": DECIKELVIN,
    "charge_current_limit": DECI,
    "module_high_voltage_limit": MILLI,
    "module_low_voltage_limit": MILLI,
    "module_under_voltage_limit": MILLI,
    "discharge_high_temperature_limit": DECIKELVIN,
    "discharge_low_temperature_limit": DECIKELVIN,
    "discharge_current_limit": DECI,
}

MANAGEMENT_INFO = c.Struct(
    "address" / c.Int8ub,
    "charge_voltage_limit" / c.Int16ub,
    "discharge_voltage_limit" / c.Int16ub,
    "charge_current_limit" / c.Int16sb,
    "discharge_current_limit" / c.Int16sb,
    "status"
    / c.BitStruct(
        "charge_enable" / c.Flag,
        "discharge_enable" / c.Flag,
        "charge_immediately_1" / c.Flag,
        "charge_immediately_2" / c.Flag,
        "full_charge_request" / c.Flag,
        c.Padding(3),
    ),
)
MANAGEMENT_UNITS = {
    "charge_voltage_limit": MILLI,
    "discharge_voltage_limit": MILLI,
    "charge_current_limit": DECI,
    "discharge_current_limit": DECI,
}

SERIAL_NUMBER = c.Struct("address" / c.Int8ub, "serial_number" / c.Bytes(16))
SOFTWARE_VERSION = c.Struct(
    "address" / c.Int8ub,
    "manufacturer_version" / c.Bytes(2),
    "mainline_version" / c.Bytes(3),
)
MANUFACTURER_INFO = c.Struct(
    "device_name" / c.Bytes(10),
    "software_version" / c.Bytes(2),
    "manufacturer_name" / c.Bytes(20),
)


def _single(module: c.Construct) -> c.Struct:
    """Response to a per-module request: flag, command value (the address), one module."""
    return c.Struct(
        "info_flag" / c.Default(c.Int8ub, INFO_FLAG),
        "address" / c.Int8ub,
        "module" / module,
    )


def _bank(module: c.Construct) -> c.Struct:
    """Response to a bank-wide (FF) request: flag, module count, every module in order."""
    return c.Struct(
        "info_flag" / c.Default(c.Int8ub, INFO_FLAG),
        "module_count" / c.Rebuild(c.Int8ub, c.len_(c.this.modules)),
        "modules" / c.Array(c.this.module_count, module),
    )


# -- raw container <-> typed reading -------------------------------------------------


@functools.cache
def _field_names(model: type) -> frozenset[str]:
    return frozenset(field.name for field in dataclasses.fields(model))


def _model_fields(model: type, values: Mapping[str, Any]) -> dict[str, Any]:
    names = _field_names(model)
    return {name: value for name, value in values.items() if name in names}


#: What a module can report, in raw wire units: cells 0..5 V (mV), temperatures
#: -60..+150 degrees (0.1 K), currents within +-500 A (0.1 A: 0x8000 = -3276.8 A is a filler),
#: module voltages of 65 V at most (mV: 16 cells at 4 V; 0xFFFF is a filler). Anything else
#: is not a reading.
CELL_MV = range(0, 5001)
DECIKELVIN_RANGE = range(2731 - 600, 2731 + 1501)
DECIAMPERES = range(-5000, 5001)
MODULE_MV = range(0, 65001)
#: Remaining capacity may exceed the full one a little (BMS calibration), not more.
CAPACITY_SLACK = 1.2


def _implausible(what: str, value: Any, address: int) -> ImplausibleReading:
    return ImplausibleReading(f"0x{address:02X}: {what} {value} is not a value a module reports")


def _check_values(raw: Mapping[str, Any], remaining: int, total: int, address: int) -> None:
    bad = [v for v in raw["cell_voltages"] if v not in CELL_MV]
    if bad:
        raise _implausible("cell voltage (mV)", bad[0], address)
    bad = [t for t in raw["temperatures"] if t not in DECIKELVIN_RANGE]
    if bad:
        raise _implausible("temperature (0.1 K)", bad[0], address)
    if raw["current"] not in DECIAMPERES:
        raise _implausible("current (0.1 A)", raw["current"], address)
    if raw["voltage"] not in MODULE_MV:
        raise _implausible("module voltage (mV)", raw["voltage"], address)
    if remaining > total * CAPACITY_SLACK + 1000:
        raise _implausible("remaining capacity (mAh)", f"{remaining} of {total}", address)


def _module_values(raw: Mapping[str, Any], address: int) -> ModuleValues:
    # Spelled out rather than through a unit table: this runs for every module of every
    # scrape, and _raw_module_values below is its mirror image.
    if raw["user_defined_items"] >= 4:
        remaining, total = raw["remaining_capacity_3"], raw["total_capacity_3"]
    else:
        remaining, total = raw["remaining_capacity_2"], raw["total_capacity_2"]
    _check_values(raw, remaining, total, address)
    return ModuleValues(
        address=address,
        cell_voltages=tuple(map(MILLI.decode, raw["cell_voltages"])),
        temperatures=tuple(map(DECIKELVIN.decode, raw["temperatures"])),
        current=DECI.decode(raw["current"]),
        voltage=MILLI.decode(raw["voltage"]),
        remaining_capacity=remaining / 1000,
        total_capacity=total / 1000,
        cycle_number=raw["cycle_number"],
        extended_capacity=raw["user_defined_items"] >= 4,
    )


def _raw_module_values(reading: ModuleValues) -> dict[str, Any]:
    remaining = round(reading.remaining_capacity * 1000)
    total = round(reading.total_capacity * 1000)
    raw = {
        "cell_voltages": [MILLI.encode(v) for v in reading.cell_voltages],
        "temperatures": [DECIKELVIN.encode(t) for t in reading.temperatures],
        "current": DECI.encode(reading.current),
        "voltage": MILLI.encode(reading.voltage),
        "cycle_number": reading.cycle_number,
    }
    if reading.extended_capacity:
        raw.update(
            remaining_capacity_2=NO_SHORT_CAPACITY,
            total_capacity_2=NO_SHORT_CAPACITY,
            user_defined_items=4,
            remaining_capacity_3=remaining,
            total_capacity_3=total,
        )
    else:
        raw.update(
            remaining_capacity_2=remaining,
            total_capacity_2=total,
            user_defined_items=2,
            remaining_capacity_3=None,
            total_capacity_3=None,
        )
    return raw


def _module_alarms(raw: Mapping[str, Any], address: int) -> ModuleAlarms:
    values = _convert(raw, ALARM_UNITS, "decode")
    errors = raw["cell_voltage_errors"]
    values["cell_voltage_errors"] = tuple(
        bool(errors >> i & 1) for i in range(min(raw["cell_count"], 16))
    )
    values["protections"] = Protections(**_model_fields(Protections, raw["protections"]))
    values["status"] = ModuleStatus(**_model_fields(ModuleStatus, raw["status"]))
    values["address"] = address
    return ModuleAlarms(**_model_fields(ModuleAlarms, values))


def _raw_module_alarms(reading: ModuleAlarms) -> dict[str, Any]:
    raw = _convert(dataclasses.asdict(reading), ALARM_UNITS, "encode")
    raw["cell_voltage_errors"] = sum(
        1 << i for i, error in enumerate(reading.cell_voltage_errors[:16]) if error
    )
    return raw


#: What compiled construct code raises on INFO that does not fit the layout.
_DECODE_ERRORS = (c.ConstructError, struct.error, UnicodeError, ValueError, TypeError, KeyError)


#: Bytes after the payload that are tolerated: some firmwares append one to 0x44. More
#: means the INFO is something else (say, a late 0x42 answer read as 0x44).
MAX_TRAILING_BYTES = 2


def _parse_whole(struct: c.Construct, info: bytes) -> Any:
    stream = io.BytesIO(info)
    raw = struct.parse_stream(stream)
    extra = len(info) - stream.tell()
    if extra > MAX_TRAILING_BYTES:
        raise ValueError(f"{extra} bytes left over")
    return raw


class Payload(Generic[T]):
    """One declaration, both directions: INFO bytes <-> a typed reading."""

    def __init__(
        self,
        struct: c.Construct,
        to_reading: Callable[[Mapping[str, Any]], T],
        to_raw: Callable[[T], Mapping[str, Any]],
    ) -> None:
        self.struct = struct.compile()
        self._to_reading = to_reading
        self._to_raw = to_raw

    def parse(self, info: bytes) -> T:
        """Decode INFO. Raises :class:`PayloadError` for INFO that does not decode."""
        try:
            return self._to_reading(_parse_whole(self.struct, info))
        except _DECODE_ERRORS as error:
            raise PayloadError(f"cannot decode INFO {info[:24].hex().upper()}: {error}") from None

    def build(self, reading: T, **fields: Any) -> bytes:
        """INFO for ``reading``; ``fields`` set header fields such as ``info_flag``."""
        return bytes(self.struct.build({**self._to_raw(reading), **fields}))


def _flat(
    struct: c.Construct,
    model: type,
    units: Mapping[str, Unit],
    check: Callable[[Mapping[str, Any]], None] | None = None,
) -> Payload[Any]:
    """A payload whose reading is ``model`` field for field (bit flags under ``status``);
    ``check`` refuses raw values no module reports."""

    def to_reading(raw: Mapping[str, Any]) -> Any:
        if check is not None:
            check(raw)
        values = _convert(raw, units, "decode")
        values.update(raw.get("status") or {})
        return model(**_model_fields(model, values))

    def to_raw(reading: Any) -> dict[str, Any]:
        raw = _convert(dataclasses.asdict(reading), units, "encode")
        # A "status" bit field (0x92's flags) takes its flags from the same flat values.
        return {**raw, "status": raw}

    return Payload(struct, to_reading, to_raw)


def _per_module(
    module: c.Construct,
    to_reading: Callable[[Mapping[str, Any], int], T],
    to_raw: Callable[[T], Mapping[str, Any]],
) -> Payload[T]:
    return Payload(
        _single(module),
        lambda raw: to_reading(raw["module"], raw["address"]),
        lambda reading: {"address": reading.address, "module": to_raw(reading)},  # type: ignore[attr-defined]
    )


class BankPayload(Generic[T]):
    """A bank-wide response: every module of a group in address order."""

    def __init__(
        self,
        module: c.Construct,
        to_reading: Callable[[Mapping[str, Any], int], T],
        to_raw: Callable[[T], Mapping[str, Any]],
    ) -> None:
        self.struct = _bank(module).compile()
        self._to_reading = to_reading
        self._to_raw = to_raw

    def parse(self, info: bytes, group: int) -> list[T]:
        """Decode INFO of a bank-wide response of ``group``. Raises :class:`PayloadError`
        when the module count does not match the data (as from firmwares that ignore FF)."""
        first = master_address(group)
        if len(info) > 1 and info[1] > MAX_MODULES_PER_GROUP:
            raise ImplausibleReading(
                f"a bank-wide answer of {info[1]} modules: a group has 16 at most"
            )
        try:
            modules = _parse_whole(self.struct, info)["modules"]
            return [self._to_reading(m, first + i) for i, m in enumerate(modules)]
        except _DECODE_ERRORS as error:
            raise PayloadError(f"cannot decode bank-wide response: {error}") from None

    def build(self, readings: Sequence[T], **fields: Any) -> bytes:
        """INFO for ``readings``; ``fields`` set header fields such as ``info_flag``."""
        modules = [self._to_raw(r) for r in readings]
        return bytes(self.struct.build({"modules": modules, **fields}))


ANALOG_VALUES = _per_module(ANALOG_MODULE, _module_values, _raw_module_values)
ANALOG_VALUES_BANK = BankPayload(ANALOG_MODULE, _module_values, _raw_module_values)
ALARM_INFO = _per_module(ALARM_MODULE, _module_alarms, _raw_module_alarms)
ALARM_INFO_BANK = BankPayload(ALARM_MODULE, _module_alarms, _raw_module_alarms)
SYSTEM_PARAMETERS_INFO: Payload[SystemParameters] = _flat(
    SYSTEM_PARAMETERS, SystemParameters, SYSTEM_PARAMETER_UNITS
)


def _check_management(raw: Mapping[str, Any]) -> None:
    for name in ("charge_voltage_limit", "discharge_voltage_limit"):
        if raw[name] not in MODULE_MV:
            raise _implausible(name.replace("_", " ") + " (mV)", raw[name], raw["address"])
    for name in ("charge_current_limit", "discharge_current_limit"):
        if raw[name] not in DECIAMPERES:
            raise _implausible(name.replace("_", " ") + " (0.1 A)", raw[name], raw["address"])


MANAGEMENT: Payload[ManagementInfo] = _flat(
    MANAGEMENT_INFO, ManagementInfo, MANAGEMENT_UNITS, _check_management
)
SERIAL: Payload[ModuleSerialNumber] = _flat(
    SERIAL_NUMBER, ModuleSerialNumber, {"serial_number": text(16)}
)
SOFTWARE: Payload[SoftwareVersion] = _flat(
    SOFTWARE_VERSION,
    SoftwareVersion,
    {"manufacturer_version": VERSION, "mainline_version": VERSION},
)
MANUFACTURER: Payload[ManufacturerInfo] = _flat(
    MANUFACTURER_INFO,
    ManufacturerInfo,
    {
        "device_name": text(10),
        "software_version": VERSION,
        "manufacturer_name": text(20, pad=b"-"),  # as real modules pad it
    },
)
