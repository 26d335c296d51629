"""What is remembered about one bank between scrapes, whatever the source reads it.

A :class:`Bank` knows which modules the bank has (verified by discovery, or fixed by the
configuration), keeps what is read less often than every scrape (static data, the
charge/discharge management info) with the time it was read, counts the bank's requests
and failures, and turns what a source read in one scrape into a
:class:`~pylontech_exporter.snapshot.BankReading`: modules known but not read are there,
down; the bank going down or coming back is logged once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Callable

from .config import BankConfig
from .errors import FAILURE_REASONS
from .logging_setup import kv
from .models import (
    ManagementInfo,
    ManufacturerInfo,
    ProtocolVersion,
    SystemParameters,
    module_address,
)
from .snapshot import BankReading, ModuleReading

log = logging.getLogger(__name__)

#: Static data (serials, versions, thresholds) is read again after this many seconds.
STATIC_REFRESH_SECONDS = 3600.0
#: Re-discovery after a module stopped answering happens at most this often.
REDISCOVER_SECONDS = 300.0
#: A module that answered nothing for this long and that a rediscovery did not find is
#: no longer expected (until then it is exported as down).
DROP_AFTER_SECONDS = 3600.0
#: Management info (0x92) older than this is not exported.
MANAGEMENT_MAX_AGE = 60.0
#: A discovery that found nothing is tried again after this many seconds.
EMPTY_RETRY_SECONDS = 10.0
#: A port that failed (cannot be opened, connection lost) pauses background work this long.
BACKGROUND_RETRY = 2.0


@dataclass
class ModuleMemory:
    """What is kept of one module between scrapes; times are ``clock()`` values."""

    serial_number: str | None = None
    software_version: str | None = None
    parameters: SystemParameters | None = None
    #: When the static data above was last read completely (None: never).
    static_at: float | None = None
    static_wall: float = 0.0
    management: ManagementInfo | None = None
    management_at: float = -math.inf
    management_wall: float = 0.0
    #: Per command name: did the last attempt succeed?
    success: dict[str, bool] = field(default_factory=dict)
    #: When the module last answered anything.
    last_answer: float = -math.inf
    #: Parts of the static data still to read in the refresh under way.
    static_pending: list[str] = field(default_factory=list)


class Bank:
    """One bank's memory: known modules (by 1-based position), what they said, counters."""

    def __init__(
        self,
        config: BankConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        static_refresh: float = STATIC_REFRESH_SECONDS,
        rediscover: float = REDISCOVER_SECONDS,
        drop_after: float = DROP_AFTER_SECONDS,
    ) -> None:
        self.config = config
        self.name = config.name
        self.group = config.group
        self.clock = clock
        self.wall = wall
        self.static_refresh = static_refresh
        self.rediscover_after = rediscover
        self.drop_after = drop_after
        self.modules: dict[int, ModuleMemory] = {}
        for position in range(1, (config.modules or 0) + 1):
            self.modules[position] = ModuleMemory()
        #: When the last complete discovery ended (None: never).
        self.last_discovery: float | None = None
        #: Why a discovery is wanted (None: it is not), and from when on.
        self.discovery_reason: str | None = None if config.modules else "start"
        self._discovery_from = -math.inf
        self.manufacturer: ManufacturerInfo | None = None
        self.protocol_version: ProtocolVersion | None = None
        self.bank_static_at: float | None = None
        #: Positions that answered last time (a change is logged).
        self.answering: set[int] = set()
        self.requests = 0
        self.failures: dict[str, int] = dict.fromkeys(FAILURE_REASONS, 0)
        #: Whether the source reads static data itself (a listener only hears what
        #: another master asks): settled then waits for it.
        self.reads_static = True
        #: The last protocol error seen in this read, for messages.
        self.last_error: str | None = None
        #: What is wrong with the line while it lasts, by kind (the port cannot be opened,
        #: another master, the console on the line): one line that says what to do.
        self.problems: dict[str, str] = {}
        self._was_up: bool | None = None

    # -- modules ----------------------------------------------------------------------

    @property
    def known(self) -> list[int]:
        """Positions of the modules this bank is expected to have, in order."""
        return sorted(self.modules)

    @property
    def discovering(self) -> bool:
        """Whether the modules are not known yet (a first discovery is under way)."""
        return self.last_discovery is None and not self.config.modules

    @property
    def settled(self) -> bool:
        """Whether the first work on the bank is done: its modules are known, and the
        static data of the bank and of each module read once at least (a bank where
        nothing answered is settled too: there is nothing more to know until it does)."""
        if self.discovering or self.discovery_reason == "start":
            return False
        if not self.modules or not self.reads_static:
            return True
        return self.bank_static_at is not None and all(
            m.static_at is not None for m in self.modules.values()
        )

    def address(self, position: int) -> int:
        return module_address(self.group, position)

    def memory(self, position: int) -> ModuleMemory:
        return self.modules.setdefault(position, ModuleMemory())

    def answered_now(self, position: int) -> None:
        """The module at ``position`` answered a request just now."""
        if position in self.modules:
            self.modules[position].last_answer = self.clock()

    def reading(self, position: int) -> ModuleReading:
        """A module of this scrape, with what is kept of it: static data and, while
        younger than MANAGEMENT_MAX_AGE, the management info, with their times."""
        memory = self.memory(position)
        module = ModuleReading(position, self.address(position))
        module.serial_number = memory.serial_number
        module.software_version = memory.software_version
        module.parameters = memory.parameters
        if memory.static_at is not None:
            module.read_at["static"] = memory.static_wall
        if self.clock() - memory.management_at <= MANAGEMENT_MAX_AGE:
            module.management = memory.management
            module.read_at["management"] = memory.management_wall
        module.success = dict(memory.success)
        return module

    def keep_management(self, position: int, info: ManagementInfo) -> None:
        memory = self.memory(position)
        memory.management = info
        memory.management_at = self.clock()
        memory.management_wall = self.wall()

    def record(self, position: int, command: str, ok: bool) -> None:
        """The outcome of the last attempt of ``command`` at ``position``."""
        if position in self.modules:
            self.modules[position].success[command] = ok

    # -- discovery --------------------------------------------------------------------

    def discovery_due(self) -> bool:
        if self.config.modules:
            return False
        now = self.clock()
        if (
            self.discovery_reason is None
            and self.last_discovery is not None
            and now - self.last_discovery >= self.static_refresh
        ):
            self.want_discovery("hourly")
        return self.discovery_reason is not None and now >= self._discovery_from

    def want_discovery(self, reason: str, after: float = 0.0) -> None:
        """Discover again, ``after`` seconds from now at the earliest."""
        if not self.config.modules and self.discovery_reason is None:
            self.discovery_reason = reason
            self._discovery_from = self.clock() + after

    def discovered(self, found: Iterable[int]) -> None:
        """A discovery ended; ``found`` answered it. Modules that did not, and that have
        not answered anything for DROP_AFTER seconds, are no longer expected."""
        now = self.clock()
        found = set(found)
        before = set(self.modules)
        for position in found:
            self.memory(position).last_answer = now
        dropped = {
            p for p in before - found if now - self.modules[p].last_answer >= self.drop_after
        }
        for position in dropped:
            del self.modules[position]
        if dropped:
            log.warning(
                "modules no longer answer discovery; not expected any more",
                extra=kv(bank=self.name, modules=_positions(dropped)),
            )
        if set(self.modules) != before or self.last_discovery is None:
            log.info(
                "discovered modules",
                extra=kv(bank=self.name, group=self.group, modules=_positions(self.modules)),
            )
        self.last_discovery = now
        self.discovery_reason = None
        if not self.modules:
            self.want_discovery("no module answered discovery", EMPTY_RETRY_SECONDS)

    def forget(self, reason: str) -> None:
        """Another stack answers on this port: nothing known of this one holds."""
        log.warning("forgetting the bank's modules", extra=kv(bank=self.name, why=reason))
        self.modules = {p: ModuleMemory() for p in range(1, (self.config.modules or 0) + 1)}
        self.manufacturer = self.protocol_version = None
        self.bank_static_at = None
        self.answering = set()
        self.last_discovery = None
        self.discovery_reason = None if self.config.modules else reason

    def static_due(self, position: int) -> bool:
        at = self.memory(position).static_at
        return at is None or self.clock() - at >= self.static_refresh

    def bank_static_due(self) -> bool:
        at = self.bank_static_at
        return at is None or self.clock() - at >= self.static_refresh

    def answered(self, positions: set[int]) -> None:
        """Record which modules' values this scrape read; a module that stopped answering
        asks for a rediscovery."""
        if positions == self.answering:
            return
        lost = self.answering - positions
        new = positions - self.answering
        if lost:
            log.warning(
                "modules stopped answering", extra=kv(bank=self.name, modules=_positions(lost))
            )
            since = self.clock() - (self.last_discovery or -math.inf)
            self.want_discovery("a module stopped answering", self.rediscover_after - since)
        if new and self.answering:
            log.info("modules answer again", extra=kv(bank=self.name, modules=_positions(new)))
        self.answering = positions

    # -- what is wrong with the line ---------------------------------------------------

    def report(self, kind: str, problem: str | None) -> None:
        """Set the ``kind`` problem of the line, or clear it with None. A new problem is
        logged at warning level once, its end at info level: not on every scrape."""
        old = self.problems.get(kind)
        if problem == old:
            return
        if problem is None:
            del self.problems[kind]
            log.info("problem gone", extra=kv(bank=self.name, was=old))
        else:
            self.problems[kind] = problem
            log.warning(problem, extra=kv(bank=self.name))

    @property
    def problem(self) -> str | None:
        """Every problem of the line in one line, None when there is none."""
        return "; ".join(self.problems.values()) or None

    # -- one read ---------------------------------------------------------------------

    def count(self, requests: int, failures: Mapping[str, int]) -> None:
        self.requests += requests
        for reason, count in failures.items():
            self.failures[reason] = self.failures.get(reason, 0) + count

    def unread(self, error: str) -> BankReading:
        """This bank as reported when it could not be read at all."""
        return BankReading(
            name=self.name,
            group=self.group,
            port=self.config.port,
            modules=[ModuleReading(p, self.address(p)) for p in self.known],
            requests=self.requests,
            failures=dict(self.failures),
            complete=False,
            discovering=self.discovering,
            error=error,
        )

    def begin(self) -> BankReading:
        self.last_error = None
        return BankReading(name=self.name, group=self.group, port=self.config.port)

    def finish(self, reading: BankReading, duration: float) -> BankReading:
        """Complete ``reading``: known modules not read are there, down; counters, error
        message; the bank going down or coming back is logged."""
        read = {m.position for m in reading.modules}
        reading.modules.extend(
            ModuleReading(p, self.address(p)) for p in self.known if p not in read
        )
        reading.modules.sort(key=lambda m: m.position)
        reading.duration = duration
        reading.requests = self.requests
        reading.failures = dict(self.failures)
        reading.discovering = self.discovering
        if not reading.up and reading.error is None:
            if reading.discovering:
                reading.error = "discovering the modules"
            elif not self.known:
                reading.error = "no module answered discovery"
            else:
                reading.error = "no module answered"
            if self.problem:
                reading.error += f": {self.problem}"
            elif self.last_error and reading.complete:
                reading.error += f" (last error: {self.last_error})"
        elif reading.up and self.problem:
            reading.hint = " ".join(filter(None, (reading.hint, self.problem)))
        if (
            not reading.discovering
            and reading.up != self._was_up
            and (self._was_up is not None or not reading.up)
        ):
            if reading.up:
                log.info("bank answers again", extra=kv(bank=self.name))
            else:
                log.warning("bank down", extra=kv(bank=self.name, err=reading.error))
        if not reading.discovering:
            self._was_up = reading.up
        if reading.up:  # bank identity only with readings: a bank that is down has none
            reading.manufacturer, reading.protocol_version = (
                self.manufacturer,
                self.protocol_version,
            )
        return reading


def _positions(positions: Iterable[int]) -> str:
    return ",".join(str(p) for p in sorted(positions))
