"""Catalogue of the module types the simulator can play.

Each entry holds what a real module of that type reports: its layout (cells, temperature
sensors, capacity form), identity (0x51, 0x96), protection thresholds (0x47) and the
charge/discharge management defaults (0x92). Values are realistic LFP figures, not
copied from one particular firmware.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..models import SystemParameters
from ..rs485.frame import REQUEST_VERSION


@dataclass(frozen=True)
class ModuleModel:
    """One module type. Voltages in V, currents in A, temperatures in degrees Celsius."""

    name: str
    #: Device name reported by 0x51 (10 characters at most on the wire).
    device_name: str
    cells: int
    #: Nominal (full) capacity in Ah.
    capacity: float
    #: True for the 4-item (3-byte capacity) form of 0x42, used by modules over 65 Ah.
    extended_capacity: bool
    #: BMS board and cell groups 1-4; a sixth (MOSFET) on the US5000 only.
    temperatures: int
    parameters: SystemParameters
    charge_voltage: float
    discharge_voltage: float
    charge_current: float
    #: Signed as the BMS reports it in 0x92 (negative).
    discharge_current: float
    #: 0x51 manufacturer name (on the wire padded with dashes, as recorded).
    manufacturer: str = "Pylon"
    #: 0x51 software version (2 numbers) and 0x96 versions (2 and 3 numbers).
    software_version: str = "1.4"
    manufacturer_version: str = "1.4"
    mainline_version: str = "2.7.4"
    #: Whether the firmware answers the FF bank-wide query (a US2000C stays silent).
    bank_query_supported: bool = True
    #: Whether a single-module 0x44 answer ends with one extra 00 byte (33 bytes on a
    #: 15-cell module; recorded on US2000C, US3000C and newer US2000B-Plus firmware).
    alarm_trailing_byte: bool = False
    #: VER of every response; 0x4F reports it as the protocol version.
    protocol_version: int = REQUEST_VERSION
    serial_prefix: str = "PPTBH"


def _parameters(cells: int, capacity: float) -> SystemParameters:
    """0x47 thresholds for an LFP module: per-cell limits scaled to the series count,
    current limits at 0.5 C (0.1 A resolution on the wire)."""
    limit = round(capacity / 2, 1)
    return SystemParameters(
        cell_high_voltage_limit=3.7,
        cell_low_voltage_limit=3.05,
        cell_under_voltage_limit=2.9,
        charge_high_temperature_limit=60.0,
        charge_low_temperature_limit=0.0,
        charge_current_limit=limit,
        module_high_voltage_limit=round(cells * 3.6, 3),
        module_low_voltage_limit=round(cells * 3.1, 3),
        module_under_voltage_limit=round(cells * 2.9, 3),
        discharge_high_temperature_limit=60.0,
        discharge_low_temperature_limit=-10.0,
        discharge_current_limit=-limit,
    )


def _model(
    name: str,
    device_name: str,
    cells: int,
    capacity: float,
    extended: bool,
    temperatures: int,
    **extra: Any,
) -> ModuleModel:
    limit = round(capacity / 2, 1)
    fields: dict[str, Any] = {
        # 53.2 V / 44.5 V for 15 cells, scaled for other cell counts.
        "charge_voltage": round(cells * 3.547, 1),
        "discharge_voltage": round(cells * 2.967, 1),
        "charge_current": limit,
        "discharge_current": -limit,
        **extra,
    }
    return ModuleModel(
        name=name,
        device_name=device_name,
        cells=cells,
        capacity=capacity,
        extended_capacity=extended,
        temperatures=temperatures,
        parameters=_parameters(cells, capacity),
        **fields,
    )


def with_cells(model: ModuleModel, cells: int) -> ModuleModel:
    """``model`` with another cell count (8..16), its voltages and thresholds scaled."""
    if not 8 <= cells <= 16:
        raise ValueError(f"a module has 8 to 16 cells, not {cells}")
    if cells == model.cells:
        return model
    return dataclasses.replace(
        model,
        name=f"{model.name}-{cells}S",
        cells=cells,
        parameters=_parameters(cells, model.capacity),
        charge_voltage=round(model.charge_voltage * cells / model.cells, 1),
        discharge_voltage=round(model.discharge_voltage * cells / model.cells, 1),
    )


MODELS: dict[str, ModuleModel] = {
    m.name: m
    for m in (
        _model(
            "US2000B-Plus",
            "US2KBPL",
            15,
            50.0,
            False,
            5,
            software_version="1.2",
            manufacturer_version="1.2",
            mainline_version="2.1.3",
            alarm_trailing_byte=True,
            serial_prefix="PPTAH",
        ),
        _model(
            "US2000C",
            "US2000C",
            15,
            50.0,
            False,
            5,
            bank_query_supported=False,
            alarm_trailing_byte=True,
        ),
        _model("US3000", "US3000", 15, 74.0, True, 5, serial_prefix="PPTBH"),
        _model(
            "US3000C", "US3000C", 15, 74.0, True, 5, alarm_trailing_byte=True, serial_prefix="PPTCH"
        ),
        _model("US5000", "US5000", 15, 100.0, True, 6, serial_prefix="PPTDH"),
        # 24 V, 2.84 kWh: 8 cells, 111 Ah (4-item form); 0x92 as recorded.
        _model(
            "UP2500",
            "UP2500",
            8,
            111.0,
            True,
            5,
            charge_voltage=28.4,
            discharge_voltage=23.2,
            charge_current=55.5,
            discharge_current=-55.5,
            serial_prefix="PPTUP",
        ),
        _model("US5000-16S", "US5000", 16, 100.0, True, 6, serial_prefix="PPTDS"),
    )
}


def get_model(name: str) -> ModuleModel:
    """The catalogue entry ``name``; raises ``KeyError`` listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
