"""The emulated RS485 line: a simulator whose timing is exactly the wire's.

The simulator paces its answers at the baud rate after ``latency`` seconds, counted from
when it has built the answer. For a benchmark against the wire limit two things are added
here, around the stack (the simulator itself is unchanged):

- the request's own time on the wire (its bytes x 10 / baud: a pty or socket delivers it
  at once) is waited for before the latency starts, and
- the simulator's time to build the answer (physics, construct) is taken out of the
  latency, so that the first byte comes ``latency`` after the request's last byte, as the
  floor assumes, whatever this machine's speed.

Every exchange is recorded (request and answer sizes), which gives the floor of a read
computed from the actual frames.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pylontech_exporter.simulator import (
    BatteryStack,
    PtySimulator,
    Reply,
    Rs485Responder,
    TcpSimulator,
)


@dataclass
class Exchange:
    """One answered request: sizes on the wire, and what was asked of whom."""

    request: int
    response: int
    address: int
    command: int


@dataclass
class Line:
    """Wraps the RS485 responder's ``handle`` and ``stack.sync`` of a stack served by
    ``server``."""

    stack: BatteryStack
    baudrate: int | None = None
    latency: float = 0.0
    exchanges: list[Exchange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.responder = Rs485Responder(self.stack)
        self._handle = self.responder.handle
        self._sync = self.stack.sync
        self._started = 0.0
        self._lock = threading.Lock()
        self.responder.handle = self._timed_handle  # type: ignore[method-assign]
        self.stack.sync = self._timed_sync  # type: ignore[method-assign]

    def serve_pty(self, link: str) -> PtySimulator:
        server = PtySimulator(self.responder, link, baudrate=None, latency=0.0)
        self._server: PtySimulator | TcpSimulator = server
        self.set_speed(self.baudrate, self.latency)
        return server

    def serve_tcp(self) -> TcpSimulator:
        """The line behind a TCP gateway (for clients that need a real port's ioctls)."""
        server = TcpSimulator(self.responder, baudrate=None, latency=0.0)
        self._server = server
        self.set_speed(self.baudrate, self.latency)
        return server

    def set_speed(self, baudrate: int | None, latency: float) -> None:
        """Wire speed from now on (None, 0: as fast as possible)."""
        self.baudrate, self.latency = baudrate, latency
        self._server.baudrate = baudrate
        self._server.latency = latency

    def reset(self) -> list[Exchange]:
        with self._lock:
            done, self.exchanges = self.exchanges, []
        return done

    def floor(self, exchanges: list[Exchange] | None = None) -> float:
        """Seconds the recorded exchanges need at least on this line."""
        exchanges = self.exchanges if exchanges is None else exchanges
        assert self.baudrate
        wire = sum(e.request + e.response for e in exchanges) * 10 / self.baudrate
        return wire + self.latency * len(exchanges)

    def _timed_sync(self) -> None:
        self._started = time.monotonic()
        self._sync()

    def _timed_handle(self, request: bytes) -> Reply:
        sent = request
        reply = self._handle(request)
        if reply.data is None:
            return reply
        with self._lock:
            start = sent.rfind(b"~")
            address = int(sent[start + 3 : start + 5], 16)
            command = int(sent[start + 7 : start + 9], 16)
            self.exchanges.append(Exchange(len(sent), len(reply.data), address, command))
        on_wire = len(sent) * 10 / self.baudrate if self.baudrate else 0.0
        spent = time.monotonic() - self._started
        return Reply(reply.data, max(-self.latency, reply.delay + on_wire - spent))


__all__ = ["Exchange", "Line"]
