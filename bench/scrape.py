"""The full scrape over HTTP, from the exporter's start: what a user's Prometheus waits for.

Per stack a fresh exporter process (``--cache.ttl 0``, otherwise its defaults) reads the
virtual stack on a pty at wire speed (:mod:`bench.line`) and is scraped as Prometheus
does with its default timeout (header 10 s), once a second from the moment it listens:

- *listening*: seconds from the process's start until its HTTP port accepts;
- *first scrape*: what the very first scrape held (:func:`bench.exporter.judge`) and how
  long it took;
- *first complete*: seconds from the start to the end of the first scrape that held every
  module's values and alarms, and its number;
- *steady*: once the exporter is ready (``/-/ready``: modules and static data known), the
  median of a few scrapes: wall time, the requests on the wire meanwhile and their
  floor (their frames' bytes at the baud rate plus the latency of each), the exporter
  process's CPU per scrape, the body's size.

On the largest stack at the highest baud rate, ``concurrent`` scrapes are then released
at once: the bus reads they caused, their latencies and the process's memory.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .exporter import Client, ExporterProcess, judge
from .line import simulated
from .section import Options, Result, quantile, table

#: Prometheus' default scrape timeout.
TIMEOUT = 10.0
INTERVAL = 1.0
STEADY = 3
QUICK_STACKS = [(1, 115200, 1)]
QUICK_CONCURRENT = 10


@dataclass
class StackRun:
    modules: int
    baud: int
    groups: int
    listening: float = 0.0
    first_state: str = ""
    first_seconds: float = 0.0
    first_complete: int | None = None
    first_complete_at: float | None = None
    ready_at: float | None = None
    steady: list[dict[str, float]] = field(default_factory=list)
    concurrent: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def median(self, key: str) -> float:
        return statistics.median(s[key] for s in self.steady)


def measure(modules: int, baud: int, groups: int, options: Options, concurrent: int) -> StackRun:
    run = StackRun(modules, baud, groups)
    with simulated(modules, groups, baudrate=baud, latency=options.latency) as (line, link):
        expected = {str(g): modules for g in line.stack.groups}
        with ExporterProcess(link, baudrate=baud, groups=line.stack.groups) as exporter:
            run.listening = exporter.wait_listening()
            number, due = 0, time.monotonic()
            while run.first_complete is None:
                time.sleep(max(0.0, due - time.monotonic()))
                scrape = exporter.scrape(TIMEOUT)
                due = scrape.start + INTERVAL
                number += 1
                verdict = judge(scrape, expected)
                if number == 1:
                    run.first_state, run.first_seconds = str(verdict), scrape.seconds
                if verdict.state == "up":
                    run.first_complete = number
                    run.first_complete_at = scrape.end - exporter.started
                elif scrape.start - exporter.started > 120:
                    raise RuntimeError(f"no complete scrape in 120 s: {verdict}")
            while exporter.get("/-/ready").status != 200:
                if time.monotonic() - exporter.started > 300:
                    raise RuntimeError("the exporter was not ready in 300 s")
                time.sleep(0.1)
            run.ready_at = time.monotonic() - exporter.started
            for _ in range(STEADY):
                cpu = exporter.resources()["cpu_s"]
                scrape = exporter.scrape(TIMEOUT)
                verdict = judge(scrape, expected)
                if verdict.state != "up":
                    raise RuntimeError(f"a steady scrape was not complete: {verdict}")
                exchanges = line.between(scrape.start, scrape.end)
                run.steady.append(
                    {
                        "seconds": scrape.seconds,
                        "requests": len(exchanges),
                        "floor": line.floor(exchanges),
                        "cpu": exporter.resources()["cpu_s"] - cpu,
                        "bytes": len(scrape.body),
                        "rss_kb": exporter.resources()["vmrss_kb"],
                    }
                )
            if concurrent:
                run.concurrent = measure_concurrent(exporter, line, concurrent)
    return run


def measure_concurrent(exporter: ExporterProcess, line: Any, scrapes: int) -> dict[str, Any]:
    """``scrapes`` scrapes released at once (a barrier), each on its own connection."""
    before = exporter.resources()
    barrier = threading.Barrier(scrapes)
    line.reset()

    def one(_: int) -> tuple[float, int]:
        client = Client(exporter.http_port)
        barrier.wait()
        scrape = client.scrape(60.0)
        client.close()
        return scrape.seconds, scrape.status

    with ThreadPoolExecutor(max_workers=scrapes) as pool:
        outcomes = list(pool.map(one, range(scrapes)))
    after = exporter.resources()
    exchanges = line.reset()
    master = min(e.address for e in exchanges) if exchanges else 0
    latencies = sorted(seconds for seconds, _ in outcomes)
    return {
        "scrapes": scrapes,
        "ok": sum(status == 200 for _, status in outcomes),
        "bus_reads": sum(1 for e in exchanges if e.address == master and e.command == 0x42),
        "requests": len(exchanges),
        "rss_before_kb": before["vmrss_kb"],
        "rss_after_kb": after["vmrss_kb"],
        "hwm_kb": after["vmhwm_kb"],
        "min": latencies[0],
        "p50": quantile(latencies, 0.5),
        "p90": quantile(latencies, 0.9),
        "max": latencies[-1],
    }


def run(options: Options) -> Result:
    stacks = (
        QUICK_STACKS
        if options.quick
        else [(m, b, g) for b in options.bauds for g in options.groups for m in options.modules]
    )
    largest = max(stacks, key=lambda s: (s[0] * s[2], s[1]))
    concurrent = QUICK_CONCURRENT if options.quick else options.concurrent
    runs = []
    for modules, baud, groups in stacks:
        print(
            f"scrape: {modules} modules x {groups} groups, {baud} Bd", file=sys.stderr, flush=True
        )
        extra = concurrent if (modules, baud, groups) == largest else 0
        try:
            runs.append(measure(modules, baud, groups, options, extra))
        except Exception as error:  # one stack must not cost the others
            runs.append(StackRun(modules, baud, groups, error=repr(error)))
    failures = [f"scrape: {r.modules} x {r.groups} at {r.baud}: {r.error}" for r in runs if r.error]
    return Result(report(runs), [r.__dict__ for r in runs], failures)


def report(runs: list[StackRun]) -> str:
    rows = []
    for r in runs:
        if r.error:
            rows.append([str(r.modules), str(r.groups), str(r.baud), f"failed: {r.error}"])
            continue
        rows.append(
            [
                str(r.modules),
                str(r.groups),
                str(r.baud),
                f"{r.listening:.2f}",
                f"{r.first_state} ({r.first_seconds:.2f} s)",
                f"#{r.first_complete}, {r.first_complete_at:.1f} s",
                f"{r.ready_at:.1f}",
                f"{r.median('seconds'):.3f}",
                f"{r.median('requests'):.0f}",
                f"{r.median('floor'):.3f}",
                f"{r.median('seconds') / r.median('floor'):.2f}",
                f"{r.median('cpu') * 1000:.0f}",
                f"{r.median('bytes') / 1024:.0f}",
            ]
        )
    header = [
        "modules",
        "groups",
        "Bd",
        "listening s",
        "first scrape",
        "first complete",
        "ready s",
        "steady scrape s",
        "requests",
        "floor s",
        "ratio",
        "CPU ms",
        "KiB",
    ]
    out = [table(header, rows, "rrrrlrrrrrrrr")]
    for r in runs:
        c = r.concurrent
        if not c:
            continue
        out += [
            "",
            f"{c['scrapes']} concurrent scrapes of {r.groups} x {r.modules} modules at {r.baud} Bd "
            f"(released at once, each on its own connection): {c['ok']} answered 200, "
            f"{c['bus_reads']} bus read(s) ({c['requests']} requests); latency "
            f"min {c['min']:.3f} / p50 {c['p50']:.3f} / p90 {c['p90']:.3f} / max {c['max']:.3f} s; "
            f"RSS {c['rss_before_kb'] / 1024:.1f} MiB before, {c['rss_after_kb'] / 1024:.1f} MiB "
            f"after (high-water mark {c['hwm_kb'] / 1024:.1f} MiB).",
        ]
    return "\n".join(out)
