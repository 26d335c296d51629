"""The metric families built from a snapshot: exactly the contract of docs/metrics.md,
and describing them never touches the bus."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
from support.inprocess import settled
from support.metrics import key, parse, select
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.collector import PylontechCollector
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.models import (
    AlarmState,
    BaseState,
    CellDetail,
    CellHealth,
    ModuleDetail,
    ModuleStatistics,
    ModuleValues,
)
from pylontech_exporter.poller import Poller
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.inverter import PROFILES, Inverter
from pylontech_exporter.simulator.serve import TcpSimulator
from pylontech_exporter.snapshot import BankReading, ModuleReading, Snapshot

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


def contract_section(title: str) -> list[tuple[str, str]]:
    """(metric, type) of the tables under the ``## `` heading that starts with ``title``."""
    found, inside = [], False
    for line in DOCS.read_text().splitlines():
        if line.startswith("## "):
            inside = line[3:].startswith(title)
        match = re.match(r"\| `(pylontech_\w+)` \| ([^|]+) \|", line)
        if inside and match:
            found.append((match.group(1), match.group(2).split()[0]))
    return found


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


def _read_when_up(
    server: TcpSimulator, name: str, *, listen_only: bool, protocol: str = "rs485"
) -> list[BankReading]:
    with server:
        serial = SerialSettings(server.url, timeout=0.2, listen_only=listen_only, protocol=protocol)
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
    polls, a listen-only one beside a virtual inverter and one read through its console."""
    stack = frozen_stack(modules=1, model="US3000C")
    inverter = Inverter(stack, PROFILES["full"], period=0.2)
    banks = _read_when_up(
        TcpSimulator(Rs485Responder(stack), latency=0), "polled", listen_only=False
    )
    banks += _read_when_up(
        TcpSimulator(Rs485Responder(stack), latency=0, inverter=inverter), "heard", listen_only=True
    )
    banks += _read_when_up(
        TcpSimulator(ConsoleResponder(stack), latency=0),
        "console",
        listen_only=False,
        protocol="console",
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


def test_a_console_module_exports_what_it_read_and_nothing_it_did_not():
    """Cells named by their row (a row that did not parse leaves a gap), the printed state
    of charge without a capacity, no cycles before stat N, the console's state words in
    the contract's state sets, and the console-only families."""
    values = ModuleValues(
        address=2,
        cell_voltages=(3.331, 3.329),
        temperatures=(27.9,),
        current=11.867,
        voltage=49.905,
        remaining_capacity=math.nan,
        total_capacity=math.nan,
        cycle_number=0,
        cell_numbers=(1, 3),
        sensors=("bms",),
        printed_state_of_charge=0.39,
        cycles_known=False,
    )
    detail = ModuleDetail(
        base_state=BaseState.CHARGE,
        measurement_states={"current": AlarmState.HIGH},
        temperature_states={"bms": AlarmState.NORMAL},
        cell_voltage_min=3.327,
        cells=(
            CellDetail(cell=1, temperature=27.5, voltage_state=AlarmState.NORMAL, balancing=True),
            CellDetail(cell=3, temperature=27.3, voltage_state=AlarmState.LOW),
        ),
    )
    module = ModuleReading(
        1,
        2,
        values=values,
        detail=detail,
        statistics=ModuleStatistics(events={"coc_times": 2}, state_of_health=0.97),
        cell_health=(CellHealth(1, 1, "Normal"),),
    )
    bank = BankReading("0", 0, "socket://x", modules=[module], unparsed={"bat": 2})
    registry = CollectorRegistry()
    registry.register(PylontechCollector(lambda deadline: Snapshot(banks=[bank]), ttl=5))
    samples = parse(generate_latest(registry).decode())
    b = {"bank": "0", "module": 1}
    assert select(samples, "pylontech_cell_voltage_volts") == {
        key("pylontech_cell_voltage_volts", **b, cell=1): 3.331,
        key("pylontech_cell_voltage_volts", **b, cell=3): 3.329,
    }
    assert select(samples, "pylontech_module_temperature_celsius") == {
        key("pylontech_module_temperature_celsius", **b, sensor="bms"): 27.9
    }
    assert samples[key("pylontech_module_state_of_charge_ratio", **b)] == 0.39
    for absent in ("remaining_capacity", "full_capacity", "cycles_total", "protection_active"):
        assert not select(samples, f"pylontech_module_{absent}"), absent
    assert samples[key("pylontech_cell_voltage_state", **b, cell=3, state="low")] == 1
    assert samples[key("pylontech_cell_voltage_state", **b, cell=3, state="normal")] == 0
    assert (
        samples[key("pylontech_module_measurement_state", **b, measurement="current", state="high")]
        == 1
    )
    assert (
        samples[key("pylontech_module_temperature_state", **b, sensor="bms", state="normal")] == 1
    )
    base = select(samples, "pylontech_module_base_state")
    assert {dict(k[1])["state"]: v for k, v in base.items()} == {
        "charge": 1.0,
        "discharge": 0.0,
        "idle": 0.0,
        "balance": 0.0,
        "other": 0.0,
    }
    assert select(samples, "pylontech_cell_balancing_active") == {
        key("pylontech_cell_balancing_active", **b, cell=1): 1.0
    }
    assert samples[key("pylontech_cell_temperature_celsius", **b, cell=3)] == 27.3
    assert samples[key("pylontech_module_cell_voltage_min_volts", **b)] == 3.327
    assert not select(samples, "pylontech_module_cell_voltage_max_volts")
    assert samples[key("pylontech_module_state_of_health_ratio", **b)] == 0.97
    assert samples[key("pylontech_module_lifetime_events_total", **b, event="coc_times")] == 2
    assert samples[key("pylontech_cell_state_of_health_info", **b, cell=1, status="normal")] == 1
    assert samples[key("pylontech_console_unparsed_total", bank="0", command="bat")] == 2
    assert samples[key("pylontech_console_unparsed_total", bank="0", command="pwr")] == 0


def test_rs485_banks_export_no_console_series():
    module = ModuleReading(1, 2, values=frozen_stack(modules=1).module(2).values())
    registry = CollectorRegistry()
    bank = BankReading("0", 0, "/dev/x", modules=[module])
    registry.register(PylontechCollector(lambda deadline: Snapshot(banks=[bank]), ttl=5))
    samples = parse(generate_latest(registry).decode())
    console = {name for name, _ in contract_section("RS232 console")}
    assert console and not {k for k in samples if k[0] in console}
