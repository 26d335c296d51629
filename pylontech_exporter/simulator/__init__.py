"""A virtual Pylontech stack that answers the RS485 protocol like real modules.

Used by the tests, the demo mode and the benchmarks. Layers: :mod:`.models` (module
catalogue), :mod:`.battery` (state and physics), :mod:`.responder` (request bytes ->
answer bytes, no I/O), :mod:`.faults` (fault injection), :mod:`.serve` (pty and TCP
servers), :mod:`.cli` (``pylontech-simulator``).
"""

from .battery import BatteryStack, ConstantCurrent, SineLoad, VirtualModule, ocv
from .faults import FAULT_HELP, Fault, FaultKind, FaultPlan, parse_fault
from .models import MODELS, ModuleModel, get_model
from .responder import Reply
from .serve import PtySimulator, TcpSimulator, serve_pty, serve_tcp

__all__ = [
    "FAULT_HELP",
    "MODELS",
    "BatteryStack",
    "ConstantCurrent",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "ModuleModel",
    "PtySimulator",
    "Reply",
    "SineLoad",
    "TcpSimulator",
    "VirtualModule",
    "get_model",
    "ocv",
    "parse_fault",
    "serve_pty",
    "serve_tcp",
]
