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

__all__ = [
    "AlarmState",
    "ChecksumError",
    "FrameError",
    "GroupValues",
    "ListenOnlyError",
    "ManagementInfo",
    "ManufacturerInfo",
    "ModuleAlarms",
    "ModuleSerialNumber",
    "ModuleStatus",
    "ModuleValues",
    "PayloadError",
    "Protections",
    "ProtocolVersion",
    "Pylontech",
    "PylontechError",
    "RequestStats",
    "ResponseError",
    "ResponseTimeout",
    "SoftwareVersion",
    "SystemParameters",
    "TransportError",
    "WriteCommandRefused",
    "__version__",
    "master_address",
    "module_address",
    "module_position",
]
#: Where the names come from, the RS485 stack last (it loads pyserial).
_HOMES = (".errors", ".models", ".rs485.client")


def __getattr__(name: str) -> Any:
    if name in __all__:
        for home in _HOMES:
            module = importlib.import_module(home, __name__)
            if hasattr(module, name):
                value = getattr(module, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
