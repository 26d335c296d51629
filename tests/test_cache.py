"""The snapshot cache: TTL, single flight, waiters bounded by their own deadline, and
no flight left hanging when a read fails."""

from __future__ import annotations

import threading
import time

import pytest

from pylontech_exporter.cache import SnapshotCache
from pylontech_exporter.snapshot import BankReading, Snapshot


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
    hurried = cache.get(time.monotonic() + 0.05)
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
    def read(deadline: float) -> Snapshot:
        raise RuntimeError("read bug")

    def unread(error: str) -> Snapshot:
        raise RuntimeError("unread bug")

    cache = SnapshotCache(read, unread, ttl=0)
    with pytest.raises(RuntimeError):
        cache.get(time.monotonic() + 5)
    # A later scrape starts its own read instead of waiting out its deadline.
    started = time.monotonic()
    with pytest.raises(RuntimeError):
        cache.get(time.monotonic() + 5)
    assert time.monotonic() - started < 1 and cache.reads == 2


def test_cache_waiters_are_woken_when_the_leader_fails():
    entered = threading.Event()
    release = threading.Event()

    def read(deadline: float) -> Snapshot:
        entered.set()
        release.wait(5)
        raise RuntimeError("read bug")

    def unread(error: str) -> Snapshot:
        if error.startswith("internal error"):
            raise RuntimeError("unread bug")
        return Snapshot(banks=[], finished=time.monotonic())

    cache = SnapshotCache(read, unread, ttl=0)
    failures, waited = [], []

    def lead() -> None:
        try:
            cache.get(time.monotonic() + 5)
        except RuntimeError as error:
            failures.append(error)

    def wait() -> None:
        start = time.monotonic()
        cache.get(start + 5)
        waited.append(time.monotonic() - start)

    leader = threading.Thread(target=lead)
    leader.start()
    assert entered.wait(5)
    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    release.set()
    leader.join(5)
    waiter.join(6)
    assert failures and waited and waited[0] < 1
