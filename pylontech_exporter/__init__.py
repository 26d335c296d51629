"""Typed, read-only library and Prometheus exporter for Pylontech low-voltage batteries.

Example::

    from pylontech_exporter import Pylontech

    with Pylontech("/dev/ttyUSB0") as bus:
        for module in bus.get_values(group=0).modules:
            print(module.address, module.voltage, module.state_of_charge)

The names below are imported when first used, so that ``import pylontech_exporter.x``
(the exporter's own modules, ``__version__``) does not load the RS485 stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .errors import (
        ChecksumError,
        FrameError,
        ListenOnlyError,
        PayloadError,
        PylontechError,
        ResponseError,
        ResponseTimeout,
        TransportError,
        WriteCommandRefused,
    )
    from .models import (
        AlarmState,
        GroupValues,
        ManagementInfo,
        ManufacturerInfo,
        ModuleAlarms,
        ModuleSerialNumber,
        ModuleStatus,
        ModuleValues,
        Protections,
        ProtocolVersion,
        SoftwareVersion,
        SystemParameters,
        master_address,
        module_address,
        module_position,
    )
    from .rs485.client import Pylontech, RequestStats

_HOMES = {
    ".rs485.client": ("Pylontech", "RequestStats"),
    ".errors": (
        "ChecksumError",
        "FrameError",
        "ListenOnlyError",
        "PayloadError",
        "PylontechError",
        "ResponseError",
        "ResponseTimeout",
        "TransportError",
        "WriteCommandRefused",
    ),
    ".models": (
        "AlarmState",
        "GroupValues",
        "ManagementInfo",
        "ManufacturerInfo",
        "ModuleAlarms",
        "ModuleSerialNumber",
        "ModuleStatus",
        "ModuleValues",
        "Protections",
        "ProtocolVersion",
        "SoftwareVersion",
        "SystemParameters",
        "master_address",
        "module_address",
        "module_position",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted([*_HOME_OF, "__version__"])


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
