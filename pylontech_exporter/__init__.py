"""Typed, read-only library and Prometheus exporter for Pylontech low-voltage batteries.

Example::

    from pylontech_exporter import Pylontech

    with Pylontech("/dev/ttyUSB0") as bus:
        for module in bus.get_values(group=0).modules:
            print(module.address, module.voltage, module.state_of_charge)
"""

__version__ = "0.1.0"

from .client import Pylontech, RequestStats
from .errors import (
    ChecksumError,
    FrameError,
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

__all__ = [
    "AlarmState",
    "ChecksumError",
    "FrameError",
    "GroupValues",
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
