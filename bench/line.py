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
computed from the actual frames. ``lenient_info`` accepts the 2-byte per-module INFO
(address, position) that the ``pylontech`` 0.1.3 package sends: the spec and the simulator
want one byte, real firmwares evidently take both.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pylontech_exporter.rs485.frame import decode_frame, encode_frame
from pylontech_exporter.simulator import BatteryStack, PtySimulator, Reply, Rs485Responder

_PER_MODULE = frozenset({0x42, 0x44, 0x92, 0x93, 0x96})


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
    lenient_info: bool = False
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
        if self.lenient_info:
            request = _one_byte_info(request)
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


def _one_byte_info(request: bytes) -> bytes:
    """A per-module request with INFO (address, position) as the same with INFO address."""
    try:
        frame = decode_frame(request[request.rfind(b"~") :])
    except Exception:
        return request
    if frame.cid2 in _PER_MODULE and len(frame.info) == 2 and frame.info[0] == frame.address:
        return encode_frame(
            type(frame)(frame.version, frame.address, frame.cid1, frame.cid2, frame.info[:1])
        )
    return request


__all__ = ["Exchange", "Line"]
