"""When a read must be done: a point in ``time.monotonic()`` that can move.

Scrapes that join a bus read already in flight move its deadline to the latest of
theirs, so a scraper with a short timeout never cuts short what the others are waiting
for. Background work gets a deadline that is cut when a scrape needs the bus.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable


class Deadline:
    """A deadline that may be extended (and, for background work, cut short)."""

    def __init__(self, when: float = math.inf, clock: Callable[[], float] = time.monotonic):
        self._when = when
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def when(self) -> float:
        return self._when

    def extend(self, when: float) -> None:
        """Move the deadline to ``when`` if that is later."""
        with self._lock:
            self._when = max(self._when, when)

    def cut(self) -> None:
        """End it now: whatever waits on it gives up."""
        with self._lock:
            self._when = min(self._when, self._clock())

    def before(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` earlier than this one, that moves with it (and is cut
        with it): for the work whose result must be handed on by this one."""
        return _Earlier(self, seconds)

    def remaining(self) -> float:
        return self.when - self._clock()

    def passed(self) -> bool:
        return self._clock() >= self.when

    def __repr__(self) -> str:
        return f"Deadline(in {self.remaining():.3f} s)"


class _Earlier(Deadline):
    def __init__(self, base: Deadline, seconds: float) -> None:
        super().__init__(base.when - seconds, base._clock)
        self._base = base
        self._seconds = seconds

    @property
    def when(self) -> float:
        return self._base.when - self._seconds

    def extend(self, when: float) -> None:
        self._base.extend(when + self._seconds)

    def cut(self) -> None:
        self._base.cut()
