"""Every configured bank, read once: the snapshot behind a scrape.

Banks are grouped by port into *lines*; a line is read by the source its banks name
(:data:`SOURCES`), and different lines are read in parallel, one thread each. Every read
is bounded by the scrape's deadline: what was not read in time is reported as not read,
never filled in from an older snapshot.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol

from .bank import REDISCOVER_SECONDS, STATIC_REFRESH_SECONDS, Bank
from .config import BankConfig
from .logging_setup import kv
from .rs485.reader import Rs485Line
from .snapshot import BankReading, Snapshot

log = logging.getLogger(__name__)


class Line(Protocol):
    """The banks of one port and the source that reads them."""

    banks: list[Bank]

    def read(self, deadline: float) -> list[BankReading]: ...
    def close(self) -> None: ...


#: How each protocol reads a line: a source is one folder and one entry here.
SOURCES: dict[str, Callable[[list[Bank]], Line]] = {
    "rs485": Rs485Line,
}


class Poller:
    """Reads every configured bank: one line per port, lines in parallel."""

    def __init__(
        self,
        banks: list[BankConfig],
        *,
        sources: dict[str, Callable[[list[Bank]], Line]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        static_refresh: float = STATIC_REFRESH_SECONDS,
        rediscover: float = REDISCOVER_SECONDS,
    ) -> None:
        self._clock = clock
        sources = SOURCES if sources is None else sources
        self.banks = [
            Bank(config, clock=clock, static_refresh=static_refresh, rediscover=rediscover)
            for config in banks
        ]
        by_port: dict[str, list[Bank]] = {}
        for bank in self.banks:
            by_port.setdefault(bank.config.port, []).append(bank)
        self.lines: list[Line] = [
            sources[members[0].config.serial.protocol](members) for members in by_port.values()
        ]
        self._executor = (
            ThreadPoolExecutor(max_workers=len(self.lines), thread_name_prefix="bus")
            if len(self.lines) > 1
            else None
        )

    def unread(self, error: str) -> Snapshot:
        """A snapshot in which nothing was read (every bank and known module down)."""
        return Snapshot(
            banks=[b.unread(error) for b in self.banks],
            taken_at=time.time(),
            finished=self._clock(),
        )

    def read(self, deadline: float) -> Snapshot:
        """Read every bank, bounded by ``deadline`` (time.monotonic())."""
        start = self._clock()
        results: dict[str, BankReading] = {}
        if self._executor is None:
            for reading in self.lines[0].read(deadline):
                results[reading.name] = reading
        else:
            futures: list[tuple[Line, Future[list[BankReading]]]] = [
                (line, self._executor.submit(line.read, deadline)) for line in self.lines
            ]
            for line, future in futures:
                try:
                    # The client honours the deadline; the grace covers one blocked write.
                    readings = future.result(timeout=max(0.0, deadline - self._clock()) + 2.5)
                except Exception as error:
                    log.error("port read did not finish", extra=kv(err=str(error)))
                    readings = [b.unread("the read did not finish in time") for b in line.banks]
                for reading in readings:
                    results[reading.name] = reading
        return Snapshot(
            banks=[results[b.name] for b in self.banks],
            taken_at=time.time(),
            finished=self._clock(),
            duration=self._clock() - start,
        )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        for line in self.lines:
            try:
                line.close()
            except Exception:  # pragma: no cover - closing is best effort
                log.debug("closing a line failed", exc_info=True)
