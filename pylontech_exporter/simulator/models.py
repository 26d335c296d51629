"""Catalogue of the module types the simulator can play.

Each entry holds what a real module of that type reports: its layout (cells, temperature
sensors, capacity form), identity (0x51, 0x96), protection thresholds (0x47) and the
charge/discharge management defaults (0x92). Values are realistic LFP figures, not
copied from one particular firmware.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    temperatures: int
    parameters: SystemParameters
    charge_voltage: float
    discharge_voltage: float
    charge_current: float
    #: Signed as the BMS reports it in 0x92 (negative).
    discharge_current: float
    manufacturer: str = "PYLON"
    #: 0x51 software version (2 numbers) and 0x96 versions (2 and 3 numbers).
    software_version: str = "1.4"
    manufacturer_version: str = "1.4"
    mainline_version: str = "2.7.4"
    #: Whether the firmware answers the FF bank-wide query (some ignore it).
    bank_query_supported: bool = True
    #: Whether a master answers 0x4F and 0x51 at ADR 0 (the US5000 rejects ADR 0).
    answers_address_zero: bool = True
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
    **extra: object,
) -> ModuleModel:
    limit = round(capacity / 2, 1)
    return ModuleModel(
        name=name,
        device_name=device_name,
        cells=cells,
        capacity=capacity,
        extended_capacity=extended,
        temperatures=temperatures,
        parameters=_parameters(cells, capacity),
        # 53.2 V / 44.5 V for 15 cells, scaled for 8 and 16 cells.
        charge_voltage=round(cells * 3.547, 1),
        discharge_voltage=round(cells * 2.967, 1),
        charge_current=limit,
        discharge_current=-limit,
        **extra,  # type: ignore[arg-type]
    )


MODELS: dict[str, ModuleModel] = {
    m.name: m
    for m in (
        _model(
            "US2000B-Plus",
            "US2000B",
            15,
            50.0,
            False,
            5,
            software_version="1.2",
            manufacturer_version="1.2",
            mainline_version="2.1.3",
            serial_prefix="PPTAH",
        ),
        _model("US2000C", "US2000C", 15, 50.0, False, 6, bank_query_supported=False),
        _model("US3000C", "US3000C", 15, 74.0, True, 6, serial_prefix="PPTCH"),
        _model(
            "US5000",
            "US5000",
            15,
            100.0,
            True,
            6,
            serial_prefix="PPTDH",
            answers_address_zero=False,
        ),
        _model("UP2500", "UP2500", 8, 50.0, False, 5, serial_prefix="PPTUP"),
        _model(
            "US5000-16S",
            "US5000",
            16,
            100.0,
            True,
            6,
            serial_prefix="PPTDS",
            answers_address_zero=False,
        ),
    )
}


def get_model(name: str) -> ModuleModel:
    """The catalogue entry ``name``; raises ``KeyError`` listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
