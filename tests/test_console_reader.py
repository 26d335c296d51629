"""The console read plan (ConsoleSource) against the virtual console: what is asked and in
which order (``pwr`` every scrape, ``bat N`` as time allows, ``info N``/``stat N``/``soh N``
at discovery and hourly), what the readings say (exact to the printed resolution), what a
down battery, a failing command or an unparsable row leaves, and the read times exported.

The plan runs over a real line (TCP) where the order of commands is the point, and over
:class:`~support.console.ResponderShell` (the same virtual console, a clock the test moves)
where the time a scrape has decides what is read. Asserted on the commands the console
received and on the readings, never on wall time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.console import ResponderShell
from support.stacks import frozen_stack

from pylontech_exporter.bank import STATIC_REFRESH_SECONDS, Bank
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.console.reader import ConsoleSource
from pylontech_exporter.console.shell import ConsoleShell
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.models import AlarmState
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.responder import Reply
from pylontech_exporter.simulator.serve import TcpSimulator
from pylontech_exporter.snapshot import BankReading

WALL = 1.7e9
STEP = 0.01  # seconds per command on the test's clock
STATIC = ["info 1", "stat 1", "soh 1", "info 2", "stat 2", "soh 2", "info 3", "stat 3", "soh 3"]


class Plan:
    """A ConsoleSource on a virtual console, the shell's clock in the test's hands."""

    def __init__(
        self, responder: ConsoleResponder | Rewriting, step: float = STEP, **config: object
    ) -> None:
        self.responder = responder
        self.clock = [1000.0]
        self.bank = Bank(
            BankConfig("0", SerialSettings("fake", protocol="console"), **config),  # type: ignore[arg-type]
            clock=lambda: self.clock[0],
            wall=lambda: self.clock[0] + WALL,
        )
        self.shell = ResponderShell(responder, self.clock, step=step)
        self.source = ConsoleSource([self.bank], lambda settings: self.shell)

    def deadline(self, seconds: float = 100.0) -> Deadline:
        return Deadline(self.clock[0] + seconds, lambda: self.clock[0])

    def settle(self) -> list[str]:
        """Background steps until nothing is due; the commands they asked."""
        start = len(self.shell.asked)
        for _ in range(100):
            if self.source.background(self.deadline()) != 0.0:
                return self.shell.asked[start:]
        raise AssertionError("background work never ends")

    def scrape(self, seconds: float = 100.0) -> tuple[BankReading, list[str]]:
        start = len(self.shell.asked)
        (reading,) = self.source.scrape(self.deadline(seconds))
        return reading, self.shell.asked[start:]


class Rewriting:
    """The virtual console with what it prints after a command rewritten by ``edit``."""

    def __init__(self, responder: ConsoleResponder, edit: Callable[[str, str], str]) -> None:
        self.responder = responder
        self.stack = responder.stack
        self.edit = edit

    def handle(self, request: bytes) -> Reply:
        reply = self.responder.handle(request)
        assert reply.data is not None
        command = request.decode().strip()
        return Reply(self.edit(command, reply.data.decode("latin-1")).encode("latin-1"))


def console(modules: int | list[str] = 3, **options: object) -> ConsoleResponder:
    stack = frozen_stack(modules=modules, model="US3000C")
    return ConsoleResponder(stack, **options)  # type: ignore[arg-type]


def printed(responder: ConsoleResponder, command: str) -> list[list[str]]:
    """The rows (tokens) of a table the console prints, header first."""
    text = responder.respond(command.encode() + b"\n")
    assert text is not None
    lines = [line.split() for line in text.decode("latin-1").split("\r\r\n")[1:]]
    lines[-1] = lines[-1][: lines[-1].index("Command")] if "Command" in lines[-1] else lines[-1]
    return lines


# --- the plan --------------------------------------------------------------------------------


def test_static_data_between_scrapes_then_pwr_and_every_bat_each_scrape_over_a_line():
    responder = console()
    bank = Bank(BankConfig("0", SerialSettings("x", protocol="console")))
    with TcpSimulator(responder, latency=0) as server:
        source = ConsoleSource(
            [bank], lambda settings: ConsoleShell(server.url, timeout=1.0, retries=0)
        )
        try:
            while source.background(Deadline()) == 0.0:
                pass
            background = [line.strip().decode() for line in responder.received]
            responder.received.clear()
            first = source.scrape(Deadline())[0]
            second = source.scrape(Deadline())[0]
        finally:
            source.close()
    asked = [line.strip().decode() for line in responder.received]
    # Discovery (pwr), the stack's identity (info of the console's module), then per
    # battery its identity, lifetime counters and cell health; one Enter first, to find
    # the prompt.
    assert background == ["", "pwr", "info", *STATIC]
    assert asked == ["pwr", "bat 1", "bat 2", "bat 3"] * 2
    for reading in (first, second):
        assert reading.up and reading.complete
        assert [m.up for m in reading.modules] == [True, True, True]
        assert all(len(m.values.cells()) == 15 for m in reading.modules if m.values)
        assert all(m.identity and m.statistics and m.cell_health for m in reading.modules)
    # The Enter that finds the prompt is part of the first request.
    assert first.requests == 1 + 1 + len(STATIC) + 4 and second.requests == first.requests + 4


def test_the_static_data_is_read_again_hourly_and_its_read_time_is_exported():
    plan = Plan(console())
    plan.settle()
    read = plan.scrape()[0].modules[0].read_at
    info_at = read["info"]
    assert info_at < read["stat"] < read["soh"] < read["values"] == read["cells"]
    plan.clock[0] += STATIC_REFRESH_SECONDS / 2
    assert plan.settle() == []  # nothing due
    kept = plan.scrape()[0].modules[0]
    assert kept.read_at["info"] == info_at, "kept, with the time it was read"
    assert kept.read_at["values"] == plan.clock[0] + WALL  # pwr and bat: this scrape
    assert kept.identity is not None and kept.statistics is not None
    plan.clock[0] += STATIC_REFRESH_SECONDS / 2
    assert plan.settle() == ["info", *STATIC]
    again = plan.scrape()[0].modules[0].read_at
    assert again["info"] > info_at + STATIC_REFRESH_SECONDS - 1


def test_static_data_is_not_exported_once_older_than_two_refresh_periods():
    responder = console()
    plan = Plan(responder)
    plan.settle()
    read_at = plan.scrape()[0].modules[1].read_at
    for command in ("info", "stat", "soh"):  # battery 2's refreshes fail from now on
        responder.stack.faults.add("rtn", command=command, address=3)
    ages = []
    for _ in range(2):
        plan.clock[0] += STATIC_REFRESH_SECONDS * 1.5
        assert {"info 2", "stat 2", "soh 2"} <= set(plan.settle())
        first, second, _ = plan.scrape()[0].modules
        ages.append(plan.clock[0] + WALL - read_at["info"])
        assert first.identity and first.statistics and first.cell_health  # refreshed
        assert {"info", "stat", "soh"} <= set(first.read_at)
        kept = ages[-1] <= 2 * STATIC_REFRESH_SECONDS
        assert second.up and second.values is not None
        assert [second.identity is not None, second.statistics is not None] == [kept, kept]
        assert (second.cell_health is not None) == kept
        assert [second.read_at.get(d) for d in ("info", "stat", "soh")] == (
            [read_at["info"], read_at["stat"], read_at["soh"]] if kept else [None] * 3
        )
        assert second.values.cycles_known == kept
        assert (second.values.total_capacity == second.values.total_capacity) == kept  # NaN
    assert ages[0] < 2 * STATIC_REFRESH_SECONDS < ages[1]


def test_bat_n_as_time_allows_the_oldest_first_with_the_cells_read_time():
    plan = Plan(console())
    plan.settle()
    plan.scrape()  # measures how long a bat N takes
    budget = STEP * 3.5  # pwr and two bat N
    rounds = [plan.scrape(budget) for _ in range(3)]
    assert [asked for _, asked in rounds] == [
        ["pwr", "bat 1", "bat 2"],
        ["pwr", "bat 3", "bat 1"],
        ["pwr", "bat 2", "bat 3"],
    ]
    for reading, asked in rounds:
        assert not reading.complete
        assert [m.up for m in reading.modules] == [True, True, True]  # pwr: all of them
        for module in reading.modules:
            read = f"bat {module.position}" in asked
            assert ("cells" in module.read_at) == read
            assert bool(module.values and module.values.cells()) == read
            assert bool(module.detail and module.detail.cells) == read


def test_a_scrape_too_short_for_every_bat_n_says_what_it_needs():
    plan = Plan(console(16), step=0.15)  # a bat N at 115200 Bd
    plan.settle()
    reading, asked = plan.scrape(1.0)
    assert asked == ["pwr", "bat 1", "bat 2", "bat 3", "bat 4", "bat 5"]
    assert not reading.complete and [m.up for m in reading.modules] == [True] * 16
    assert reading.hint == (
        "scrape timeout too short for 16 batteries on the console at 115200 Bd: pwr and bat N "
        "of each need about 2.5 s, the scrape allowed 1.00 s; raise Prometheus' "
        "scrape_timeout to 2.9 s or more"
    )
    plan.shell.transport.generation += 1  # an info N first: the budget is still the scrape's
    again, asked = plan.scrape(1.0)
    assert asked[0] == "info 1" and again.hint == reading.hint


def test_after_a_reconnect_info_1_checks_it_is_the_same_stack():
    plan = Plan(console())
    plan.settle()
    plan.shell.transport.generation += 1  # the port was opened again
    reading, asked = plan.scrape()
    assert asked == ["info 1", "pwr", "bat 1", "bat 2", "bat 3"] and reading.up
    plan.shell.transport.generation += 1
    plan.responder.stack.modules[0].serial_number = "PPTCH00000000000"  # another stack
    reading, asked = plan.scrape()
    assert asked == ["info 1"]
    assert not reading.up and plan.bank.known == []
    assert plan.settle()[:2] == ["pwr", "info"]  # it starts over


def test_after_a_reconnect_with_battery_1_off_another_battery_confirms_the_stack():
    plan = Plan(console())
    plan.settle()
    plan.responder.stack.modules[0].present = False  # battery 1 switched off
    reading, _ = plan.scrape()
    assert [m.up for m in reading.modules] == [False, True, True]
    plan.shell.transport.generation += 1  # USB replug, bridge restart
    reading, asked = plan.scrape()
    assert asked == ["info 2", "pwr", "bat 2", "bat 3"]  # battery 2 answered last time
    assert [m.up for m in reading.modules] == [False, True, True]
    plan.shell.transport.generation += 1
    plan.responder.stack.modules[1].present = False  # battery 2 goes off unseen
    reading, asked = plan.scrape()
    assert asked == ["info 2", "info 3", "pwr", "bat 3"]  # the next one
    assert [m.up for m in reading.modules] == [False, False, True]
    plan.shell.transport.generation += 1
    plan.responder.stack.modules[2].serial_number = "PPTCH00000000000"  # another stack
    reading, asked = plan.scrape()
    assert asked == ["info 3"] and not reading.up and plan.bank.known == []


# --- the readings ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["US3000C", "US5000-16S"])
def test_values_are_exact_to_the_printed_resolution(model):
    responder = console([model, model])
    module = responder.stack.modules[0]
    cells = len(module.cell_voltages)
    module.cell_voltages = [3.3004 + 0.001 * i for i in range(cells)]  # printed 3300, 3301..
    module.current = -12.3456  # printed -12346 mA
    module.soc = 0.6371  # printed 64%
    plan = Plan(responder)
    plan.settle()
    got = plan.scrape()[0].modules[0]
    pwr = dict(zip(printed(responder, "pwr")[0], printed(responder, "pwr")[1]))
    bat = printed(responder, "bat 1")[1:]
    assert got.values is not None and got.detail is not None
    assert got.values.voltage == int(pwr["Volt"]) / 1000
    assert got.values.current == -12.346
    assert got.values.state_of_charge == 0.64
    assert got.values.remaining_capacity == pytest.approx(0.64 * module.model.capacity, abs=1e-12)
    assert got.values.total_capacity == module.model.capacity  # info 1's specification
    assert got.values.cells() == [(int(row[0]) + 1, int(row[1]) / 1000) for row in bat]
    assert got.values.cells()[:2] == [(1, 3.3), (2, 3.301)] and len(bat) == cells
    assert got.values.sensor_temperatures()[0] == ("bms", int(pwr["Tempr"]) / 1000)
    assert got.detail.cell_voltage_min == int(pwr["Vlow"]) / 1000
    assert [c.temperature for c in got.detail.cells] == [int(row[3]) / 1000 for row in bat]
    assert got.values.cycle_number == module.cycle_number and got.values.cycles_known


def test_the_system_alarm_state_of_the_23_column_pwr_is_a_measurement_state():
    def edit(command: str, text: str) -> str:
        if command != "pwr":
            return text
        lines = text.split("\r\r\n")
        lines[3] = lines[3].rstrip()[: -len("Normal")] + "Alarm"  # battery 2's SysAlarm.St
        return "\r\r\n".join(lines)

    plan = Plan(Rewriting(console(firmware="B69.26"), edit))
    plan.settle()
    states = [m.detail.measurement_states for m in plan.scrape()[0].modules if m.detail]
    assert [s.get("system_alarm") for s in states] == [
        AlarmState.NORMAL,
        AlarmState.FAULT,  # a word other than normal, low, high
        AlarmState.NORMAL,
    ]
    older = Plan(console(firmware="B69.16"))  # 18 columns: no SysAlarm.St
    older.settle()
    assert all("system_alarm" not in m.detail.measurement_states for m in older.scrape()[0].modules)


@pytest.mark.parametrize("firmware", ["B69.16", "B1.4.0.0"])
def test_an_absent_or_unlisted_battery_is_down_and_has_no_readings(firmware):
    """B69.16 prints an ``Absent`` row; the US3000D lists the present batteries only."""
    responder = console(firmware=firmware)
    plan = Plan(responder)
    plan.settle()
    responder.stack.remove_module(3)  # battery 2
    listing = [row[0] for row in printed(responder, "pwr")[1:]]
    assert ("2" in listing) == (firmware == "B69.16")
    reading, asked = plan.scrape()
    assert asked == ["pwr", "bat 1", "bat 3"]
    down = reading.modules[1]
    assert [m.up for m in reading.modules] == [True, False, True] and reading.up
    assert down.values is None and down.detail is None and down.read_at == {}
    assert down.identity is None and down.statistics is None and down.cell_health is None


@pytest.mark.parametrize("command", ["bat", "stat", "info", "soh"])
def test_a_failing_command_leaves_the_battery_up_with_only_its_data_missing(command):
    responder = console()
    responder.stack.faults.add("rtn", command=command, address=3)  # battery 2
    plan = Plan(responder)
    plan.settle()
    reading = plan.scrape()[0]
    assert f"{command} 2" in plan.shell.asked
    assert [m.up for m in reading.modules] == [True, True, True]
    failed, fine = reading.modules[1], reading.modules[0]
    assert failed.values is not None and failed.values.voltage > 40
    assert failed.success[command] is False and fine.success[command] is True
    assert failed.values.current == -12.3 and failed.values.state_of_charge is not None
    missing = {
        "bat": failed.values.cells() == [] and failed.detail.cells == (),
        "stat": failed.statistics is None and not failed.values.cycles_known,
        "info": failed.identity is None and failed.values.total_capacity != 74.0,
        "soh": failed.cell_health is None,
    }
    assert missing[command]
    assert [name for name, gone in missing.items() if gone] == [command]
    read_at = {"bat": "cells", "stat": "stat", "info": "info", "soh": "soh"}[command]
    assert read_at not in failed.read_at and read_at in fine.read_at
    assert plan.bank.failures["return_code"] == 1


def test_an_unparsable_field_or_row_is_counted_and_skipped_the_rest_counts(caplog):
    def edit(command: str, text: str) -> str:
        lines = text.split("\r\r\n")
        if command == "pwr":
            lines[2] = lines[2].replace("-12300", "-12x00", 1)  # battery 1: Curr
            lines[3] = lines[3][:40]  # battery 2: a row cut short
        if command == "bat 3":
            lines[6] = lines[6].replace("Normal", "", 1)  # cell 5: a field lost
        return "\r\r\n".join(lines)

    editing = [False]
    plan = Plan(
        Rewriting(console(), lambda command, text: edit(command, text) if editing[0] else text)
    )
    plan.settle()
    editing[0] = True
    reading, asked = plan.scrape()
    first, second, third = reading.modules
    assert reading.unparsed == {"pwr": 2, "bat": 1}
    assert first.up and first.values.current != first.values.current  # NaN: not exported
    assert first.values.voltage > 40 and first.values.cells()
    assert not second.up, "a row that does not parse is not guessed"
    assert "bat 2" not in asked
    assert [c for c, _ in third.values.cells()] == [1, 2, 3, 4, *range(6, 16)]
    logged = [r for r in caplog.records if r.message.startswith("skipped what did not parse")]
    assert [(r.fields["command"], r.fields["count"]) for r in logged] == [("pwr", 2), ("bat", 1)]
    assert plan.scrape()[0].unparsed == {"pwr": 4, "bat": 2}  # counted again
