"""The metric families built from a snapshot: exactly the contract of docs/metrics.md,
and describing them never touches the bus."""

from __future__ import annotations

import re
import time
from pathlib import Path

from prometheus_client.registry import CollectorRegistry
from support.inprocess import settled
from support.stacks import frozen_stack

from pylontech_exporter.collector import PylontechCollector
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.poller import Poller
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.serve import TcpSimulator
from pylontech_exporter.snapshot import Snapshot

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
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        bank = BankConfig("0", SerialSettings(tcp.url, timeout=0.2))
        poller = settled(Poller([bank]))
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
