"""The RS232 console: a scrape's time against the line floor, and the bytes of each command.

Per stack of 1 to 16 batteries (model ``US5000-16S``, 16 cells, firmware B69.26: the
widest ``pwr`` layout), the virtual console (:class:`ConsoleResponder`) is served on a pty
at 115200 Bd by :class:`ConsoleLine`, the same emulated line as the RS485 sections
(:class:`bench.line.PacedLine`): answers paced at the baud rate (10 bits per byte), the
typed line's own bytes waited for first, the simulator's time to build an answer taken out.
The console's time to its first byte is not in the recordings: it is 0 here, so the floor
is the bytes alone: (typed line + answer, its echo included) x 10 / baud, summed over the
commands of the scrape. Three scrapes:

- *pwr only*: the exporter's client (:class:`ConsoleShell`) sends ``pwr``, the one command
  every scrape needs; its answer must list every battery;
- *pwr + bat N*: the exporter's read plan (:class:`Poller` of a console bank, in this
  process, once the batteries and their static data are known): ``pwr`` and ``bat N`` of
  every battery, within Prometheus' default scrape timeout (10 s); the snapshot must hold
  every battery up with all its cells;
- *over HTTP*, on the largest stack: a ``pylontech-exporter --serial.protocol console``
  process (:class:`~bench.exporter.ExporterProcess`) scraped as Prometheus scrapes it,
  once it is ready; every scrape must hold every battery's values and cells.

From the measured times: how many batteries' cells fit a 10 s scrape at 115200 Bd, and at
the floor what fits at 9600 and 1200 Bd (old firmware's console rate). The byte counts per
command (``pwr``, ``bat N`` of 15 and 16 cells, ``stat N``, ``info N``, ``soh N``) come
from the virtual console, whose layouts are those of the real recordings.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.console import tables
from pylontech_exporter.console.shell import ConsoleShell
from pylontech_exporter.poller import Poller
from pylontech_exporter.simulator import BatteryStack, Responder
from pylontech_exporter.simulator.console import ConsoleResponder

from .exporter import ExporterProcess, coverage
from .line import MODEL, PacedLine, make_stack
from .section import Options, Result, table

BAUD = 115200
#: Baud rates the floor is extrapolated to (a console switched to 9600, old firmware's 1200).
SLOWER = (9600, 1200)
#: Prometheus' default scrape timeout: the budget a scrape has.
BUDGET = 10.0
QUICK_BATTERIES = (1, 2)
REPS = 3
QUICK_REPS = 1
#: Seconds the batteries and their static data may take to be learnt.
SETTLE = 120.0
#: The layouts whose byte counts are listed: 15 cells and 16 cells.
COUNTED = (("US5000", "15 cells, US5000 B69.16"), (MODEL, "16 cells, US5000-16S B69.26"))


@dataclass
class Typed:
    """One line typed at the console and its answer: when the answer was due to start
    (time.monotonic()), bytes each way, and what was typed (without its terminator)."""

    at: float
    request: int
    response: int
    command: str


@dataclass
class ConsoleLine(PacedLine[Typed]):
    """The console's line: the stack's virtual console, every typed line recorded."""

    firmware: str | None = None

    def make_responder(self) -> Responder:
        return ConsoleResponder(self.stack, firmware=self.firmware)

    def record(self, at: float, request: bytes, answer: bytes) -> Typed:
        command = request.rstrip(b"\r\n").decode("latin-1")
        return Typed(at, len(request), len(answer), command)


@contextmanager
def served(batteries: int) -> Iterator[tuple[ConsoleLine, str]]:
    """A stack of ``batteries`` on a fresh pty at :data:`BAUD`: (line, the pty's path)."""
    line = ConsoleLine(make_stack(batteries, 1), baudrate=BAUD, latency=0.0)
    with tempfile.TemporaryDirectory(prefix="pylontech-bench-console-") as folder:
        link = os.path.join(folder, "console")
        with line.serve_pty(link):
            yield line, link


@dataclass
class StackRun:
    batteries: int
    #: Per repetition: seconds, floor, bytes, commands (as typed).
    pwr: list[dict[str, Any]] = field(default_factory=list)
    full: list[dict[str, Any]] = field(default_factory=list)
    #: Scrapes over HTTP (the largest stack only): as ``full``, and the exporter's CPU.
    http: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds until the batteries and their static data were known.
    settled: float = 0.0
    error: str | None = None

    def median(self, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in getattr(self, kind))


def observed(line: ConsoleLine, seconds: float, exchanges: list[Typed]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "floor": line.floor(exchanges),
        "bytes": sum(e.request + e.response for e in exchanges),
        "commands": [e.command for e in exchanges],
    }


def measure(batteries: int, reps: int, http: bool) -> StackRun:
    run = StackRun(batteries)
    with served(batteries) as (line, link):
        with ConsoleShell(link, BAUD) as shell:
            shell.run("pwr")  # finds the prompt first
            for _ in range(reps):
                line.reset()
                start = time.monotonic()
                answer = shell.run("pwr")
                seconds = time.monotonic() - start
                listed = len(tables.parse_pwr(answer.lines).present)
                if listed != batteries:
                    raise RuntimeError(f"pwr listed {listed} of {batteries} batteries")
                run.pwr.append(observed(line, seconds, line.reset()))
        serial = SerialSettings(port=link, baudrate=BAUD, protocol="console")
        poller = Poller([BankConfig("console", serial)])
        try:
            began = time.monotonic()
            poller.start()
            while not all(b.settled for b in poller.banks):
                if time.monotonic() - began > SETTLE:
                    raise RuntimeError(f"the batteries were not learnt in {SETTLE:.0f} s")
                time.sleep(0.05)
            run.settled = time.monotonic() - began
            cells = line.stack.modules[0].model.cells
            for _ in range(reps):
                start = time.monotonic()
                snapshot = poller.read(start + BUDGET)
                end = time.monotonic()
                read = [
                    m.position
                    for b in snapshot.banks
                    for m in b.modules
                    if m.up and m.values is not None and len(m.values.cell_voltages) == cells
                ]
                if not snapshot.complete or len(read) != batteries:
                    raise RuntimeError(
                        f"a scrape held the cells of {len(read)} of {batteries} batteries"
                    )
                run.full.append(observed(line, end - start, line.between(start, end)))
        finally:
            poller.close()
        if http:
            run.http = scrape_http(line, link, reps)
    return run


def scrape_http(line: ConsoleLine, link: str, reps: int) -> list[dict[str, Any]]:
    """Steady scrapes of an exporter process reading the console at ``link``."""
    batteries = len(line.stack.modules)
    cells = batteries * line.stack.modules[0].model.cells
    scrapes = []
    extra = ["--serial.protocol", "console"]
    with ExporterProcess(link, baudrate=BAUD, groups=[], extra=extra) as exporter:
        exporter.wait_listening()
        while exporter.get("/-/ready").status != 200:
            if time.monotonic() - exporter.started > SETTLE:
                raise RuntimeError(f"the exporter was not ready in {SETTLE:.0f} s")
            time.sleep(0.1)
        for _ in range(reps):
            cpu = exporter.resources()["cpu_s"]
            scrape = exporter.scrape(BUDGET)
            banks = coverage(scrape.body)
            read = sum(len(b.values) for b in banks.values())
            voltages = scrape.body.count(b"\npylontech_cell_voltage_volts{")
            if scrape.status != 200 or read != batteries or voltages != cells:
                raise RuntimeError(
                    f"a scrape over HTTP held {read} of {batteries} batteries' values and "
                    f"{voltages} of {cells} cells (HTTP {scrape.status} {scrape.error or ''})"
                )
            measured = observed(line, scrape.seconds, line.between(scrape.start, scrape.end))
            measured["cpu"] = exporter.resources()["cpu_s"] - cpu
            measured["body"] = len(scrape.body)
            scrapes.append(measured)
    return scrapes


def command_bytes() -> dict[str, dict[str, int]]:
    """Bytes on the wire (typed line + answer) per command, per layout of :data:`COUNTED`."""
    counted: dict[str, dict[str, int]] = {}
    for model, label in COUNTED:
        one, sixteen = (ConsoleResponder(frozen(model, n)) for n in (1, 16))
        counted[label] = {
            "pwr, 1 battery": typed_bytes(one, "pwr"),
            "pwr, 16 batteries": typed_bytes(sixteen, "pwr"),
            **{f"{c} N": typed_bytes(one, f"{c} 1") for c in ("bat", "stat", "info", "soh")},
        }
    return counted


def frozen(model: str, batteries: int) -> BatteryStack:
    stack = BatteryStack(modules=batteries, model=model, seed=batteries)
    stack.freeze()
    return stack


def typed_bytes(console: ConsoleResponder, command: str) -> int:
    typed = command.encode() + b"\n"
    return len(typed) + len(console.respond(typed) or b"")


def fits(pwr: float, bat: float, budget: float = BUDGET) -> int:
    """Batteries whose ``bat N`` fits in ``budget`` after ``pwr`` (seconds each), at most
    16: the read plan reads the cells of that many every scrape."""
    if pwr > budget:
        return 0
    return min(16, math.floor((budget - pwr) / bat))


def run(options: Options) -> Result:
    batteries = QUICK_BATTERIES if options.quick else options.batteries
    reps = QUICK_REPS if options.quick else REPS
    runs = []
    for count in batteries:
        print(f"console: {count} batteries, {BAUD} Bd", file=sys.stderr, flush=True)
        try:
            runs.append(measure(count, reps, http=count == max(batteries)))
        except Exception as error:  # one stack must not cost the others
            runs.append(StackRun(count, error=repr(error)))
    counted = command_bytes()
    failures = [f"console: {r.batteries} batteries: {r.error}" for r in runs if r.error]
    for r in runs:
        for kind in ("pwr", "full", "http"):
            failures += [
                f"console: {r.batteries} batteries, {kind}: {m['seconds']:.3f} s is under "
                f"its floor {m['floor']:.3f} s (the bytes counted are not what was sent)"
                for m in getattr(r, kind)
                if m["seconds"] < m["floor"]
            ]
    budget = budget_table(runs)
    data = {
        "baud": BAUD,
        "budget": BUDGET,
        "runs": [r.__dict__ for r in runs],
        "bytes": counted,
        "fits": budget,
    }
    return Result(report(runs, counted, budget), data, failures)


def budget_table(runs: list[StackRun]) -> list[dict[str, Any]]:
    """What fits a 10 s scrape: measured per-command times of the largest stack at
    :data:`BAUD`, and its floor's bytes at the slower rates."""
    measured = [r for r in runs if not r.error]
    if not measured:
        return []
    r = max(measured, key=lambda r: r.batteries)
    pwr_bytes = r.median("pwr", "bytes")
    bat_bytes = (r.median("full", "bytes") - pwr_bytes) / r.batteries
    pwr_s = r.median("pwr", "seconds")
    bat_s = (r.median("full", "seconds") - pwr_s) / r.batteries
    rows = [
        {
            "baud": BAUD,
            "basis": "measured",
            "batteries": r.batteries,
            "pwr_s": pwr_s,
            "bat_s": bat_s,
            "fits": fits(pwr_s, bat_s),
        }
    ]
    for baud in SLOWER:
        pwr_floor, bat_floor = pwr_bytes * 10 / baud, bat_bytes * 10 / baud
        rows.append(
            {
                "baud": baud,
                "basis": "floor",
                "batteries": r.batteries,
                "pwr_s": pwr_floor,
                "bat_s": bat_floor,
                "fits": fits(pwr_floor, bat_floor),
            }
        )
    return rows


def report(
    runs: list[StackRun], counted: dict[str, dict[str, int]], budget: list[dict[str, Any]]
) -> str:
    rows = []
    for r in runs:
        if r.error:
            rows.append([str(r.batteries), f"failed: {r.error}"] + [""] * 8)
            continue
        rows.append(
            [
                str(r.batteries),
                f"{r.median('pwr', 'bytes'):.0f}",
                f"{r.median('pwr', 'floor'):.3f}",
                f"{r.median('pwr', 'seconds'):.3f}",
                f"{r.median('pwr', 'seconds') / r.median('pwr', 'floor'):.3f}",
                f"{len(r.full[0]['commands'])}",
                f"{r.median('full', 'bytes'):.0f}",
                f"{r.median('full', 'floor'):.3f}",
                f"{r.median('full', 'seconds'):.3f}",
                f"{r.median('full', 'seconds') / r.median('full', 'floor'):.3f}",
            ]
        )
    header = [
        "batteries",
        "pwr bytes",
        "pwr floor s",
        "pwr s",
        "ratio",
        "pwr + bat N commands",
        "bytes",
        "floor s",
        "scrape s",
        "ratio",
    ]
    reps = max((len(r.full) for r in runs), default=0)
    out = [
        f"Console at {BAUD} Bd on a pty, `US5000-16S` (16 cells, B69.26), time to the first "
        f"byte 0; median of {reps}. *pwr*: the exporter's client sends `pwr`; *pwr + bat N*: "
        "the exporter's read plan (`Poller.read`, 10 s deadline, batteries and static data "
        "known); floor: bytes both ways x 10 / baud.",
        "",
        table(header, rows),
    ]
    for r in runs:
        if not r.http:
            continue
        commands = r.http[0]["commands"]
        seconds, floor = r.median("http", "seconds"), r.median("http", "floor")
        out += [
            "",
            f"Over HTTP, {r.batteries} batteries: a `pylontech-exporter --serial.protocol "
            f"console` process scraped as Prometheus does (10 s timeout), median of "
            f"{len(r.http)}: {seconds:.3f} s for a floor of {floor:.3f} s (ratio "
            f"{seconds / floor:.3f}; {len(commands)} commands: {', '.join(commands[:3])}"
            f"{' ...' if len(commands) > 3 else ''}), {r.median('http', 'cpu') * 1000:.0f} ms "
            f"of the process's CPU per scrape, {r.median('http', 'body') / 1024:.0f} KiB.",
        ]
    if budget:
        out += [
            "",
            "What fits a 10 s scrape (`pwr`, then `bat N` of as many batteries as fit), "
            f"from the {budget[0]['batteries']}-battery stack: measured at {BAUD} Bd, the "
            "floor of its bytes at the slower rates:",
            "",
        ]
        fit_rows = [
            [
                str(b["baud"]),
                b["basis"],
                f"{b['pwr_s']:.3f}",
                f"{b['bat_s']:.3f}",
                f"{b['pwr_s'] + 16 * b['bat_s']:.2f}",
                "every battery"
                if b["fits"] >= 16
                else "not even `pwr`"
                if b["pwr_s"] > BUDGET
                else f"{b['fits']} batteries' cells",
            ]
            for b in budget
        ]
        out.append(
            table(
                [
                    "Bd",
                    "basis",
                    "pwr s",
                    "bat N s",
                    "pwr + 16 x bat N s",
                    "a 10 s scrape reads",
                ],
                fit_rows,
                "rlrrrl",
            )
        )
    labels = list(counted)
    commands = list(dict.fromkeys(c for sizes in counted.values() for c in sizes))
    byte_rows = [
        [f"`{c}`" if "," not in c else c]
        + [str(counted[label].get(c, "")) for label in labels]
        + [f"{counted[labels[-1]][c] * 10 / BAUD * 1000:.0f}"]
        for c in commands
    ]
    out += [
        "",
        "Bytes on the wire per command (typed line + answer with its echo), virtual console:",
        "",
        table(["command", *labels, f"ms at {BAUD} Bd (16 cells)"], byte_rows),
    ]
    return "\n".join(out)
