"""In-process tests of the exporter's parts: the metric contract, the snapshot cache,
the poller's long-term state, the landing page."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry
from test_exporter_support import frozen_stack

from pylontech_exporter.cache import SnapshotCache
from pylontech_exporter.collector import PylontechCollector
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.landing import render
from pylontech_exporter.poller import BankReading, ModuleReading, Poller, Snapshot
from pylontech_exporter.simulator.serve import TcpSimulator

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def contract() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md: metric name -> (type, labels)."""
    metrics = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\| `(pylontech_\w+)` \| ([^|]+) \| ([^|]*) \|", line)
        if match:
            kind = match.group(2).split()[0]
            labels = {x.strip() for x in match.group(3).replace("...", "").split(",") if x.strip()}
            metrics[match.group(1)] = (kind, labels)
    return metrics


def test_describe_lists_exactly_the_contract_without_touching_the_bus():
    def no_bus(deadline: float) -> Snapshot:
        raise AssertionError("describe() must not read the bus")

    collector = PylontechCollector(no_bus, ttl=5)
    registry = CollectorRegistry()
    registry.register(collector)  # calls describe()
    described = {}
    for family in collector.describe():
        name = family.name + ("_total" if family.type == "counter" else "")
        described[name] = family.type
    expected = contract()
    assert len(expected) >= 30  # the parser found the tables
    assert set(described) == set(expected)
    for name, (kind, _) in expected.items():
        assert described[name] == kind, name


def test_labels_match_the_contract():
    stack = frozen_stack(modules=1, model="US3000C")
    with TcpSimulator(stack, latency=0) as tcp:
        bank = BankConfig("0", SerialSettings(tcp.url, timeout=0.2))
        poller = Poller([bank])
        try:
            snapshot = poller.read(time.monotonic() + 10)
        finally:
            poller.close()
    collector = PylontechCollector(lambda deadline: snapshot, ttl=5)
    seen = {}
    for family in collector.collect():
        for sample in family.samples:
            seen.setdefault(sample.name, set()).update(sample.labels)
    for name, (_, labels) in contract().items():
        assert name in seen, f"{name} has no sample with a healthy module"
        if name == "pylontech_exporter_build_info":
            assert seen[name] == {"version", "python_version"}
        else:
            assert seen[name] == labels, name


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


def test_static_data_is_read_once_then_refreshed():
    stack = frozen_stack(modules=2, model="US3000C")
    now = [time.monotonic()]  # the poller's clock: moved by hand, no sleeping
    with TcpSimulator(stack, latency=0) as tcp:
        bank = BankConfig("0", SerialSettings(tcp.url, timeout=0.1))
        poller = Poller([bank], static_refresh=0.5, clock=lambda: now[0])
        try:
            poller.read(time.monotonic() + 10)
            before = tcp.requests
            second = poller.read(time.monotonic() + 10)
            assert tcp.requests - before == 4  # FF 0x42, FF 0x44, 2 x 0x92
            assert second.banks[0].modules[0].serial_number == stack.module(2).serial_number
            assert second.banks[0].manufacturer.device_name == "US3000C"
            now[0] += 0.6
            before = tcp.requests
            poller.read(time.monotonic() + 10)
            # rediscovery (2 answers, then one silent address tried twice), the
            # readings (4), static data again: 0x51, 0x4F, and 0x93, 0x96, 0x47 per module
            assert tcp.requests - before == 4 + 4 + 2 + 6
        finally:
            poller.close()


def test_fixed_module_count_skips_discovery_and_reports_missing_module():
    stack = frozen_stack(modules=2, model="US3000C")
    with TcpSimulator(stack, latency=0) as tcp:
        bank = BankConfig("0", SerialSettings(tcp.url, timeout=0.1), modules=3, bank_query="off")
        poller = Poller([bank])
        try:
            snapshot = poller.read(time.monotonic() + 10)
        finally:
            poller.close()
    modules = snapshot.banks[0].modules
    assert [(m.position, m.up) for m in modules] == [(1, True), (2, True), (3, False)]
    assert snapshot.banks[0].up


def test_bank_down_reports_the_reason():
    bank = BankConfig("x", SerialSettings("socket://127.0.0.1:1", timeout=0.1), modules=1)
    poller = Poller([bank])
    try:
        reading = poller.read(time.monotonic() + 5).banks[0]
    finally:
        poller.close()
    assert not reading.up
    assert "cannot open socket://127.0.0.1:1" in (reading.error or "")
    assert reading.failures.get("transport", 0) >= 1


@pytest.mark.parametrize("snapshot_given", [False, True])
def test_landing_page_render(snapshot_given):
    stack = frozen_stack(modules=1, model="US3000C")
    module = stack.module(2)
    module.cell_voltages[3] = 3.9  # above the high threshold: an alarm
    bank = BankConfig("garage", SerialSettings("/dev/ttyUSB0"))
    snapshot = Snapshot(
        banks=[
            BankReading(
                name="garage",
                group=0,
                port="/dev/ttyUSB0",
                modules=[
                    ModuleReading(1, 2, values=module.values(), alarms=module.alarms()),
                    ModuleReading(2, 3),
                ],
            )
        ],
        taken_at=1000.0,
    )
    page = render([bank], snapshot if snapshot_given else None, now=1003.0)
    assert "garage" in page and "/dev/ttyUSB0" in page and "<style>" in page
    if snapshot_given:
        assert "3 s ago" in page
        assert "cell 4 high" in page
        assert "not answering" in page
        assert f"{module.values().voltage:.2f}" in page
    else:
        assert "No reading yet" in page
