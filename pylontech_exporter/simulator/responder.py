"""What a server needs of a protocol's responder, and what a responder answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from ..transport import Framer
from .battery import BatteryStack
from .faults import FaultKind


@dataclass(frozen=True)
class Reply:
    """What goes back on the line: ``data`` (None: silence) after ``delay`` extra seconds,
    at ``pace`` seconds per byte at least (a slow trickle; 0: the line's speed)."""

    data: bytes | None
    delay: float = 0.0
    pace: float = 0.0


SILENCE = Reply(None)


class Responder(Protocol):
    """One protocol spoken by the virtual stack (RS485 slaves, ...)."""

    #: The fault kinds it applies (``pylontech-simulator`` refuses others).
    HONOURED: ClassVar[frozenset[FaultKind]]
    stack: BatteryStack

    def framer(self) -> Framer:
        """A new framer that cuts one connection's incoming bytes into requests."""
        ...

    def handle(self, request: bytes) -> Reply:
        """The answer to one framed request, faults applied."""
        ...
