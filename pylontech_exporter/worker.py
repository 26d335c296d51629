"""One thread per line: the only one that uses it.

A line's source has two kinds of work: a scrape's read (bounded by the scrape's
deadline) and background work (discovery, static data, listening), done one short step
at a time. The worker runs scrapes first: a scrape that arrives while a background step
waits on the bus cuts that step's deadline, so it waits for the bus at most a moment.
The thread is a daemon: shutting down never waits for a read in progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Protocol

from .bank import Bank
from .deadline import Deadline
from .logging_setup import kv
from .snapshot import BankReading

log = logging.getLogger(__name__)

#: Background work is looked at again at least this often.
IDLE_RECHECK = 1.0
#: A scrape's read ends this long before its deadline, so that its readings are handed
#: over by then.
HAND_OVER = 0.03
#: After this many background steps in a row cut short by scrapes, the next one is let
#: finish (the scrape waits for it): frequent scrapes must not starve discovery.
MAX_CUTS = 3


class Source(Protocol):
    """How one protocol reads the banks of one line."""

    banks: list[Bank]

    def scrape(self, deadline: Deadline) -> list[BankReading]:
        """Every bank of the line, read now, bounded by ``deadline``."""
        ...

    def background(self, deadline: Deadline) -> float:
        """Do one step of background work, bounded by ``deadline`` (cut when a scrape
        needs the line); return the seconds until the next step is due (0: at once)."""
        ...

    def close(self) -> None: ...


class _Job:
    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.done = threading.Event()
        self.result: list[BankReading] | None = None


class LineWorker:
    """Runs a :class:`Source` on its own thread."""

    def __init__(self, name: str, source: Source) -> None:
        self.name = name
        self.source = source
        self.banks = source.banks
        self._lock = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._background: Deadline | None = None
        self._cuts = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"line {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, deadline: Deadline) -> Callable[[], list[BankReading] | None]:
        """Hand the worker a scrape's read; the returned call waits for its readings, or
        returns None when they are not done by the deadline (which may move meanwhile)."""
        job = _Job(deadline)
        with self._lock:
            self._jobs.append(job)
            if self._background is not None and self._cuts < MAX_CUTS:
                self._background.cut()
            self._lock.notify()

        def wait() -> list[BankReading] | None:
            while not job.done.wait(max(0.0, min(deadline.remaining(), 0.05))):
                if deadline.passed():
                    return None
            return job.result

        return wait

    def stop(self) -> threading.Thread:
        """Stop after the step in progress; the line closes on the thread returned (join
        it for a while at most: a request in flight holds the line until its timeout,
        and shutting down does not wait for that: the process's end closes the port)."""
        with self._lock:
            self._stopping = True
            if self._background is not None:
                self._background.cut()
            self._lock.notify()
        closer = threading.Thread(target=self._close, name=f"close {self.name}", daemon=True)
        closer.start()
        return closer

    def _close(self) -> None:
        try:
            self.source.close()
        except Exception:  # closing is best effort
            log.debug("closing the line failed", exc_info=True)

    def _run(self) -> None:
        due = 0.0
        while True:
            with self._lock:
                while not self._jobs and not self._stopping and time.monotonic() < due:
                    self._lock.wait(due - time.monotonic())
                if self._stopping:
                    return
                job = self._jobs.popleft() if self._jobs else None
                if job is None:
                    self._background = Deadline()
            if job is not None:
                job.result = self._scrape(job.deadline)
                job.done.set()
                due = 0.0  # a scrape may have found work (a module to discover)
                continue
            step = self._background
            assert step is not None
            try:
                pause = self.source.background(step)
            except Exception:
                if self._stopping:  # the line was closed under the step: shutting down
                    return
                log.exception("background work of the line failed", extra=kv(line=self.name))
                pause = IDLE_RECHECK
            with self._lock:
                self._background = None
                self._cuts = self._cuts + 1 if step.passed() else 0
            due = time.monotonic() + min(max(pause, 0.0), IDLE_RECHECK)

    def _scrape(self, deadline: Deadline) -> list[BankReading]:
        if deadline.passed():
            return [b.unread("scrape deadline passed before the line was free") for b in self.banks]
        try:
            return self.source.scrape(deadline.before(HAND_OVER))
        except Exception as error:  # a bug must not take the other lines down
            log.exception("reading the line failed", extra=kv(line=self.name))
            return [b.unread(f"internal error: {error}") for b in self.banks]
