"""The snapshot: one consistent reading of every configured bank.

This is the seam between the sources (RS485, ...) that fill it and everything that shows
it (collector, landing page, ``dump``): those depend on this module and :mod:`.models`
only, never on how a source reads its line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .models import (
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
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

    @property
    def up(self) -> bool:
        return self.values is not None


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
