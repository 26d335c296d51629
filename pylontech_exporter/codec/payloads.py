"""INFO payloads of the read commands, each declared once with construct.

Every declaration both parses a response and builds one: the client parses with it and
the simulator builds with it, so the two cannot drift apart. Field names match the
dataclasses in :mod:`pylontech_exporter.models`, and adapters convert the wire's fixed
point to base units, so mapping to and from the dataclasses is by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable, Generic, TypeVar

import construct as c

from ..errors import PayloadError
from ..models import (
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


def _scaled(subcon: c.Construct, divisor: int) -> c.Construct:
    """Fixed point: value = raw / divisor."""
    return c.ExprAdapter(
        subcon, lambda raw, ctx: raw / divisor, lambda value, ctx: round(value * divisor)
    )


def _text(length: int) -> c.Construct:
    """Fixed-width ASCII, padded with NULs or spaces on the wire."""
    return c.ExprAdapter(
        c.Bytes(length),
        lambda raw, ctx: raw.decode("ascii").rstrip("\x00 "),
        lambda text, ctx: text.encode("ascii")[:length].ljust(length, b"\x00"),
    )


def _version(length: int) -> c.Construct:
    """A version as ``length`` bytes, shown as dotted numbers ("1.4", "2.7.4")."""
    return c.ExprAdapter(
        c.Bytes(length),
        lambda raw, ctx: ".".join(str(b) for b in raw),
        lambda text, ctx: bytes(int(part) for part in text.split(".")),
    )


CellVolts = _scaled(c.Int16sb, 1000)
ModuleVolts = _scaled(c.Int16ub, 1000)
Amperes = _scaled(c.Int16sb, 10)  # 0.1 A units, whatever the PDF says
Celsius = c.ExprAdapter(
    c.Int16sb, lambda raw, ctx: (raw - 2731) / 10, lambda value, ctx: round(value * 10) + 2731
)
State = c.ExprAdapter(c.Int8ub, lambda raw, ctx: AlarmState.from_raw(raw), lambda s, ctx: int(s))


def _milliamp_hours(ah: float) -> int:
    return round(ah * 1000)


ANALOG_MODULE = c.Struct(
    "cell_count" / c.Rebuild(c.Int8ub, c.len_(c.this.cell_voltages)),
    "cell_voltages" / c.Array(c.this.cell_count, CellVolts),
    "temperature_count" / c.Rebuild(c.Int8ub, c.len_(c.this.temperatures)),
    "temperatures" / c.Array(c.this.temperature_count, Celsius),
    "current" / Amperes,
    "voltage" / ModuleVolts,
    "remaining_capacity_2"
    / c.Rebuild(
        c.Int16ub,
        lambda ctx: (
            NO_SHORT_CAPACITY if ctx.extended_capacity else _milliamp_hours(ctx.remaining_capacity)
        ),
    ),
    "user_defined_items" / c.Rebuild(c.Int8ub, lambda ctx: 4 if ctx.extended_capacity else 2),
    "total_capacity_2"
    / c.Rebuild(
        c.Int16ub,
        lambda ctx: (
            NO_SHORT_CAPACITY if ctx.extended_capacity else _milliamp_hours(ctx.total_capacity)
        ),
    ),
    "cycle_number" / c.Int16ub,
    "capacity_3"
    / c.If(
        c.this.user_defined_items >= 4,
        c.Rebuild(
            c.Struct("remaining" / c.Int24ub, "total" / c.Int24ub),
            lambda ctx: {
                "remaining": _milliamp_hours(ctx.remaining_capacity),
                "total": _milliamp_hours(ctx.total_capacity),
            },
        ),
    ),
    "extended_capacity" / c.Computed(c.this.user_defined_items >= 4),
    "remaining_capacity"
    / c.Computed(
        lambda ctx: (
            (ctx.capacity_3.remaining if ctx.extended_capacity else ctx.remaining_capacity_2) / 1000
        )
    ),
    "total_capacity"
    / c.Computed(
        lambda ctx: (ctx.capacity_3.total if ctx.extended_capacity else ctx.total_capacity_2) / 1000
    ),
)

ALARM_MODULE = c.Struct(
    "cell_count" / c.Rebuild(c.Int8ub, c.len_(c.this.cell_states)),
    "cell_states" / c.Array(c.this.cell_count, State),
    "temperature_count" / c.Rebuild(c.Int8ub, c.len_(c.this.temperature_states)),
    "temperature_states" / c.Array(c.this.temperature_count, State),
    "charge_current_state" / State,
    "voltage_state" / State,
    "discharge_current_state" / State,
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
    "cell_voltage_errors"
    / c.ExprAdapter(
        c.Int16ul,
        lambda raw, ctx: tuple(bool(raw >> i & 1) for i in range(min(ctx.cell_count, 16))),
        lambda errors, ctx: sum(1 << i for i, error in enumerate(errors[:16]) if error),
    ),
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


SYSTEM_PARAMETERS = c.Struct(
    "info_flag" / c.Default(c.Int8ub, INFO_FLAG),
    "cell_high_voltage_limit" / CellVolts,
    "cell_low_voltage_limit" / CellVolts,
    "cell_under_voltage_limit" / CellVolts,
    "charge_high_temperature_limit" / Celsius,
    "charge_low_temperature_limit" / Celsius,
    "charge_current_limit" / Amperes,
    "module_high_voltage_limit" / ModuleVolts,
    "module_low_voltage_limit" / ModuleVolts,
    "module_under_voltage_limit" / ModuleVolts,
    "discharge_high_temperature_limit" / Celsius,
    "discharge_low_temperature_limit" / Celsius,
    "discharge_current_limit" / Amperes,
)

MANAGEMENT_INFO = c.Struct(
    "address" / c.Int8ub,
    "charge_voltage_limit" / ModuleVolts,
    "discharge_voltage_limit" / ModuleVolts,
    "charge_current_limit" / Amperes,
    "discharge_current_limit" / Amperes,
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

SERIAL_NUMBER = c.Struct("address" / c.Int8ub, "serial_number" / _text(16))

SOFTWARE_VERSION = c.Struct(
    "address" / c.Int8ub,
    "manufacturer_version" / _version(2),
    "mainline_version" / _version(3),
)

MANUFACTURER_INFO = c.Struct(
    "device_name" / _text(10),
    "software_version" / _version(2),
    "manufacturer_name" / _text(20),
)


T = TypeVar("T")


def _fields_of(model: type, container: Any) -> dict[str, Any]:
    """The values of ``model``'s fields found in ``container`` (lists become tuples)."""
    values = {}
    for field in dataclasses.fields(model):
        if field.name in container:
            value = container[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


class Payload(Generic[T]):
    """One declaration, both directions: INFO bytes <-> a typed reading."""

    def __init__(
        self,
        struct: c.Construct,
        to_model: Callable[[Any], T],
        to_container: Callable[[T], Any] = dataclasses.asdict,
    ) -> None:
        self.struct = struct
        self._to_model = to_model
        self._to_container = to_container

    def parse(self, info: bytes) -> T:
        """Decode INFO; trailing bytes are ignored (some firmwares append one).
        Raises :class:`PayloadError` for INFO that does not decode."""
        try:
            return self._to_model(self.struct.parse(info))
        except (c.ConstructError, UnicodeError, ValueError, TypeError, AttributeError) as error:
            raise PayloadError(f"cannot decode {self.struct.name or 'INFO'}: {error}") from None

    def build(self, reading: T) -> bytes:
        return self.struct.build(self._to_container(reading))


def _flat(model: type) -> Callable[[Any], Any]:
    """Container -> ``model`` by field names (nested bit fields flattened in)."""

    def convert(container: Any) -> Any:
        merged = dict(container)
        merged.update(container.get("status") or {})
        return model(**_fields_of(model, merged))

    return convert


def _nest_status(reading: Any) -> dict[str, Any]:
    """Inverse of :func:`_flat` for readings whose flags live in a ``status`` bit field."""
    flat = dataclasses.asdict(reading)
    return {**flat, "status": flat}


def _module_values(container: Any, address: int) -> ModuleValues:
    return ModuleValues(address=address, **_fields_of(ModuleValues, container))


def _module_alarms(container: Any, address: int) -> ModuleAlarms:
    values = _fields_of(ModuleAlarms, container)
    values["protections"] = Protections(**_fields_of(Protections, container.protections))
    values["status"] = ModuleStatus(**_fields_of(ModuleStatus, container.status))
    return ModuleAlarms(address=address, **values)


def _per_module(module: c.Construct, to_model: Callable[[Any, int], T]) -> Payload[T]:
    return Payload(
        _single(module),
        lambda container: to_model(container.module, container.address),
        lambda reading: {
            "address": reading.address,  # type: ignore[attr-defined]
            "module": dataclasses.asdict(reading),  # type: ignore[call-overload]
        },
    )


class BankPayload(Generic[T]):
    """A bank-wide response: every module of a group in address order."""

    def __init__(self, module: c.Construct, to_model: Callable[[Any, int], T]) -> None:
        self.struct = _bank(module)
        self._to_model = to_model

    def parse(self, info: bytes, group: int) -> list[T]:
        """Decode INFO of a bank-wide response of ``group``. Raises :class:`PayloadError`
        when the module count does not match the data (as from firmwares that ignore FF)."""
        first = master_address(group)
        try:
            container = self.struct.parse(info)
            return [self._to_model(m, first + i) for i, m in enumerate(container.modules)]
        except (c.ConstructError, ValueError, TypeError, AttributeError) as error:
            raise PayloadError(f"cannot decode bank-wide response: {error}") from None

    def build(self, readings: Sequence[T]) -> bytes:
        return self.struct.build({"modules": [dataclasses.asdict(r) for r in readings]})  # type: ignore[call-overload]


ANALOG_VALUES: Payload[ModuleValues] = _per_module(ANALOG_MODULE, _module_values)
ANALOG_VALUES_BANK: BankPayload[ModuleValues] = BankPayload(ANALOG_MODULE, _module_values)
ALARM_INFO: Payload[ModuleAlarms] = _per_module(ALARM_MODULE, _module_alarms)
ALARM_INFO_BANK: BankPayload[ModuleAlarms] = BankPayload(ALARM_MODULE, _module_alarms)
SYSTEM_PARAMETERS_INFO: Payload[SystemParameters] = Payload(
    SYSTEM_PARAMETERS, _flat(SystemParameters)
)
MANAGEMENT: Payload[ManagementInfo] = Payload(MANAGEMENT_INFO, _flat(ManagementInfo), _nest_status)
SERIAL: Payload[ModuleSerialNumber] = Payload(SERIAL_NUMBER, _flat(ModuleSerialNumber))
SOFTWARE: Payload[SoftwareVersion] = Payload(SOFTWARE_VERSION, _flat(SoftwareVersion))
MANUFACTURER: Payload[ManufacturerInfo] = Payload(MANUFACTURER_INFO, _flat(ManufacturerInfo))
