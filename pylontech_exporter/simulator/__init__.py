"""A virtual Pylontech stack that answers like real modules.

Used by the tests, the demo mode and the benchmarks. Layers: :mod:`.models` (module
catalogue), :mod:`.battery` (state and physics, no wire), :mod:`.rs485` (the RS485 slave:
request bytes -> answer bytes, no I/O), :mod:`.faults` (fault injection), :mod:`.serve`
(pty and TCP servers for any :class:`~.responder.Responder`), :mod:`.cli`
(``pylontech-simulator``).
"""

from .battery import BatteryStack, ConstantCurrent, SineLoad, VirtualModule, ocv
from .faults import FAULT_HELP, Fault, FaultKind, FaultPlan, parse_fault
from .models import MODELS, ModuleModel, get_model, with_cells
from .responder import Reply, Responder
from .rs485 import Rs485Responder
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
    "Responder",
    "Rs485Responder",
    "SineLoad",
    "TcpSimulator",
    "VirtualModule",
    "get_model",
    "ocv",
    "parse_fault",
    "serve_pty",
    "serve_tcp",
    "with_cells",
]
