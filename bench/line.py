"""The emulated line: a simulator whose timing is exactly the wire's (RS485 here; the
console's line is :class:`bench.console.ConsoleLine`, on the same :class:`PacedLine`).

The simulator paces its answers at the baud rate after ``latency`` seconds, counted from
when it has built the answer. For a benchmark against the wire limit two things are added
here, around the stack (the simulator itself is unchanged):

- the request's own time on the wire (its bytes x 10 / baud: a pty or socket delivers it
  at once) is waited for before the latency starts, and
- the simulator's time to build the answer (physics, construct) is taken out of the
  latency, so that the first byte comes ``latency`` after the request's last byte, as the
  floor assumes, whatever this machine's speed.

Every exchange is recorded (when, request and answer sizes, address and command), which
gives the floor of a read computed from the actual frames, and what was on the wire
during a scrape.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pylontech_exporter.rs485.frame import encode_request
from pylontech_exporter.simulator import (
    BatteryStack,
    PtySimulator,
    Reply,
    Responder,
    Rs485Responder,
    TcpSimulator,
)

#: The module model of every benchmark stack: 16 cells, 6 temperatures, 3-byte capacities.
MODEL = "US5000-16S"
#: Seconds from a request's last byte to the answer's first, as measured on real modules.
LATENCY = 0.07


@dataclass
class Exchange:
    """One answered request: when its answer was due to start (time.monotonic()), sizes
    on the wire, and what was asked of whom."""

    at: float
    request: int
    response: int
    address: int
    command: int
    info: bytes = b""

    def describe(self) -> str:
        """``42@12 FF`` style: command, address, bank-wide marker."""
        target = "FF" if self.info[:2] == b"FF" else ""
        return f"{self.command:02X}@{self.address:02X}{' ' + target if target else ''}"


class Recorded(Protocol):
    """What the floor needs of an exchange: when, and bytes each way."""

    at: float
    request: int
    response: int


E = TypeVar("E", bound=Recorded)


@dataclass
class PacedLine(Generic[E]):
    """Wraps a responder's ``handle`` and ``stack.sync`` of a stack served by
    ``serve_pty``/``serve_tcp``: the line's timing as above, and a record ``E`` of every
    exchange (:meth:`record` says what is kept of one)."""

    stack: BatteryStack
    baudrate: int | None = None
    latency: float = 0.0
    exchanges: list[E] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.responder = self.make_responder()
        self._handle = self.responder.handle
        self._sync = self.stack.sync
        self._started = 0.0
        self._lock = threading.Lock()
        self.responder.handle = self._timed_handle  # type: ignore[method-assign]
        self.stack.sync = self._timed_sync  # type: ignore[method-assign]

    def make_responder(self) -> Responder:
        raise NotImplementedError

    def record(self, at: float, request: bytes, answer: bytes) -> E:
        """What is kept of ``request`` answered by ``answer`` (due to start at ``at``)."""
        raise NotImplementedError

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

    def reset(self) -> list[E]:
        """The exchanges recorded so far; the record starts again empty."""
        with self._lock:
            done, self.exchanges = self.exchanges, []
        return done

    def between(self, start: float, end: float) -> list[E]:
        """The recorded exchanges that began within [start, end] (time.monotonic())."""
        with self._lock:
            return [e for e in self.exchanges if start <= e.at <= end]

    def floor(self, exchanges: Iterable[E] | None = None) -> float:
        """Seconds the exchanges (default: those recorded) need at least on this line."""
        done = list(self.exchanges if exchanges is None else exchanges)
        assert self.baudrate
        wire = sum(e.request + e.response for e in done) * 10 / self.baudrate
        return wire + self.latency * len(done)

    def _timed_sync(self) -> None:
        self._started = time.monotonic()
        self._sync()

    def _timed_handle(self, request: bytes) -> Reply:
        reply = self._handle(request)
        if reply.data is None:
            return reply
        exchange = self.record(self._started, request, reply.data)
        with self._lock:
            self.exchanges.append(exchange)
        on_wire = len(request) * 10 / self.baudrate if self.baudrate else 0.0
        spent = time.monotonic() - self._started
        return Reply(reply.data, max(-self.latency, reply.delay + on_wire - spent), reply.pace)


class Line(PacedLine[Exchange]):
    """The RS485 line: the stack's RS485 responder, every frame recorded."""

    def make_responder(self) -> Responder:
        return Rs485Responder(self.stack)

    def record(self, at: float, request: bytes, answer: bytes) -> Exchange:
        start = request.rfind(b"~")
        return Exchange(
            at=at,
            request=len(request),
            response=len(answer),
            address=int(request[start + 3 : start + 5], 16),
            command=int(request[start + 7 : start + 9], 16),
            info=bytes(request[start + 13 : -5]),
        )


def make_stack(modules: int, groups: int) -> BatteryStack:
    """The benchmark stack: ``modules`` x MODEL per group, values held still."""
    stack = BatteryStack(modules=modules, groups=groups, model=MODEL, seed=modules * 10 + groups)
    stack.freeze()
    return stack


@contextlib.contextmanager
def simulated(
    modules: int,
    groups: int,
    *,
    baudrate: int | None = 115200,
    latency: float = 0.0,
    tcp: bool = False,
) -> Iterator[tuple[Line, str]]:
    """A stack of ``modules`` x ``groups`` on a fresh pty (or TCP gateway): (line, port:
    the pty's path or a ``socket://`` URL). Unpaced, a 2 KB answer can overflow the pty
    buffer before the client reads it and the simulator drops what does not fit: keep a
    baud rate."""
    line = Line(make_stack(modules, groups), baudrate=baudrate, latency=latency)
    if tcp:
        with line.serve_tcp() as server:
            yield line, server.url
        return
    with tempfile.TemporaryDirectory(prefix="pylontech-bench-") as folder:
        link = os.path.join(folder, "battery")
        with line.serve_pty(link):
            yield line, link


def wire_floor(
    stack: BatteryStack, baudrate: int, latency: float, requests: Iterable[tuple[int, int, bytes]]
) -> float:
    """Seconds ``requests`` ((address, command, info)) need at least on a line: their
    frames and the simulator's answers, at ``baudrate``, plus ``latency`` each."""
    responder = Rs485Responder(stack)
    total = 0.0
    for address, command, info in requests:
        request = encode_request(address, command, info)
        answer = responder.respond(request)
        size = len(request) + (len(answer) if answer else 0)
        total += size * 10 / baudrate + latency
    return total


def values_and_alarms(stack: BatteryStack) -> list[tuple[int, int, bytes]]:
    """The requests for every module's analog values and alarms: bank-wide per group."""
    return [
        (0x02 + 0x10 * group, command, b"\xff")
        for group in stack.groups
        for command in (0x42, 0x44)
    ]


__all__ = [
    "LATENCY",
    "MODEL",
    "Exchange",
    "Line",
    "PacedLine",
    "make_stack",
    "simulated",
    "values_and_alarms",
    "wire_floor",
]
