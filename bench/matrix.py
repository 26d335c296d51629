"""The scrape-timeout matrix: what a user's Prometheus gets, per scrape timeout and stack.

Per cell (a scrape timeout x a stack of modules, baud rate and groups) a fresh exporter
process (``--cache.ttl 0``: every scrape reads the bus; otherwise its defaults) reads the
virtual stack on a pty at wire speed (:mod:`bench.line`). It is scraped from the moment
it listens, as Prometheus scrapes it at a 1 s interval: the next scrape starts 1 s after
the previous one started, or when it ended if it took longer (Prometheus never overlaps
the scrapes of one target), for ``WINDOW`` seconds or until ``STEADY`` scrapes after the
first complete one. Each scrape is judged (:func:`bench.exporter.judge`): ``up`` when it
holds every module's analog values and alarms, ``partial``, or ``empty``.

A cell reads ``up`` when a complete scrape came within the first 3 scrapes and every
scrape after it was complete too. Anything else comes with the evidence: what was missing,
the exporter's hint and warnings, what was on the wire during the last incomplete scrape,
and what values and alarms need on the wire at least.
"""

from __future__ import annotations

import html
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .exporter import ExporterProcess, judge
from .line import simulated, values_and_alarms, wire_floor
from .section import Options, Result, table

#: Seconds a cell is scraped at most (the issue's "every dashboard query has data within
#: 30 s"); at least MIN_SCRAPES scrapes.
WINDOW = 30.0
QUICK_WINDOW = 12.0
MIN_SCRAPES = 3
#: Complete scrapes wanted after the first complete one before a cell ends early.
STEADY = 5
QUICK_STEADY = 3
#: Prometheus' scrape interval emulated.
INTERVAL = 1.0
#: The first complete scrape must be one of the first this many (the issue's acceptance).
FIRST_WITHIN = 3
#: The issue's target: 8 modules at 115200 Bd in one group, 1 s timeout.
TARGET = (8, 115200, 1, 1.0)


@dataclass
class Cell:
    modules: int
    baud: int
    groups: int
    timeout: float
    #: Seconds values and alarms of every bank need on the wire at least (bank-wide).
    needs: float
    listening: float = 0.0
    scrapes: list[dict[str, Any]] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)
    #: Why the cell could not be measured (the harness or the exporter failed).
    error: str | None = None

    @property
    def first_complete(self) -> int | None:
        """1-based number of the first complete scrape."""
        return next((i + 1 for i, s in enumerate(self.scrapes) if s["state"] == "up"), None)

    def verdict(self) -> str:
        """``up``, ``up from #k``, ``flaky n/m``, ``partial``, ``empty`` or ``failed``."""
        if self.error is not None or not self.scrapes:
            return "failed"
        first = self.first_complete
        if first is None:
            return "empty" if all(s["state"] == "empty" for s in self.scrapes) else "partial"
        after = self.scrapes[first:]
        good = sum(s["state"] == "up" for s in after)
        if good < len(after):
            return f"flaky {good}/{len(after)}"
        return "up" if first <= FIRST_WITHIN else f"up from #{first}"

    def why(self) -> str:
        """The evidence for a cell that is not ``up``."""
        if self.error is not None or not self.scrapes:
            return f"not measured: {self.error}"
        bad = [s for s in self.scrapes if s["state"] != "up"]
        last = bad[-1]
        parts = [f"scrape #{last['number']} ({last['seconds']:.2f} s): {last['missing']}"]
        wire = last["wire"]
        if wire:
            shown = " ".join(wire[:14]) + (f" ... ({len(wire)} requests)" if len(wire) > 14 else "")
            parts.append(f"on the wire: {shown}")
        else:
            parts.append("nothing on the wire")
        parts.append(f"values and alarms need {self.needs:.2f} s on the wire")
        parts.extend(f"hint: {hint}" for hint in self.hints)
        parts.extend(f"log: {message} (x{count})" for message, count in self.warnings.items())
        return "; ".join(parts)


def stacks(options: Options) -> list[tuple[int, int, int]]:
    if options.quick:
        return [TARGET[:3]]
    return [(m, b, g) for b in options.bauds for g in options.groups for m in options.modules]


def measure(modules: int, baud: int, groups: int, timeout: float, options: Options) -> Cell:
    window = QUICK_WINDOW if options.quick else WINDOW
    steady = QUICK_STEADY if options.quick else STEADY
    with simulated(modules, groups, baudrate=baud, latency=options.latency) as (line, link):
        needs = wire_floor(line.stack, baud, options.latency, values_and_alarms(line.stack))
        cell = Cell(modules, baud, groups, timeout, needs)
        expected = {str(g): modules for g in line.stack.groups}
        with ExporterProcess(link, baudrate=baud, groups=line.stack.groups) as exporter:
            cell.listening = exporter.wait_listening()
            due = time.monotonic()
            first: int | None = None
            while True:
                elapsed = time.monotonic() - exporter.started
                count = len(cell.scrapes)
                if first is not None and count - first >= steady:
                    break
                if elapsed >= window and count >= MIN_SCRAPES:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                scrape = exporter.scrape(timeout)
                due = scrape.start + INTERVAL
                verdict = judge(scrape, expected)
                cell.scrapes.append(
                    {
                        "number": count + 1,
                        "start": scrape.start - exporter.started,
                        "end": scrape.end - exporter.started,
                        "seconds": scrape.seconds,
                        "state": verdict.state,
                        "missing": verdict.missing,
                        "management": verdict.management,
                        "wire": [e.describe() for e in line.between(scrape.start, scrape.end)],
                    }
                )
                if first is None and verdict.state == "up":
                    first = count + 1
            if cell.verdict() != "up":
                landing = exporter.get("/").body.decode(errors="replace")
                cell.hints = [
                    html.unescape(h)
                    for h in re.findall(r"<p class=hint><b>Hint:</b> (.*?)</p>", landing)
                ]
            cell.warnings = exporter.warnings()
    return cell


def run(options: Options) -> Result:
    timeouts = (TARGET[3],) if options.quick else options.timeouts
    cells: list[Cell] = []
    for modules, baud, groups in stacks(options):
        for timeout in timeouts:
            print(
                f"matrix: {modules} modules x {groups} groups, {baud} Bd, timeout {timeout:g} s",
                file=sys.stderr,
                flush=True,
            )
            try:
                cells.append(measure(modules, baud, groups, timeout, options))
            except Exception as error:  # one cell must not cost the others
                cells.append(Cell(modules, baud, groups, timeout, 0.0, error=repr(error)))
    return Result(
        report(cells, timeouts),
        [c.__dict__ | {"verdict": c.verdict()} for c in cells],
        failures(cells),
    )


def failures(cells: list[Cell]) -> list[str]:
    """The issue's target, where it was measured: the 8-module bank at 115200 Bd and 1 s."""
    return [
        f"target cell (8 modules, 115200 Bd, 1 group, 1 s) is {c.verdict()}: {c.why()}"
        for c in cells
        if (c.modules, c.baud, c.groups, c.timeout) == TARGET and c.verdict() != "up"
    ]


def report(cells: list[Cell], timeouts: tuple[float, ...]) -> str:
    by_stack: dict[tuple[int, int, int], dict[float, Cell]] = {}
    for cell in cells:
        by_stack.setdefault((cell.modules, cell.baud, cell.groups), {})[cell.timeout] = cell
    header = ["modules", "Bd", "groups", "wire needs"] + [f"{t:g} s" for t in timeouts]
    verdicts, firsts = [], []
    for (modules, baud, groups), row in by_stack.items():
        head = [str(modules), str(baud), str(groups), f"{next(iter(row.values())).needs:.2f} s"]
        verdicts.append(head + [_verdict_text(row[t]) if t in row else "" for t in timeouts])
        firsts.append(head[:3] + [_first_text(row[t]) if t in row else "" for t in timeouts])
    out = [
        "Verdict per cell (`up`: every module's values and alarms in every scrape from one of",
        "the first 3 on; *wire needs*: the least time values and alarms of every bank take on",
        "the wire, bank-wide):",
        "",
        table(header, verdicts, "rrrr" + "l" * len(timeouts)),
        "",
        "First complete scrape: its number, and seconds from the exporter's start to its end:",
        "",
        table(header[:3] + header[4:], firsts, "rrr" + "r" * len(timeouts)),
    ]
    bad = [c for c in cells if c.verdict() != "up"]
    if bad:
        out += ["", "Cells not `up`, and why:", ""]
        for c in bad:
            out.append(
                f"- {c.modules} modules x {c.groups} group(s), {c.baud} Bd, {c.timeout:g} s: "
                f"**{c.verdict()}**. {c.why()}"
            )
    return "\n".join(out)


def _verdict_text(cell: Cell) -> str:
    verdict = cell.verdict()
    return f"**{verdict}**" if verdict == "up" else verdict


def _first_text(cell: Cell) -> str:
    first = cell.first_complete
    if first is None:
        return "never"
    return f"#{first}, {cell.scrapes[first - 1]['end']:.1f} s"
