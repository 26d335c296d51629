"""Short-lived snapshot cache with single-flight.

A snapshot younger than the TTL is served as is, if it was read completely or with at
least the scraper's own budget: a read cut short by one scraper's tiny timeout is never
what a scraper with more time gets. A snapshot taken while a bank was still being
discovered is never served again: it answered from memory at once, and the next scrape
gets what discovery has found since (else a restart shows a bank down for a whole TTL).
When no snapshot serves, the first scrape starts a bus read and every scrape that arrives
meanwhile waits for that read instead of starting its own; each waiter moves the read's
deadline to its own if that is later, so a short budget never cuts short what the others
wait for. A waiter whose own deadline passes
first gets a snapshot in which nothing was read (every bank down), never an older one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .deadline import Deadline
from .snapshot import Snapshot

log = logging.getLogger(__name__)


#: A scrape with less time than this reads nothing (not even one request fits).
MIN_BUDGET = 0.05


class _Flight:
    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.done = threading.Event()
        self.result: Snapshot | None = None


class SnapshotCache:
    """``get(deadline)`` returns a snapshot no older than ``ttl`` seconds (0: always
    read, but concurrent scrapes still share one read)."""

    def __init__(
        self,
        read: Callable[[Deadline], Snapshot],
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
        #: How many bus reads this cache started (for tests).
        self.reads = 0

    @property
    def last(self) -> Snapshot | None:
        """The latest snapshot read, whatever its age (for the landing page)."""
        return self._last

    def _serves(self, snapshot: Snapshot | None, budget: float) -> bool:
        if snapshot is None or self.ttl <= 0 or self._clock() - snapshot.finished >= self.ttl:
            return False
        if snapshot.discovering:
            return False
        return snapshot.complete or snapshot.budget >= budget

    def get(self, deadline: float) -> Snapshot:
        budget = deadline - self._clock()
        if budget < MIN_BUDGET:
            return self._unread(f"a scrape timeout this short ({budget:.3f} s) reads nothing")
        while True:
            with self._lock:
                if self._serves(self._last, budget):
                    assert self._last is not None
                    return self._last
                flight = self._flight
                late = flight is not None and flight.deadline.passed()
                if flight is None:
                    flight = self._flight = _Flight(Deadline(deadline, self._clock))
                    self.reads += 1
                    # On a thread of its own: every scraper waits only as long as it may,
                    # the one that happened to start the read included.
                    threading.Thread(target=self._lead, args=(flight,), daemon=True).start()
                elif not late:
                    flight.deadline.extend(deadline)
            if not flight.done.wait(timeout=max(0.0, deadline - self._clock())):
                return self._unread("scrape deadline passed while waiting for the bus read")
            if late:
                continue  # that read gave up before this scrape came: one of its own
            if flight.result is None:
                return self._unread("the bus read failed; see the exporter's log")
            return flight.result

    def _lead(self, flight: _Flight) -> None:
        snapshot: Snapshot | None = None
        try:
            try:
                snapshot = self._read(flight.deadline)
            except Exception as error:  # never leave waiters hanging
                log.exception("reading the snapshot failed")
                snapshot = self._unread(f"internal error: {error}")
        except Exception:
            log.exception("reporting the failed read failed too")
        finally:
            # Whatever happened, the flight ends here: waiters wake up (without a result
            # they report nothing read) and the next scrape starts a read of its own.
            with self._lock:
                if snapshot is not None:
                    self._last = snapshot
                self._flight = None
            flight.result = snapshot
            flight.done.set()
