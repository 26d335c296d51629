"""Short-lived snapshot cache with single-flight.

A snapshot younger than the TTL is served as is. When it is older, the first scrape reads
the bus and every scrape that arrives meanwhile waits for that read instead of starting its
own; a waiter whose own deadline passes first gets a snapshot in which nothing was read
(every bank down), never an older one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .snapshot import Snapshot

log = logging.getLogger(__name__)


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Snapshot | None = None


class SnapshotCache:
    """``get(deadline)`` returns a snapshot no older than ``ttl`` seconds (0: always
    read, but concurrent scrapes still share one read)."""

    def __init__(
        self,
        read: Callable[[float], Snapshot],
        unread: Callable[[str], Snapshot],
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._unread = unread
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._flight: _Flight | None = None
        self._last: Snapshot | None = None
        #: How many bus reads this cache started (for tests and the landing page).
        self.reads = 0

    @property
    def last(self) -> Snapshot | None:
        """The latest snapshot read, whatever its age (for the landing page)."""
        return self._last

    def get(self, deadline: float) -> Snapshot:
        with self._lock:
            last = self._last
            if last is not None and self.ttl > 0 and self._clock() - last.finished < self.ttl:
                return last
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = _Flight()
                self.reads += 1
        if leader:
            return self._lead(flight, deadline)
        if flight.done.wait(timeout=max(0.0, deadline - self._clock())) and flight.result:
            return flight.result
        return self._unread("scrape deadline passed while waiting for the bus read in progress")

    def _lead(self, flight: _Flight, deadline: float) -> Snapshot:
        snapshot: Snapshot | None = None
        try:
            try:
                snapshot = self._read(deadline)
            except Exception as error:  # never leave waiters hanging
                log.exception("reading the snapshot failed")
                snapshot = self._unread(f"internal error: {error}")
        finally:
            # Whatever happened, the flight ends here: waiters wake up (without a result
            # they report nothing read) and the next scrape starts a read of its own.
            with self._lock:
                if snapshot is not None:
                    self._last = snapshot
                self._flight = None
            flight.result = snapshot
            flight.done.set()
        return snapshot
