"""End to end, RS232 console: the exporter as a process reading a ``pylontech-simulator
--console`` process, on TCP (``socket://``) and on a pty, scraped over HTTP.

A wiretap relays the line between the two (tests/support/wiretap.py), so the tests read
exactly what the exporter typed and what the console printed. The simulator's stack is
live (its clock runs), so the oracle is the transcript: every value a scrape exports
must be the one the console printed for it during that scrape (``pwr``, ``bat N``) or
when it was last read (``info N``, ``stat N``, ``soh N``), in the printed resolution,
and a value that was not printed in a complete answer is not exported (never stale,
never guessed). The transcript is parsed here independently of the package's parsers,
for the two layouts used (B69.16: 18-column ``pwr``, ``bat`` with SOC and BAL; B66.6:
16-column ``pwr``, ``bat`` with SOC and mAh under one Coulomb header).

Faults come from the simulator's own fault plan (``--fault``) on the pty line, one kind
per battery in the first scrape (junk, truncated reply, lost prompt, silence, slow
trickle), and from the wiretap on the TCP line (the console falls silent; noise). A
fault costs at most that scrape's data of that command; the exporter keeps serving and
recovers. Every byte the exporter sent is a command of the read-only allow-list.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import REPO
from support.metrics import Key, console_only_families, key, select
from support.net import free_port
from support.processes import Exporter, Process
from support.stacks import healthy_stack
from support.waiting import wait_for, wait_until
from support.wiretap import PtyWiretap, TcpWiretap, Wiretap

from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.serve import TcpSimulator

#: What the exporter may type, independent of the package's own allow-list: reads of
#: one battery 1..16 or of the stack, and the empty line that finds the prompt again.
READ_ONLY = re.compile(r"(?:(?:pwr|bat|stat|info|soh)(?: (?:[1-9]|1[0-6]))?|)")

#: A generous scrape timeout (header): the fault tests want every command tried.
SCRAPE_TIMEOUT = 10.0
SERIAL_TIMEOUT = "0.5"


# --------------------------------------------------------------------------------------
# the console's transcript, parsed here
# --------------------------------------------------------------------------------------

#: A complete answer: the echo of the command, ``@``, the text, ``Command completed``
#: and ``$$`` (the prompt after it may be lost), with no other answer's end inside (a
#: truncated answer is not completed by the next one). Junk before the echo may be there.
ANSWER = re.compile(
    rb"(?P<command>(?:pwr|bat|stat|info|soh)(?: \d+)?)\n\r@\r\r?\n"
    rb"(?P<body>(?:(?!\$\$|pylon>).)*?)"
    rb"\r\n\rCommand completed successfully!?\r\n\r\$\$\r\n(?P<prompt>\rpylon>)?",
    re.DOTALL,
)
PROMPT = b"\rpylon>"


@dataclass(frozen=True)
class Printed:
    command: str
    lines: list[str]
    #: Right after a prompt and followed by one: nothing on the line spoilt it, so the
    #: exporter must use it (an answer with junk before it or without its prompt may be
    #: dropped: a fault costs at most that answer).
    clean: bool


def answers(heard: bytes) -> list[Printed]:
    """Every complete answer in ``heard``, in order."""
    found = []
    for match in ANSWER.finditer(heard):
        before = heard[: match.start()]
        clean = match["prompt"] is not None and (
            before.endswith(PROMPT) or before.endswith(PROMPT + b"\n") or not before
        )
        text = match["body"].decode("latin-1")
        lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
        found.append(Printed(match["command"].decode(), lines, clean))
    return found


def last_answers(heard: bytes) -> dict[str, Printed]:
    """The last complete answer to each command."""
    return {printed.command: printed for printed in answers(heard)}


def parse_pwr(lines: list[str]) -> dict[int, dict[str, str]]:
    """``pwr`` -> {battery: {header: value}} for the present batteries (Time is two words)."""
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        words = line.split()
        if "Absent" in words:
            continue
        at = header.index("Time")
        words[at : at + 2] = [" ".join(words[at : at + 2])]
        assert len(words) == len(header), f"pwr row does not fit its header: {line!r}"
        rows[int(words[0])] = dict(zip(header, words))
    return rows


#: ``bat`` layouts by their last header word: the words of a row, in order.
_BAT_WORDS = ("cell", "volt", "curr", "tempr", "base", "vstate", "cstate", "tstate", "soc", "mah")
BAT_FIELDS = {
    "BAL": (*_BAT_WORDS, "unit", "bal"),  # B69.16: SOC, Coulomb, BAL
    "Coulomb": (*_BAT_WORDS, "unit"),  # B66.6: SOC % and mAh under one Coulomb header
}


def parse_bat(lines: list[str]) -> list[dict[str, str]]:
    fields = BAT_FIELDS[lines[0].split()[-1]]
    cells = [dict(zip(fields, line.split(), strict=True)) for line in lines[1:]]
    assert [int(c["cell"]) for c in cells] == list(range(len(cells)))
    return cells


def parse_records(lines: list[str]) -> dict[str, str]:
    """``Key : value`` lines (``stat N``, ``info N``)."""
    records = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            records[name.strip()] = value.strip()
    return records


STATES = ("normal", "low", "high", "fault")
BASE_STATES = {"Charge": "charge", "Dischg": "discharge", "Idle": "idle", "Balance": "balance"}


def state_set(name: str, word: str, **labels: object) -> dict[Key, float]:
    now = word.lower() if word.lower() in STATES[:3] else "fault"
    return {key(name, **labels, state=s): float(s == now) for s in STATES}


def _milli(text: str) -> float:
    return int(text) / 1000


def expected_from_pwr(row: dict[str, str], b: dict[str, object]) -> dict[Key, float]:
    volts, amperes = _milli(row["Volt"]), _milli(row["Curr"])
    out = {
        key("pylontech_module_voltage_volts", **b): volts,
        key("pylontech_module_current_amperes", **b): amperes,
        key("pylontech_module_power_watts", **b): volts * amperes,
        key("pylontech_module_state_of_charge_ratio", **b): int(row["Coulomb"].rstrip("%")) / 100,
        key("pylontech_module_temperature_celsius", **b, sensor="bms"): _milli(row["Tempr"]),
        key("pylontech_module_cell_voltage_min_volts", **b): _milli(row["Vlow"]),
        key("pylontech_module_cell_voltage_max_volts", **b): _milli(row["Vhigh"]),
        key("pylontech_module_cell_temperature_min_celsius", **b): _milli(row["Tlow"]),
        key("pylontech_module_cell_temperature_max_celsius", **b): _milli(row["Thigh"]),
    }
    if row.get("MosTempr", "-") != "-":
        out[key("pylontech_module_temperature_celsius", **b, sensor="mosfet")] = _milli(
            row["MosTempr"]
        )
    base = BASE_STATES.get(row["Base.St"], "other")
    for state in ("charge", "discharge", "idle", "balance", "other"):
        out[key("pylontech_module_base_state", **b, state=state)] = float(state == base)
    out |= state_set("pylontech_module_temperature_state", row["Temp.St"], **b, sensor="bms")
    for measurement, column in (
        ("module_voltage", "Volt.St"),
        ("current", "Curr.St"),
        ("cell_voltage", "B.V.St"),
        ("cell_temperature", "B.T.St"),
    ):
        out |= state_set(
            "pylontech_module_measurement_state", row[column], **b, measurement=measurement
        )
    return out


def expected_from_bat(cells: list[dict[str, str]], b: dict[str, object]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for row in cells:
        c = {**b, "cell": int(row["cell"]) + 1}
        out[key("pylontech_cell_voltage_volts", **c)] = _milli(row["volt"])
        out[key("pylontech_cell_temperature_celsius", **c)] = _milli(row["tempr"])
        out[key("pylontech_cell_state_of_charge_ratio", **c)] = int(row["soc"].rstrip("%")) / 100
        out[key("pylontech_cell_remaining_capacity_ampere_hours", **c)] = _milli(row["mah"])
        if "bal" in row:
            out[key("pylontech_cell_balancing_active", **c)] = float(row["bal"] == "Y")
        out |= state_set("pylontech_cell_voltage_state", row["vstate"], **c)
        out |= state_set("pylontech_cell_temperature_state", row["tstate"], **c)
    return out


def expected_from_static(
    printed: dict[str, Printed], position: int, soc: float, b: dict[str, object]
) -> dict[Key, float]:
    """What ``info N``, ``stat N`` and ``soh N`` (as last printed) give battery ``position``."""
    out: dict[Key, float] = {}
    if f"info {position}" in printed:
        info = parse_records(printed[f"info {position}"].lines)
        capacity = float(re.fullmatch(r"[\d.]+V/([\d.]+)AH", info["Specification"])[1])
        out[key("pylontech_module_full_capacity_ampere_hours", **b)] = capacity
        out[key("pylontech_module_remaining_capacity_ampere_hours", **b)] = soc * capacity
        info_labels = {
            "serial_number": info["Barcode"],
            "software_version": info["Main Soft version"],
        }
        out[key("pylontech_module_info", **b, **info_labels)] = 1.0
    if f"stat {position}" in printed:
        stat = parse_records(printed[f"stat {position}"].lines)
        out[key("pylontech_module_cycles_total", **b)] = float(stat["CYCLE Times"])
        out[key("pylontech_module_discharged_ampere_hours_total", **b)] = _milli(stat["Dsg Cap"])
        if "SOH" in stat:
            out[key("pylontech_module_state_of_health_ratio", **b)] = int(stat["SOH"]) / 100
        for printed_name, event in (
            ("Charge Cnt.", "charge_cnt"),
            ("COC Times", "coc_times"),
            ("Bat OV Times", "bat_ov_times"),
            ("Shut Times", "shut_times"),
            ("HT@0.5C Cnt", "ht_at_0_5c_cnt"),
        ):
            out[key("pylontech_module_lifetime_events_total", **b, event=event)] = float(
                stat[printed_name]
            )
    if f"soh {position}" in printed:
        for line in printed[f"soh {position}"].lines[2:]:
            cell, _, count, status = line.split()
            c = {**b, "cell": int(cell) + 1}
            out[key("pylontech_cell_sohcount", **c)] = float(count)
            out[key("pylontech_cell_state_of_health_info", **c, status=status.lower())] = 1.0
    return out


#: The families the judge compares series by series, by where their values come from.
PWR_FAMILIES = frozenset(
    {
        "pylontech_module_voltage_volts",
        "pylontech_module_current_amperes",
        "pylontech_module_power_watts",
        "pylontech_module_state_of_charge_ratio",
        "pylontech_module_temperature_celsius",
        "pylontech_module_cell_voltage_min_volts",
        "pylontech_module_cell_voltage_max_volts",
        "pylontech_module_cell_temperature_min_celsius",
        "pylontech_module_cell_temperature_max_celsius",
        "pylontech_module_base_state",
        "pylontech_module_temperature_state",
        "pylontech_module_measurement_state",
    }
)
BAT_FAMILIES = frozenset(
    {
        "pylontech_cell_voltage_volts",
        "pylontech_cell_temperature_celsius",
        "pylontech_cell_state_of_charge_ratio",
        "pylontech_cell_remaining_capacity_ampere_hours",
        "pylontech_cell_balancing_active",
        "pylontech_cell_voltage_state",
        "pylontech_cell_temperature_state",
    }
)
STATIC_FAMILIES = frozenset(
    {
        "pylontech_module_full_capacity_ampere_hours",
        "pylontech_module_remaining_capacity_ampere_hours",
        "pylontech_module_info",
        "pylontech_module_cycles_total",
        "pylontech_module_discharged_ampere_hours_total",
        "pylontech_module_state_of_health_ratio",
        "pylontech_cell_sohcount",
        "pylontech_cell_state_of_health_info",
    }
)
#: Compared for the counters named in expected_from_static only (there are ~50).
EVENTS = "pylontech_module_lifetime_events_total"


def _of(samples: dict[Key, float], families: frozenset[str], module: int) -> dict[Key, float]:
    wanted = ("module", str(module))
    return {k: v for k, v in samples.items() if k[0] in families and wanted in k[1]}


def _differences(actual: dict[Key, float], expected: dict[Key, float]) -> list[str]:
    problems = [f"missing {k}" for k in sorted(set(expected) - set(actual))]
    problems += [f"not printed, yet exported: {k}" for k in sorted(set(actual) - set(expected))]
    problems += [
        f"{k}: exported {actual[k]!r}, printed {v!r}"
        for k, v in sorted(expected.items())
        if k in actual and abs(actual[k] - v) > 1e-9 * max(1.0, abs(v))
    ]
    return problems


@dataclass
class Scrape:
    samples: dict[Key, float]
    #: What the exporter received during the scrape, and everything up to its end.
    window: bytes
    history: bytes
    #: What the exporter sent during the scrape.
    sent: bytes

    def value(self, name: str, **labels: object) -> float | None:
        return self.samples.get(key(name, **labels))


def judge(scrape: Scrape, modules: int, bank: str = "0") -> list[str]:
    """Everything in ``scrape`` that is not what the console printed (empty: all is well).

    ``pwr`` and ``bat N`` values must come from an answer printed during the scrape,
    ``info N``, ``stat N``, ``soh N`` values from the last one printed before it (or
    during it: a read between scrapes may end while the scrape runs). A clean answer
    (see :class:`Printed`) must be used; a spoilt one may be dropped; an incomplete one
    (truncated, lost, an error) must not be used: its data is missing this scrape."""
    problems: list[str] = []
    printed = answers(scrape.window)
    statics = [
        last_answers(scrape.history[: len(scrape.history) - len(scrape.window)]),
        last_answers(scrape.history),
    ]
    pwr = next((p for p in reversed(printed) if p.command == "pwr"), None)
    rows = parse_pwr(pwr.lines) if pwr else {}
    up = scrape.value("pylontech_up", bank=bank)
    if pwr is None and up != 0.0:
        problems.append(f"no pwr answer was printed, yet pylontech_up is {up}")
    if pwr is not None and pwr.clean and up != 1.0:
        problems.append(f"a clean pwr answer was printed, yet pylontech_up is {up}")
    for position in range(1, modules + 1):
        b = {"bank": bank, "module": position}
        module_up = scrape.value("pylontech_module_up", **b)
        everything = {k: v for k, v in scrape.samples.items() if ("module", str(position)) in k[1]}
        readings = _of(everything, PWR_FAMILIES | BAT_FAMILIES | STATIC_FAMILIES, position)
        if module_up != 1.0:
            if position in rows and pwr is not None and pwr.clean:
                problems.append(f"module {position}: printed by a clean pwr, yet up={module_up}")
            if readings:
                problems.append(f"module {position} is not up, yet exports {sorted(readings)[:3]}")
            continue
        if position not in rows:
            problems.append(f"module {position} is up, but this scrape's pwr did not print it")
            continue
        row = rows[position]
        problems += [
            f"module {position} pwr: {p}"
            for p in _differences(
                _of(everything, PWR_FAMILIES, position), expected_from_pwr(row, b)
            )
        ]
        soc = int(row["Coulomb"].rstrip("%")) / 100
        static_problems = []
        for static in statics:
            static_expected = expected_from_static(static, position, soc, b)
            events = {k: v for k, v in static_expected.items() if k[0] == EVENTS}
            others = {k: v for k, v in static_expected.items() if k[0] != EVENTS}
            static_problems = _differences(_of(everything, STATIC_FAMILIES, position), others)
            static_problems += _differences(
                {k: everything[k] for k in events if k in everything}, events
            )
            if not static_problems:
                break
        problems += [f"module {position} info/stat/soh: {p}" for p in static_problems]
        bats = [p for p in printed if p.command == f"bat {position}"]
        cells = _of(everything, BAT_FAMILIES, position)
        candidates = [expected_from_bat(parse_bat(p.lines), b) for p in bats]
        if cells and not any(not _differences(cells, c) for c in candidates):
            problems.append(
                f"module {position}: exported cells that no complete bat {position} answer "
                f"of this scrape printed ({len(bats)} printed); e.g. "
                + "; ".join((_differences(cells, candidates[-1]) if candidates else [])[:3])
            )
        if not cells and any(p.clean for p in bats):
            problems.append(f"module {position}: a clean bat {position} answer was not used")
        success = scrape.value("pylontech_module_read_success", **b, command="bat")
        if success != float(bool(cells)):
            problems.append(f"module {position}: cells exported: {bool(cells)}, success {success}")
    return problems


# --------------------------------------------------------------------------------------
# the line: a simulator process, the wiretap, the exporter process
# --------------------------------------------------------------------------------------


@dataclass
class Line:
    simulator: Process
    tap: Wiretap
    exporter: Exporter
    modules: int

    def scrape(self, timeout: float = SCRAPE_TIMEOUT) -> Scrape:
        sent, heard = self.tap.mark()
        samples = self.exporter.scrape(timeout_header=timeout)
        with self.tap.lock:
            return Scrape(
                samples,
                bytes(self.tap.heard[heard:]),
                bytes(self.tap.heard),
                bytes(self.tap.sent[sent:]),
            )

    def describe(self) -> str:
        return self.exporter.describe() + "\n" + self.simulator.describe()


def start_simulator(tmp: Path, where: list[str], *options: str) -> Process:
    """``pylontech-simulator --console`` as a process, once it says it listens."""
    process = Process(
        "pylontech-simulator",
        [
            sys.executable,
            "-m",
            "pylontech_exporter.simulator.cli",
            *where,
            "--console",
            "--latency",
            "0",
            *options,
        ],
        tmp / "simulator.log",
        cwd=REPO,
    )
    wait_until(
        lambda: "listening on" in process.output(),
        "the simulator to listen",
        20,
        alive=lambda: None if process.running() else process.describe(),
    )
    return process


def start_exporter(port: str, serial_timeout: str = SERIAL_TIMEOUT) -> Exporter:
    return Exporter(
        "--serial.protocol",
        "console",
        "--serial.port",
        port,
        "--cache.ttl",
        "0",
        "--serial.timeout",
        serial_timeout,
    )


TCP_MODULES = 3


@pytest.fixture(scope="module")
def tcp_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """3 US3000C, the default firmware of the model (B69.16), on TCP."""
    tmp = tmp_path_factory.mktemp("console_tcp")
    port = free_port()
    simulator = start_simulator(
        tmp, ["--tcp", f"127.0.0.1:{port}"], "--modules", str(TCP_MODULES), "--seed", "3"
    )
    try:
        with TcpWiretap("127.0.0.1", port) as tap, start_exporter(tap.url) as exporter:
            yield Line(simulator, tap, exporter, TCP_MODULES)
    finally:
        simulator.stop()


#: One fault per battery, each once, on the first bat N of each, in the first scrape
#: (the exporter reads bat N only when scraped). Battery N is address N + 1.
PTY_FAULTS = {
    1: "junk:size=12",
    2: "truncate",
    # 3: none, a clean answer between two faults
    4: "prompt",
    5: "drop",
    6: "trickle:size=4000",
}
PTY_MODULES = 6


@pytest.fixture(scope="module")
def pty_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    """6 US3000C on a pty, with the old B66.6 layout and the faults of PTY_FAULTS."""
    tmp = tmp_path_factory.mktemp("console_pty")
    faults = []
    for battery, fault in PTY_FAULTS.items():
        kind, _, options = fault.partition(":")
        spec = f"{kind}:command=bat,address={battery + 1},count=1"
        faults += ["--fault", spec + (f",{options}" if options else "")]
    simulator = start_simulator(
        tmp,
        ["--pty", str(tmp / "ttyConsole")],
        "--modules",
        str(PTY_MODULES),
        "--seed",
        "4",
        "--firmware",
        "B66.6",
        *faults,
    )
    try:
        with (
            PtyWiretap(tmp / "ttyConsole", tmp / "ttyTap") as tap,
            start_exporter(str(tmp / "ttyTap")) as exporter,
        ):
            yield Line(simulator, tap, exporter, PTY_MODULES)
    finally:
        simulator.stop()


def _all_read(line: Line) -> Scrape | None:
    """A scrape (judged) in which every battery is up with its cells, else None."""
    scrape = line.scrape()
    problems = judge(scrape, line.modules)
    assert not problems, "\n".join(problems) + "\n" + line.describe()
    cells = select(scrape.samples, "pylontech_cell_voltage_volts")
    return scrape if len(cells) == 15 * line.modules else None


# --------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------


def test_every_scrape_exports_what_the_console_printed(tcp_line: Line):
    for _ in range(3):
        scrape = tcp_line.scrape()
        problems = judge(scrape, TCP_MODULES)
        assert not problems, "\n".join(problems)
        # Not vacuous: everything was printed cleanly and so is all there.
        assert scrape.value("pylontech_up", bank="0") == 1
        for family, per_module in (
            ("pylontech_module_voltage_volts", 1),
            ("pylontech_cell_voltage_volts", 15),
            ("pylontech_cell_temperature_celsius", 15),
            ("pylontech_cell_balancing_active", 15),
            ("pylontech_module_state_of_charge_ratio", 1),
            ("pylontech_module_full_capacity_ampere_hours", 1),
            ("pylontech_module_cycles_total", 1),
            ("pylontech_module_state_of_health_ratio", 1),
            ("pylontech_cell_sohcount", 15),
        ):
            assert len(select(scrape.samples, family)) == per_module * TCP_MODULES, family
        assert len(select(scrape.samples, "pylontech_module_info")) == TCP_MODULES
        sent = scrape.sent.decode()
        assert sent == "pwr\n" + "".join(f"bat {n}\n" for n in range(1, TCP_MODULES + 1)), sent


@pytest.mark.parametrize("family", console_only_families())
def test_every_console_only_family_is_exported(tcp_line: Line, family: str):
    samples = tcp_line.scrape().samples
    assert select(samples, family), f"{family} has no sample"
    if family != "pylontech_console_unparsed_total":
        per_module = {dict(k[1]).get("module") for k in select(samples, family)}
        assert per_module == {str(m) for m in range(1, TCP_MODULES + 1)}, family


def test_a_silent_console_and_noise_cost_only_their_scrapes(tcp_line: Line):
    line = tcp_line
    assert _all_read(line)
    line.tap.mute = True  # the console falls silent (a cable unplugged)
    try:
        silent = line.scrape(timeout=3.0)
    finally:
        line.tap.mute = False
    assert not silent.window
    assert silent.value("pylontech_up", bank="0") == 0
    assert not judge(silent, TCP_MODULES)  # module_up 0 and no readings: nothing stale
    assert {silent.value("pylontech_module_up", bank="0", module=m) for m in (1, 2, 3)} == {0.0}
    failures = select(silent.samples, "pylontech_serial_request_failures_total")
    assert sum(failures.values()) > 0
    # Noise on the line (a prompt and a $$ in it too), then the console answers again.
    line.tap.inject(b"\x00\x07~20014642\r\n$$\r\n garbage pylon>\xff\xfe@\r\n")
    recovered = wait_for(lambda: _all_read(line), timeout=30, interval=0.2)
    assert recovered, line.describe()


def test_faults_cost_at_most_their_command_in_their_scrape(pty_line: Line):
    line = pty_line
    sent_before = bytes(line.tap.sent)
    first = line.scrape()
    # The first bat N of every battery is in this scrape, so each fault fires in it.
    assert b"bat" not in sent_before
    for battery in range(1, PTY_MODULES + 1):
        assert f"bat {battery}\n".encode() in first.sent, first.sent
    problems = judge(first, PTY_MODULES)
    assert not problems, "\n".join(problems) + "\n" + line.describe()
    assert first.value("pylontech_up", bank="0") == 1
    printed = answers(first.window)

    def heard(battery: int) -> list[Printed]:
        return [p for p in printed if p.command == f"bat {battery}"]

    def echoes(battery: int) -> int:
        return first.window.count(f"bat {battery}\n\r@".encode())

    # The faults happened as planned (else this test proves nothing). A failed bat N is
    # tried again once in the same scrape, after the prompt was found again.
    assert [p.clean for p in heard(1)] == [False], "junk before bat 1"
    assert echoes(2) == 2 and len(heard(2)) == 1, "bat 2 truncated, then asked again"
    assert [p.clean for p in heard(3)] == [True]
    assert [p.clean for p in heard(4)] == [False], "bat 4 without its prompt"
    assert first.sent.count(b"bat 5\n") == 2 and echoes(5) == 1, "bat 5 silent, then again"
    # Every battery is up with its pwr values, whatever its bat N went through; battery
    # 3, between two faults, has its cells.
    for battery in range(1, PTY_MODULES + 1):
        assert first.value("pylontech_module_up", bank="0", module=battery) == 1
    assert len(select(first.samples, "pylontech_cell_voltage_volts", module="3")) == 15
    # It keeps serving, and recovers: every later scrape judged, until one has it all.
    recovered = wait_for(lambda: _all_read(line), timeout=30, interval=0.2)
    assert recovered, line.describe()


def test_layout_b66_on_a_pty_exports_what_was_printed(pty_line: Line):
    scrape = wait_for(lambda: _all_read(pty_line), timeout=30, interval=0.2)
    assert scrape, pty_line.describe()
    # B66.6 prints no SOH in stat and has no BAL column: those series are absent.
    assert not select(scrape.samples, "pylontech_module_state_of_health_ratio")
    assert not select(scrape.samples, "pylontech_cell_balancing_active")
    assert len(select(scrape.samples, "pylontech_module_cycles_total")) == PTY_MODULES


@pytest.mark.parametrize("which", ["tcp_line", "pty_line"])
def test_only_read_commands_were_ever_sent(request: pytest.FixtureRequest, which: str):
    line: Line = request.getfixturevalue(which)
    line.scrape()
    with line.tap.lock:
        sent = bytes(line.tap.sent)
    assert sent.endswith(b"\n") and b"\r" not in sent, "one LF per command, never CR"
    typed = sent.decode("ascii").split("\n")[:-1]
    refused = sorted({command for command in typed if not READ_ONLY.fullmatch(command)})
    assert not refused, f"commands outside the read-only allow-list: {refused}"
    assert {"pwr", "bat 1", "info 1", "stat 1", "soh 1"} <= set(typed)


#: Scrapes at a 1 s scrape timeout allowed for what needs several: counted, not timed (a
#: loaded machine fits fewer bat N in one, the oldest-first order still reaches every one).
SHORT_SCRAPES = 10


def _with_cells(samples: dict[Key, float]) -> set[str]:
    """The modules whose cells a scrape has."""
    return {dict(k[1])["module"] for k in select(samples, "pylontech_cell_voltage_volts")}


def test_demo_serves_console_data_from_the_first_scrape():
    """Every battery's pwr values from the first scrape (the exporter not waited for);
    at a 1 s scrape timeout the cells as time allows, the ones read longest ago first, so
    every battery's within a few scrapes."""
    with Exporter("--simulate", "--serial.protocol", "console", ready=False) as exporter:
        first = exporter.scrape(timeout_header=SCRAPE_TIMEOUT)
        assert first[key("pylontech_up", bank="0")] == 1
        for module in (1, 2, 3):
            b = {"bank": "0", "module": module}
            assert first[key("pylontech_module_up", **b)] == 1
            assert 40 < first[key("pylontech_module_voltage_volts", **b)] < 60
            assert 0 <= first[key("pylontech_module_state_of_charge_ratio", **b)] <= 1
            assert key("pylontech_module_temperature_celsius", **b, sensor="bms") in first
        with_cells: set[str] = set()
        for _ in range(SHORT_SCRAPES):
            with_cells |= _with_cells(exporter.scrape(timeout_header=1.0))
            if with_cells == {"1", "2", "3"}:
                break
    assert with_cells == {"1", "2", "3"}


def test_one_slow_bat_answer_does_not_stop_the_cell_reads_for_good():
    """A slow answer once (a line hiccup, a retry, a loaded CPU) must not leave an
    estimate that no bat N fits in again at a short scrape timeout: a bat 2 of 2 s read in
    a long scrape, then at a 1 s scrape timeout the cells come back within a few scrapes."""
    stack = healthy_stack(0, -3.0, 11, 2)
    slow = stack.faults.add("delay", command="bat", address=3, count=1, seconds=2.0)
    with (
        TcpSimulator(ConsoleResponder(stack), latency=0) as console,
        start_exporter(console.url, serial_timeout="4") as exporter,
    ):
        long = exporter.scrape(timeout_header=SCRAPE_TIMEOUT)
        assert slow.fired == 1 and _with_cells(long) == {"1", "2"}, "bat 2 read, slowly"
        short = []
        for _ in range(SHORT_SCRAPES):
            short.append(_with_cells(exporter.scrape(timeout_header=1.0)))
            if short[-1]:
                break
    assert short[-1], f"no cells in {len(short)} scrapes after the slow bat 2"
