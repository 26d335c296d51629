"""The snapshot: one consistent reading of every configured bank.

This is the seam between the sources (RS485, ...) that fill it and everything that shows
it (collector, landing page, ``dump``): those depend on this module and :mod:`.models`
only, never on how a source reads its line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .models import (
    CellHealth,
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
    ModuleDetail,
    ModuleIdentity,
    ModuleStatistics,
    ModuleValues,
    ProtocolVersion,
    SystemParameters,
)


@dataclass
class ModuleReading:
    """What this scrape learned about one module. ``values`` is None when the module's
    analog values were not read: the module is down for this scrape."""

    position: int
    address: int
    values: ModuleValues | None = None
    alarms: ModuleAlarms | None = None
    management: ManagementInfo | None = None
    serial_number: str | None = None
    software_version: str | None = None
    parameters: SystemParameters | None = None
    #: Per part ("values", "alarms", "management", "static"): when (``time.time()``) the
    #: data exported for it was read. Values and alarms are always of this scrape.
    read_at: dict[str, float] = field(default_factory=dict)
    #: Per command name: did the last attempt succeed?
    success: dict[str, bool] = field(default_factory=dict)
    #: RS232 console only (None for RS485): states and per-cell data of this scrape;
    #: identity, lifetime counters and per-cell health read at discovery and hourly
    #: (their read times in ``read_at``: "info", "stat", "soh").
    detail: ModuleDetail | None = None
    identity: ModuleIdentity | None = None
    statistics: ModuleStatistics | None = None
    cell_health: tuple[CellHealth, ...] | None = None

    @property
    def up(self) -> bool:
        return self.values is not None


@dataclass(frozen=True)
class HeardPoll:
    """One kind of request another master sends: a command to an address with an INFO."""

    command: str
    address: int
    #: The request's INFO in hex (``FF``: bank-wide).
    info: str
    requests: int
    #: Median seconds between two of them (None: heard once).
    period: float | None


@dataclass
class ListenStats:
    """What a listen-only bank's line carried since start (another master's traffic)."""

    #: Frames heard by kind: ``request``, ``answer``, ``error_answer``.
    frames: dict[str, int]
    #: Frames heard that could not be used, by reason.
    decode_failures: dict[str, int]
    #: Requests of the master that got no answer.
    unanswered: int
    #: Per command name: seconds between the master's requests of it.
    poll_periods: dict[str, float]
    #: What the master asks, one entry per command, address and INFO.
    polls: list[HeardPoll] = field(default_factory=list)


@dataclass
class BankReading:
    """One bank in one snapshot. ``up`` when at least one module answered."""

    name: str
    group: int
    port: str
    modules: list[ModuleReading] = field(default_factory=list)
    duration: float = 0.0
    manufacturer: ManufacturerInfo | None = None
    protocol_version: ProtocolVersion | None = None
    #: Cumulative counters of this bank's requests.
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    #: False when the deadline cut the read short.
    complete: bool = True
    #: Whether the bank-wide query served the analog values this time.
    bank_query: bool = False
    #: Whether the modules are still being discovered (not the same as down).
    discovering: bool = False
    error: str | None = None
    #: What to change when the read cannot fit (e.g. the scrape timeout it needs).
    hint: str | None = None
    #: Listen-only banks: what the line carried.
    listen: ListenStats | None = None
    #: Console banks: cumulative count, per command, of rows and fields of its answers
    #: that could not be parsed and were skipped (None for RS485).
    unparsed: dict[str, int] | None = None

    @property
    def up(self) -> bool:
        return any(m.up for m in self.modules)


@dataclass
class Snapshot:
    """Every configured bank, read once."""

    banks: list[BankReading]
    #: Wall-clock time (time.time()) when the read finished.
    taken_at: float = 0.0
    #: time.monotonic() when the read finished, for the cache's TTL.
    finished: float = 0.0
    duration: float = 0.0
    #: Seconds the read was allowed (its deadline minus its start).
    budget: float = math.inf

    @property
    def complete(self) -> bool:
        return all(b.complete for b in self.banks)

    @property
    def discovering(self) -> bool:
        return any(b.discovering for b in self.banks)
