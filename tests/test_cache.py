"""The snapshot cache: TTL, single flight, waiters bounded by their own deadline, and
no flight left hanging when a read fails."""

from __future__ import annotations

import threading
import time

import pytest
from support.waiting import wait_for

from pylontech_exporter.cache import SnapshotCache
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.snapshot import BankReading, ModuleReading, Snapshot


def _snapshot(tag: str = "") -> Snapshot:
    return Snapshot(banks=[BankReading(name=tag, group=0, port="p")], finished=time.monotonic())


def test_cache_single_flight_and_waiter_deadline():
    calls = []
    release = threading.Event()

    def read(deadline: float) -> Snapshot:
        calls.append(deadline)
        release.wait(5)
        return _snapshot("read")

    cache = SnapshotCache(read, lambda error: _snapshot(f"unread: {error}"), ttl=10)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get(time.monotonic() + 5)))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    # A scrape with almost no time left does not wait for the read: nothing was read.
    hurried = cache.get(time.monotonic() + 0.1)
    assert hurried.banks[0].name.startswith("unread: scrape deadline passed")
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1 and cache.reads == 1
    assert len(results) == 20 and all(r is results[0] for r in results)
    assert cache.get(time.monotonic() + 5) is results[0]  # within the TTL
    assert len(calls) == 1


def test_cache_ttl_expiry_and_zero_ttl():
    now = [100.0]
    reads = []

    def read(deadline: float) -> Snapshot:
        reads.append(deadline)
        return Snapshot(banks=[], finished=now[0])

    cache = SnapshotCache(read, lambda e: _snapshot(), ttl=5, clock=lambda: now[0])
    first = cache.get(200)
    now[0] += 4.9
    assert cache.get(200) is first
    now[0] += 0.2
    assert cache.get(200) is not first and len(reads) == 2
    cache.ttl = 0
    cache.get(200)
    cache.get(200)
    assert len(reads) == 4


def test_cache_survives_a_failing_read():
    def read(deadline: float) -> Snapshot:
        raise RuntimeError("boom")

    cache = SnapshotCache(read, lambda e: _snapshot(e), ttl=0)
    assert cache.get(time.monotonic() + 1).banks[0].name == "internal error: boom"


def test_cache_clears_the_flight_when_read_and_unread_both_fail():
    def read(deadline: Deadline) -> Snapshot:
        raise RuntimeError("read bug")

    def unread(error: str) -> Snapshot:
        raise RuntimeError("unread bug")

    cache = SnapshotCache(read, unread, ttl=0)
    for _ in range(2):  # the second starts its own read instead of waiting out a flight
        with pytest.raises(RuntimeError, match="unread bug"):
            cache.get(time.monotonic() + 5)
    assert cache.reads == 2


def test_cache_waiters_are_woken_when_the_read_fails():
    entered, release = threading.Event(), threading.Event()

    def read(deadline: Deadline) -> Snapshot:
        entered.set()
        release.wait(5)
        raise RuntimeError("read bug")

    cache = SnapshotCache(read, lambda error: _snapshot(f"unread: {error}"), ttl=0)
    results: list[Snapshot] = []
    first = threading.Thread(target=lambda: results.append(cache.get(time.monotonic() + 30)))
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=lambda: results.append(cache.get(time.monotonic() + 30)))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive()  # not after their 30 s
    assert [r.banks[0].name for r in results] == ["unread: internal error: read bug"] * 2


def test_a_scraper_joining_a_read_moves_its_deadline_to_its_own():
    """The read a 0.1 s scraper started gets the 30 s of the one that joins it."""
    seen: list[Deadline] = []
    joined, release = threading.Event(), threading.Event()

    def read(deadline: Deadline) -> Snapshot:
        seen.append(deadline)
        joined.wait(5)
        release.wait(5)
        return _snapshot("read")

    cache = SnapshotCache(read, lambda error: _snapshot(f"unread: {error}"), ttl=0)
    now = time.monotonic()
    hurried = threading.Thread(target=lambda: cache.get(now + 0.1))
    hurried.start()
    assert wait_for(lambda: seen)
    patient: list[Snapshot] = []
    waiter = threading.Thread(target=lambda: patient.append(cache.get(now + 30)))
    waiter.start()
    assert wait_for(lambda: seen[0].when == now + 30)
    joined.set()
    release.set()
    waiter.join(10)
    hurried.join(10)
    assert patient[0].banks[0].name == "read" and cache.reads == 1


def test_a_read_cut_short_by_a_short_budget_is_not_served_to_a_longer_one():
    """An attacker's header of 0.000001 s must not decide what Prometheus gets."""
    budgets: list[float] = []
    now = [100.0]

    def read(deadline: Deadline) -> Snapshot:
        budget = deadline.when - now[0]
        budgets.append(budget)
        bank = BankReading(name="0", group=0, port="p", complete=budget >= 1)
        return Snapshot(banks=[bank], finished=now[0], budget=budget)

    cache = SnapshotCache(read, lambda e: _snapshot(e), ttl=5, clock=lambda: now[0])
    hopeless = cache.get(now[0] + 0.000001)  # not even one request fits: no read
    assert hopeless.banks[0].name.startswith("a scrape timeout this short") and not budgets
    short = cache.get(now[0] + 0.5)
    assert not short.complete
    assert cache.get(now[0] + 0.5) is short  # as short a budget: the same
    full = cache.get(now[0] + 9.5)  # Prometheus with 10 s: reads again
    assert full.complete and budgets == pytest.approx([0.5, 9.5])
    assert cache.get(now[0] + 0.5) is full  # a complete snapshot serves everybody


def test_a_snapshot_taken_during_discovery_is_not_served_again():
    """Prometheus already scraping when the exporter starts sees the modules as they are
    found, not "discovering" for a whole TTL."""
    now = [100.0]
    found = iter([0, 1, 3, 3])

    def read(deadline: Deadline) -> Snapshot:
        modules = next(found)
        bank = BankReading(name="0", group=0, port="p", discovering=modules < 3)
        bank.modules = [ModuleReading(position=1 + i, address=2 + i) for i in range(modules)]
        return Snapshot(banks=[bank], finished=now[0])

    cache = SnapshotCache(read, lambda e: _snapshot(e), ttl=5, clock=lambda: now[0])
    seen = []
    for _ in range(4):
        seen.append(len(cache.get(now[0] + 9).banks[0].modules))
        now[0] += 1
    assert seen == [0, 1, 3, 3] and cache.reads == 3  # the last one within the TTL


def test_a_scrape_after_a_read_gave_up_gets_a_read_of_its_own():
    """A read whose every waiter has gone is not joined: its deadline cannot move."""
    first_may_finish = threading.Event()
    deadlines: list[float] = []

    def read(deadline: Deadline) -> Snapshot:
        deadlines.append(deadline.when)
        if len(deadlines) == 1:
            first_may_finish.wait(5)
            bank = BankReading(name="cut short", group=0, port="p", complete=False)
            return Snapshot(banks=[bank], finished=time.monotonic(), budget=0.2)
        return _snapshot("read")

    cache = SnapshotCache(read, lambda e: _snapshot(f"unread: {e}"), ttl=10)
    assert cache.get(time.monotonic() + 0.2).banks[0].name.startswith("unread: scrape deadline")
    later: list[Snapshot] = []
    waiter = threading.Thread(target=lambda: later.append(cache.get(time.monotonic() + 5)))
    waiter.start()
    first_may_finish.set()
    waiter.join(5)
    assert [s.banks[0].name for s in later] == ["read"] and cache.reads == 2
    assert deadlines[1] > deadlines[0]
