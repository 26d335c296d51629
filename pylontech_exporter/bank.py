"""What is remembered about one bank between scrapes, whatever the source reads it.

A :class:`Bank` knows which modules the bank has (from discovery, or fixed by the
configuration), holds their static data (serial numbers, versions, thresholds) between
its refreshes, counts the bank's requests and failures, and turns what a source read in
one scrape into a :class:`~pylontech_exporter.snapshot.BankReading`: modules known but
not read are there, down; the bank going down or coming back is logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Callable

from .config import BankConfig
from .errors import FAILURE_REASONS
from .logging_setup import kv
from .models import ManufacturerInfo, ProtocolVersion, SystemParameters, module_address
from .snapshot import BankReading, ModuleReading

log = logging.getLogger(__name__)

#: Static data (serials, versions, thresholds) is read again after this many seconds.
STATIC_REFRESH_SECONDS = 3600.0
#: Re-discovery after a module stopped answering happens at most this often.
REDISCOVER_SECONDS = 300.0


@dataclass
class ModuleStatic:
    """What changes only with a firmware update or a swapped module."""

    serial_number: str | None = None
    software_version: str | None = None
    parameters: SystemParameters | None = None


class Bank:
    """One bank's memory: known modules (by 1-based position), static data, counters."""

    def __init__(
        self,
        config: BankConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        static_refresh: float = STATIC_REFRESH_SECONDS,
        rediscover: float = REDISCOVER_SECONDS,
    ) -> None:
        self.config = config
        self.name = config.name
        self.group = config.group
        self.clock = clock
        self.static_refresh = static_refresh
        self.rediscover_after = rediscover
        #: Positions of the modules this bank is expected to have (never shrinks, so that
        #: a module that stops answering keeps exporting module_up 0).
        self.known: list[int] = list(range(1, config.modules + 1)) if config.modules else []
        self.last_discovery: float | None = None
        self.rediscover_wanted = False
        self.static: dict[int, ModuleStatic] = {}
        self.static_at: float | None = None
        self.manufacturer: ManufacturerInfo | None = None
        self.protocol_version: ProtocolVersion | None = None
        #: Positions that answered last time (a change triggers the static refresh).
        self.answering: set[int] = set()
        self.requests = 0
        self.failures: dict[str, int] = dict.fromkeys(FAILURE_REASONS, 0)
        #: The last protocol error seen in this read, for messages.
        self.last_error: str | None = None
        self._was_up: bool | None = None

    # -- modules ----------------------------------------------------------------------

    def address(self, position: int) -> int:
        return module_address(self.group, position)

    def reading(self, position: int) -> ModuleReading:
        """A module of this scrape, with the static data known so far."""
        module = ModuleReading(position, self.address(position))
        self.apply_static(module)
        return module

    def apply_static(self, module: ModuleReading) -> None:
        static = self.static.get(module.position) or ModuleStatic()
        module.serial_number = static.serial_number
        module.software_version = static.software_version
        module.parameters = static.parameters

    def learn(self, positions: Iterable[int]) -> bool:
        """Add ``positions`` to the known modules; True when that changed them."""
        before = set(self.known)
        self.known = sorted(before | set(positions))
        return set(self.known) != before

    # -- discovery and static data ----------------------------------------------------

    def discovery_due(self, now: float) -> bool:
        if self.config.modules:
            return False
        if not self.known or self.last_discovery is None:
            return True
        if now - self.last_discovery >= self.static_refresh:
            return True
        return self.rediscover_wanted and now - self.last_discovery >= self.rediscover_after

    def discovered(self, positions: Iterable[int], now: float) -> None:
        """A complete discovery found ``positions``."""
        self.last_discovery = now
        self.rediscover_wanted = False
        if self.learn(positions):
            self.static_at = None
            log.info(
                "discovered modules",
                extra=kv(bank=self.name, group=self.group, modules=_positions(self.known)),
            )

    def static_expired(self, now: float) -> bool:
        """Whether the static data is due for its (hourly) refresh; starts it if so."""
        if self.static_at is not None and now - self.static_at < self.static_refresh:
            return False
        self.static.clear()
        self.manufacturer = self.protocol_version = None
        self.static_at = now
        return True

    def answered(self, positions: set[int]) -> set[int]:
        """Record which modules answered this scrape; returns those that (re)appeared,
        whose static data is read again."""
        new = positions - self.answering
        if positions != self.answering:
            lost = self.answering - positions
            if lost:
                log.warning(
                    "modules stopped answering",
                    extra=kv(bank=self.name, modules=_positions(lost)),
                )
                self.rediscover_wanted = True
            if new and self.answering:
                log.info("modules answer again", extra=kv(bank=self.name, modules=_positions(new)))
            for position in new:
                self.static.pop(position, None)
            self.answering = positions
        return new

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
        if not reading.up and reading.error is None:
            reading.error = "no module answered"
            if self.last_error and reading.complete:
                reading.error += f" (last error: {self.last_error})"
        if reading.up != self._was_up and (self._was_up is not None or not reading.up):
            if reading.up:
                log.info("bank answers again", extra=kv(bank=self.name))
            else:
                log.warning("bank down", extra=kv(bank=self.name, err=reading.error))
        self._was_up = reading.up
        if reading.up:  # bank identity only with readings: a bank that is down has none
            reading.manufacturer, reading.protocol_version = (
                self.manufacturer,
                self.protocol_version,
            )
        return reading


def _positions(positions: Iterable[int]) -> str:
    return ",".join(str(p) for p in sorted(positions))
