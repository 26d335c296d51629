"""Every configured bank, read once: the snapshot behind a scrape.

Banks are grouped by port into *lines*; a line is read by the source its banks name
(:data:`SOURCES`) on a thread of its own (:class:`~pylontech_exporter.worker.LineWorker`),
which also does the source's background work (discovery, static data) from the start.
Lines are read in parallel. A read ends at the scrape's deadline: a line not done by then
is reported as not read, never filled in from an older snapshot.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .bank import REDISCOVER_SECONDS, STATIC_REFRESH_SECONDS, Bank
from .config import BankConfig
from .console.reader import ConsoleSource
from .deadline import Deadline
from .rs485.listener import ListenSource
from .rs485.reader import Rs485Source
from .snapshot import BankReading, Snapshot
from .worker import LineWorker, Source

log = logging.getLogger(__name__)

#: Lines give up this much before the scrape's deadline, so the snapshot assembled from
#: what they have reaches the waiting scrapers before they stop waiting.
HAND_ON_SECONDS = 0.05

#: How each protocol reads a line: a source is one folder and one entry here.
SOURCES: dict[str, Callable[[list[Bank]], Source]] = {
    "rs485": Rs485Source,
    "rs485-listen": ListenSource,
    "console": ConsoleSource,
}


class Poller:
    """Reads every configured bank: one worker per port, ports in parallel."""

    def __init__(
        self,
        banks: list[BankConfig],
        *,
        sources: dict[str, Callable[[list[Bank]], Source]] | None = None,
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
        self.lines = [
            LineWorker(port, sources[members[0].config.serial.source](members))
            for port, members in by_port.items()
        ]
        self._started = False

    def start(self) -> None:
        """Start the lines' workers: background work begins now, not at the first scrape."""
        if not self._started:
            self._started = True
            for line in self.lines:
                line.start()

    def unread(self, error: str) -> Snapshot:
        """A snapshot in which nothing was read (every bank and known module down)."""
        return Snapshot(
            banks=[b.unread(error) for b in self.banks],
            taken_at=time.time(),
            finished=self._clock(),
            budget=0.0,
        )

    def read(self, deadline: Deadline | float) -> Snapshot:
        """Read every bank, bounded by ``deadline`` (a Deadline or time.monotonic())."""
        if not isinstance(deadline, Deadline):
            deadline = Deadline(deadline, self._clock)
        self.start()
        start = self._clock()
        results: dict[str, BankReading] = {}
        # Every line gets the request at once; each answer is awaited until the deadline.
        lines_deadline = deadline.before(HAND_ON_SECONDS)
        waits = [(line, line.submit(lines_deadline)) for line in self.lines]
        for line, wait in waits:
            readings = wait()
            if readings is None:
                readings = [b.unread("the read did not finish by the deadline") for b in line.banks]
            for reading in readings:
                results[reading.name] = reading
        return Snapshot(
            banks=[results[b.name] for b in self.banks],
            taken_at=time.time(),
            finished=self._clock(),
            duration=self._clock() - start,
            budget=deadline.when - start,
        )

    def close(self, wait: float = 1.0) -> None:
        """Stop every line, waiting ``wait`` seconds at most for them to close."""
        until = time.monotonic() + wait
        for closer in [line.stop() for line in self.lines]:
            closer.join(max(0.0, until - time.monotonic()))
