"""The metric families built from a snapshot: exactly the contract of docs/metrics.md,
and describing them never touches the bus."""

from __future__ import annotations

import re
import time
from pathlib import Path

from prometheus_client.registry import CollectorRegistry
from support.inprocess import settled
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.collector import PylontechCollector
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.poller import Poller
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.inverter import PROFILES, Inverter
from pylontech_exporter.simulator.serve import TcpSimulator
from pylontech_exporter.snapshot import BankReading, Snapshot

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


def _read_when_up(server: TcpSimulator, name: str, *, listen_only: bool) -> list[BankReading]:
    with server:
        serial = SerialSettings(server.url, timeout=0.2, listen_only=listen_only)
        poller = settled(Poller([BankConfig(name, serial)]))
        try:
            # A listener has heard the modules once the inverter's cycle went round.
            banks = wait_for(lambda: [b for b in poller.read(time.monotonic() + 10).banks if b.up])
        finally:
            poller.close()
    assert banks, f"bank {name} not read"
    return banks


def test_labels_match_the_contract():
    """Every family of the contract has samples with its labels, from a bank the exporter
    polls and a listen-only one beside a virtual inverter."""
    stack = frozen_stack(modules=1, model="US3000C")
    inverter = Inverter(stack, PROFILES["full"], period=0.2)
    banks = _read_when_up(
        TcpSimulator(Rs485Responder(stack), latency=0), "polled", listen_only=False
    )
    banks += _read_when_up(
        TcpSimulator(Rs485Responder(stack), latency=0, inverter=inverter), "heard", listen_only=True
    )
    snapshot = Snapshot(banks=banks)
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
