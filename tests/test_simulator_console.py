"""The virtual console (``pylontech-simulator --console``): what it prints as real firmware
prints it (the echo, ``@``, ``\\r\\r\\n`` rows, ``Absent`` rows of the old pattern, the
completion line, ``$$`` and the prompt), its error answers, every ``--firmware`` layout,
and its fault injection. A property test: for random stacks, what it prints parses back
(through the exporter's own parsers) to the stack's state at the printed resolution, for
every layout."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.console import printed_time

from pylontech_exporter.console import tables
from pylontech_exporter.console.shell import AnswerSplitter, parse_answer
from pylontech_exporter.models import AlarmState
from pylontech_exporter.simulator import BatteryStack
from pylontech_exporter.simulator.console import (
    BALANCE_SPREAD,
    FIRMWARES,
    MODEL_FIRMWARE,
    RECEIVED_KEPT,
    WORDS,
    ConsoleResponder,
    LineSplitter,
)
from pylontech_exporter.simulator.faults import parse_fault
from pylontech_exporter.simulator.models import MODELS
from pylontech_exporter.simulator.serve import TcpSimulator

CLOCK = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
COMPLETED = b"\rCommand completed successfully\r\n\r$$\r\n\rpylon>"
#: Tokens of each pwr header and the first tokens of each bat header.
PWR_TOKENS = {"16": 16, "18": 18, "22": 22, "23": 23, "pytes": 18}


def console(modules: Any = 3, firmware: str | None = None, **stack: Any) -> ConsoleResponder:
    built = BatteryStack(modules=modules, seed=stack.pop("seed", 3), **stack)
    built.freeze()
    return ConsoleResponder(built, firmware=firmware, clock=lambda: CLOCK)


def typed(responder: ConsoleResponder, line: str) -> bytes:
    data = responder.respond(line.encode("latin-1"))
    assert data is not None
    return data


def answer(responder: ConsoleResponder, command: str):
    return parse_answer(typed(responder, command + "\n").decode("latin-1"), command)


# --- what a real shell prints ----------------------------------------------------------------


def test_a_table_answer_is_framed_as_the_firmware_frames_it():
    data = typed(console(), "pwr\n")
    assert data.startswith(b"pwr\n\r@\r\r\nPower Volt")  # the echo with its terminator
    assert data.endswith(b"-       \r\n" + COMPLETED)  # the last row ends \r\n only
    rows = data[len(b"pwr\n\r@\r\r\n") : -len(COMPLETED)].split(b"\r\r\n")
    assert len(rows) == 17 and all(b"\r" not in r and b"\n" not in r for r in rows[:-1])
    assert rows[-1].endswith(b"\r\n") and rows[-1].count(b"\r") == 1


def test_key_value_answers_put_each_line_between_cr_and_crlf():
    data = typed(console(), "info 1\n")
    assert data.startswith(b"info 1\n\r@\r\n\rDevice address      : 1\r\n\rManufacturer")
    assert data.endswith(b"\rConsole Port rate   : 115200\r\n" + COMPLETED)


@pytest.mark.parametrize("enter", ["\n", "\r"])
def test_every_cr_and_every_lf_is_an_enter(enter):
    responder = console()
    splitter = LineSplitter()
    assert splitter.feed(b"pwr\r\nbat 1") == [b"pwr\r", b"\n"]  # CRLF is two Enters
    assert splitter.buffered == len(b"bat 1")
    assert typed(responder, enter) == enter.encode() + b"\rpylon>"
    assert typed(responder, "pwr" + enter).startswith(b"pwr" + enter.encode() + b"\r@")


def test_a_line_longer_than_the_shell_takes_is_dropped():
    splitter = LineSplitter()
    assert splitter.feed(b"x" * 300) == [] and splitter.buffered < 256
    assert splitter.feed(b"\n") == [b"x" * (300 - 257) + b"\n"]


def test_the_lines_typed_are_kept_up_to_a_bound():
    responder = console()
    for n in range(RECEIVED_KEPT + 5):
        typed(responder, f"bat {n % 3 + 1}\n")
    assert len(responder.received) == RECEIVED_KEPT  # runs inside the exporter: no growth
    assert responder.received[-1] == b"bat %d\n" % ((RECEIVED_KEPT + 4) % 3 + 1)


@pytest.mark.parametrize("firmware", [f for f in FIRMWARES if FIRMWARES[f].rows])
def test_absent_rows_keep_the_old_16_token_pattern_whatever_the_header(firmware):
    responder = console(2, firmware)
    rows = answer(responder, "pwr").lines
    count = FIRMWARES[firmware].rows
    assert len(rows) == 1 + count
    absent = rows[3:]
    assert [row.split()[0] for row in absent] == [str(n) for n in range(3, count + 1)]
    for row in absent:
        assert row.index("Absent") == 55  # as in every recording
        tokens = row.split()
        extra = 2 if firmware == "pytes-48100" else 0  # the only one with extra dashes
        assert len(tokens) == 16 + extra and tokens.count("-") == 14 + extra


def test_a_us3000d_lists_the_present_batteries_only():
    responder = console(4, "B1.4.0.0")
    responder.stack.remove_module(4)  # battery 3
    table = tables.parse_pwr(answer(responder, "pwr").lines)
    assert [r.index for r in table.rows] == [1, 2, 4] and not table.problems


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("bit", "Unknown command 'bit' - try 'help'"),
        ("login debug", "Unknown command 'login' - try 'help'"),
        ("bat 4", "Command failed"),  # no 4th battery
        ("soh 4", "Command failed"),
        ("stat 4", "Target device is not present"),
        ("info 4", "Target device is not present"),
        ("pwr 4", "Command failed"),
        ("bat 17", "Invalid command or fail to excute."),  # out of range
        ("bat x", "Invalid command or fail to excute."),
        ("bat 1 2", "Invalid command or fail to excute."),
        ("time 2026 1 1 0 0 0", "Invalid command or fail to excute."),  # setting the clock
    ],
)
def test_errors_have_no_completion_line_and_still_end_at_dollars_and_the_prompt(command, message):
    responder = console()
    before = typed(responder, "pwr\n")
    data = typed(responder, command + "\n")
    got = parse_answer(data.decode(), command)
    assert not got.completed and got.message == message
    assert data.endswith(b"\r$$\r\n\rpylon>") and b"Command completed" not in data
    if message.startswith("Invalid"):
        assert got.usage is not None  # Usage: and the command's syntax
    assert typed(responder, "pwr\n") == before, "nothing changed"


def test_a_battery_beyond_the_rows_of_an_8_row_firmware_is_out_of_range():
    responder = console(2, "B66.6")
    assert answer(responder, "bat 8").message == "Command failed"  # in range, not there
    got = answer(responder, "bat 9")
    assert got.message == "Invalid command or fail to excute." and got.usage


def test_the_us3000d_rejects_info_n_and_stat_n_with_its_own_wording():
    responder = console(2, "B1.4.0.0")
    for command in ("info 1", "stat 2"):
        assert answer(responder, command).message == "Invalid command or fail to excute!"
    assert answer(responder, "stat").completed and answer(responder, "info").completed
    assert typed(responder, "stat\n").endswith(
        b"\rCommand completed successfully!\r\n\r$$\r\n\rpylon>"
    )


def test_help_stops_at_the_pager_and_enter_continues():
    responder = console()
    first = typed(responder, "help\n")
    assert first.endswith(b"\rPress [Enter] to be continued,other key to exit\r")
    assert b"$$" not in first
    last = typed(responder, "\n")
    assert b"Remote command:" in last and last.endswith(COMPLETED)
    assert typed(responder, "\n") == b"\n\rpylon>"


def test_time_without_arguments_prints_the_clock():
    got = answer(console(), "time")
    assert got.completed and printed_time(got.lines) == "2023-11-14 22:13:20"


# --- every layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("firmware", sorted(FIRMWARES))
def test_each_firmware_prints_its_layout_and_prompt(firmware):
    spec = FIRMWARES[firmware]
    responder = console(["US5000", "US2000C"], firmware)
    pwr = typed(responder, "pwr\n")
    assert pwr.endswith(f"$$\r\n\r{spec.prompt}".encode())
    table = tables.parse_pwr(answer(responder, "pwr").lines)
    assert len(table.columns) == PWR_TOKENS[spec.pwr] and not table.problems
    bat = tables.parse_bat(answer(responder, "bat 1").lines)
    assert not bat.problems and len(bat.cells) == 15
    assert ("BAL" in bat.columns) == (spec.bat in ("current", "us3000d"))
    assert ("Curr" in bat.columns) == (spec.bat != "pytes")
    assert ("DTemp. State" in bat.columns) == (spec.bat == "us3000d")
    assert ("SOC" in bat.columns) == (spec.bat in ("current", "us3000d"))
    soh = tables.parse_soh(answer(responder, "soh 1").lines)
    assert not soh.problems and len(soh.cells) == 15
    assert all(c.count is None for c in soh.cells) == spec.soh_status_only


def test_the_firmware_follows_the_masters_model_unless_told():
    assert ConsoleResponder(BatteryStack(modules=1, model="US2000C")).firmware.name == "B68.2"
    for model, firmware in MODEL_FIRMWARE.items():
        responder = ConsoleResponder(BatteryStack(modules=1, model=model))
        assert responder.firmware.name == firmware
    with pytest.raises(KeyError, match=r"known: B66\.6"):
        console(1, "B99")


# --- the property: what it prints parses back to the stack -----------------------------------

_MODELS = [name for name in MODELS if MODELS[name].cells >= 15]


@st.composite
def stacks(draw: st.DrawFn) -> tuple[BatteryStack, str]:
    firmware = draw(st.sampled_from(sorted(FIRMWARES)))
    rows = FIRMWARES[firmware].rows or 16
    models = draw(st.lists(st.sampled_from(_MODELS), min_size=1, max_size=rows))
    stack = BatteryStack(modules=models, seed=draw(st.integers(0, 1000)))
    stack.freeze()
    for module in stack.modules:
        limit = module.model.capacity / 2
        module.current = draw(st.floats(-limit, limit, allow_nan=False))
        module.soc = draw(st.floats(0.0, 1.0))
        module.cycle_number = draw(st.integers(0, 9999))
        cells = len(module.cell_voltages)
        module.cell_voltages = draw(st.lists(st.floats(2.5, 3.65), min_size=cells, max_size=cells))
        sensors = len(module.temperatures)
        module.temperatures = draw(
            st.lists(st.floats(-20.0, 70.0), min_size=sensors, max_size=sensors)
        )
    for module in stack.modules[1:]:
        module.present = draw(st.booleans())
    return stack, firmware


def _mv(volts: float) -> int:
    return round(volts * 1000)


def _c(celsius: float) -> float:
    return round(celsius * 10) * 100 / 1000


def _worst(states: Any) -> str:
    order = [AlarmState.NORMAL, AlarmState.LOW, AlarmState.HIGH, AlarmState.FAULT]
    return WORDS[max(states, key=order.index)]


def _expected_row(module: Any, layout: str) -> dict[str, Any]:
    cells = [_mv(v) for v in module.cell_voltages]
    groups = [_c(t) for t in module.temperatures[1:5]]
    alarms = module.alarms()
    current = _mv(module.current)
    mos = len(module.temperatures) > 5 and layout in ("18", "22", "23")
    return {
        "voltage": sum(cells) / 1000,
        "current": current / 1000,
        "temperature": _c(module.temperatures[0]),
        "mos_temperature": _c(module.temperatures[5]) if mos else None,
        "cell_voltage_min": min(cells) / 1000,
        "cell_voltage_max": max(cells) / 1000,
        "cell_temperature_min": min(groups),
        "cell_temperature_max": max(groups),
        "state_of_charge": round(module.soc * 100),
        "base_state": "Charge" if current > 0 else "Dischg" if current < 0 else "Idle",
        "voltage_state": WORDS[alarms.voltage_state],
        "temperature_state": WORDS[alarms.temperature_states[0]],
        "cell_voltage_state": _worst(alarms.cell_states),
        "cell_temperature_state": _worst(alarms.temperature_states[1:5]),
        "time": "2023-11-14 22:13:20",
    }


@given(stacks())
def test_what_the_console_prints_parses_back_to_the_stack_for_every_layout(drawn):
    stack, firmware = drawn
    spec = FIRMWARES[firmware]
    responder = ConsoleResponder(stack, firmware=firmware, clock=lambda: CLOCK)
    table = tables.parse_pwr(answer(responder, "pwr").lines)
    assert not table.problems
    present = {m.address - 1: m for m in stack.modules if m.present}
    assert [r.index for r in table.present] == sorted(present)
    listed = range(1, (spec.rows or max(present)) + 1)
    assert [r.index for r in table.rows] == [p for p in listed if spec.rows or p in present]
    for row in table.present:
        module = present[row.index]
        got = {key: getattr(row, key) for key in _expected_row(module, spec.pwr)}
        assert got == _expected_row(module, spec.pwr)
        if spec.pwr == "pytes":
            assert row.extra == {
                "Barcode": module.serial_number,
                "DevType": module.model.device_name,
            }

        bat = tables.parse_bat(answer(responder, f"bat {row.index}").lines)
        assert not bat.problems
        lowest = min(module.cell_voltages)
        charging = _mv(module.current) > 0
        assert [c.cell for c in bat.cells] == list(range(1, len(module.cell_voltages) + 1))
        for cell, volts in zip(bat.cells, module.cell_voltages):
            assert cell.voltage == _mv(volts) / 1000
            assert cell.temperature == _c(module.temperatures[1 + min(cell.index // 4, 3)])
            assert cell.state_of_charge == (round(module.soc * 100))
            assert cell.charge == round(module.remaining_capacity * 1000)
            assert cell.current == (None if spec.bat == "pytes" else _mv(module.current) / 1000)
            has_bal = spec.bat in ("current", "us3000d")
            balancing = charging and volts - lowest >= BALANCE_SPREAD
            assert cell.balancing == (balancing if has_bal else None)

        extras = responder.extras[module.address]
        if spec.indexed_info:
            identity = tables.parse_info(answer(responder, f"info {row.index}").lines).identity()
            assert identity.serial_number == module.serial_number
            assert identity.capacity == module.model.capacity
            assert identity.cell_count == module.model.cells
            stat = tables.parse_stat(answer(responder, f"stat {row.index}").lines)
            assert not stat.problems and stat.address == row.index
            statistics = stat.statistics()
            assert statistics.cycles == module.cycle_number
            soh = extras.state_of_health / 100 if spec.stat_soh else None
            assert statistics.state_of_health == soh
        health = tables.parse_soh(answer(responder, f"soh {row.index}").lines)
        assert not health.problems and health.power == row.index
        assert health.voltages == tuple(_mv(v) / 1000 for v in module.cell_voltages)


# --- faults ------------------------------------------------------------------------------------


def test_faults_apply_to_the_command_and_battery_they_name():
    responder = console()
    clean = typed(responder, "bat 2\n")
    responder.stack.faults.add("drop", command="bat", address=3, count=1)
    assert typed(responder, "bat 1\n") != b""  # another battery
    assert typed(responder, "pwr\n").startswith(b"pwr\n")  # another command
    assert responder.handle(b"bat 2\n").data is None  # silence
    assert typed(responder, "bat 2\n") == clean  # count=1: once


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ("junk:size=9", lambda got, clean: got[9:] == clean and got[:9] != clean[:9]),
        ("truncate:size=100", lambda got, clean: got == clean[:100]),
        ("truncate", lambda got, clean: got == clean[: len(clean) // 2] and b"$$" not in got),
        ("prompt", lambda got, clean: got == clean[: -len(b"pylon>")]),
        ("nul:size=5", lambda got, clean: got == clean + b"\0" * 5),
        (
            "rtn",
            lambda got, clean: (
                got == b"bat 1\n\r@\r\n\rInvalid command or fail to excute.\r\n\r$$\r\n\rpylon>"
            ),
        ),
    ],
)
def test_wire_faults_change_the_bytes_as_documented(spec, check):
    responder = console()
    clean = typed(responder, "bat 1\n")
    responder.stack.faults.extend([parse_fault(spec + (",count=1" if ":" in spec else ":count=1"))])
    got = typed(responder, "bat 1\n")
    assert check(got, clean), got[:120]
    assert typed(responder, "bat 1\n") == clean


def test_a_stale_fault_sends_the_previous_answer_first():
    responder = console()
    pwr = typed(responder, "pwr\n")
    bat = typed(responder, "bat 1\n")
    typed(responder, "pwr\n")
    responder.stack.faults.add("stale", command="bat", count=1)
    assert typed(responder, "bat 1\n") == pwr + bat


def test_silence_delay_and_trickle_are_told_to_the_server():
    responder = console()
    clean = typed(responder, "bat 1\n")
    responder.stack.faults.add("delay", command="bat", seconds=2.5, count=1)
    responder.stack.faults.add("trickle", command="bat", size=400, count=1)
    reply = responder.handle(b"bat 1\n")
    assert reply.data == clean and reply.delay == 2.5 and reply.pace == 1 / 400
    responder.stack.faults.add("trickle", command="bat", count=1)
    assert responder.handle(b"bat 1\n").pace == 1 / 100  # the default rate
    responder.stack.faults.add("delay", seconds=1, count=1)
    responder.stack.faults.add("delay", seconds=2, count=1)
    assert responder.handle(b"bat 1\n").delay == 3  # they add up, as on RS485


def test_a_trickle_on_a_real_line_brings_the_same_bytes_in_many_pieces():
    responder = console()
    clean = typed(responder, "bat 1\n")
    responder.stack.faults.add("trickle", command="bat", size=20000, count=1)
    pieces = []
    with TcpSimulator(responder, latency=0) as server:
        host, port = server.url.removeprefix("socket://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as line:
            line.sendall(b"bat 1\n")
            splitter, units = AnswerSplitter(), []
            while not units or not units[-1].endswith(b"pylon>"):
                piece = line.recv(4096)
                assert piece, "the console closed the line"
                pieces.append(piece)
                units += splitter.feed(piece)
    assert b"".join(pieces) == clean and len(pieces) > 10


def test_vanish_makes_the_battery_absent_and_its_commands_fail():
    responder = console()
    responder.stack.faults.add("vanish", module=3)  # battery 2
    rows = tables.parse_pwr(answer(responder, "pwr").lines).rows
    assert [r.absent for r in rows[:3]] == [False, True, False]
    assert answer(responder, "bat 2").message == "Command failed"
    assert answer(responder, "bat 3").completed
