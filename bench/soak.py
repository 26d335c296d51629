"""Soak: 10,000 real scrapes of an exporter process under a faulty bus and hostile clients.

    python -m bench --only soak             # 10,000 real scrapes (about 10 minutes)
    python -m bench.soak --scrapes 500      # the same alone; --json for the figures

The virtual stack (3 US3000C modules, values moving with the clock) is served on TCP
in this process with a fault plan that makes each request misbehave with probability
``fault_rate`` (spread over every fault kind of the simulator: wire faults, vanishing
modules, ignored bank-wide queries, inflated bank-wide answers, implausible readings).
The exporter runs as a separate process with ``--cache.ttl 0`` (every scrape reads the
bus) and ``--serial.timeout 0.2``. Meanwhile, on the same exporter:

- ``scrapers`` real scrapers (Prometheus: header 10 s, keep-alive), one after the other
  each, concurrently with each other, until they made ``scrapes`` scrapes together;
- an attacker scraping with a tiny ``X-Prometheus-Scrape-Timeout-Seconds`` (0.000001 and
  0.8 in turn, five a second);
- idle connections (connected, sending nothing) and slow ones (a header byte every 2 s),
  reopened whenever the exporter cuts them off.

Reported: the exporter alive at the end, HTTP errors of real scrapes, how many real
scrapes were complete (every module's values and alarms) and what the others missed, what
the attacker got, resident memory, threads and file descriptors after the warm-up and
after the hostile clients left, and the faults fired.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/soak.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.exporter import Client, ExporterProcess, coverage, judge
from bench.section import Options, Result, load, machine, quantile, table
from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.serve import TcpSimulator

#: Fault kinds mixed into the plan (options for each); the rate is split evenly.
MIX: list[tuple[str, dict[str, Any]]] = [
    ("junk", {}),
    ("nul", {}),
    ("stale", {}),
    ("truncate", {}),
    ("chksum", {}),
    ("lchksum", {}),
    ("lenid", {}),
    ("wrong_address", {}),
    ("drop", {}),
    ("delay", {"seconds": 0.3}),
    ("rtn", {"code": 0x91}),
    ("rtn", {"code": 0x90}),
    ("vanish", {"module": 0x03}),
    ("nobank", {}),
    ("inflate", {}),
    ("implausible", {}),
]
MODULES = 3
WARM_UP = 50
QUICK_SCRAPES = 200
QUICK_WARM_UP = 20
#: Headers the attacker sends, in turn.
ATTACK_HEADERS = ("0.000001", "0.8")
ATTACK_PAUSE = 0.2
IDLE_CONNECTIONS = 10
SLOW_CONNECTIONS = 5
SLOW_BYTE_EVERY = 2.0


@dataclass
class Settings:
    scrapes: int = 10_000
    warm_up: int = WARM_UP
    scrapers: int = 3
    fault_rate: float = 0.02
    serial_timeout: float = 0.2
    seed: int = 1


class Tally:
    """Outcomes of the real scrapes, shared by the scraper threads."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.lock = threading.Lock()
        self.started = 0
        self.complete = 0
        self.values_complete = 0
        self.errors = 0
        self.missing: Counter[str] = Counter()
        self.seconds: list[float] = []

    def take(self) -> bool:
        """Whether one more scrape is wanted (and counts it as started)."""
        with self.lock:
            if self.started >= self.wanted:
                return False
            self.started += 1
            return True


def _real_scraper(exporter_port: int, tally: Tally, progress: Any) -> None:
    client = Client(exporter_port)
    expected = {"0": MODULES}
    while tally.take():
        scrape = client.scrape(10.0)
        verdict = judge(scrape, expected)
        bank = coverage(scrape.body).get("0")
        with tally.lock:
            tally.seconds.append(scrape.seconds)
            if scrape.status != 200:
                tally.errors += 1
                tally.missing[f"HTTP {scrape.status} {scrape.error or ''}".strip()] += 1
            elif verdict.state == "up":
                tally.complete += 1
            else:
                tally.missing[verdict.missing] += 1
            if bank is not None and bank.up and len(bank.values) == MODULES:
                tally.values_complete += 1
            done = len(tally.seconds)
        progress(done)
    client.close()


def _attacker(exporter_port: int, stop: threading.Event, seen: Counter[str]) -> None:
    client = Client(exporter_port)
    turn = 0
    while not stop.wait(ATTACK_PAUSE):
        header = ATTACK_HEADERS[turn % len(ATTACK_HEADERS)]
        turn += 1
        scrape = client.get("/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": header}, 30.0)
        bank = coverage(scrape.body).get("0") if scrape.status == 200 else None
        outcome = "HTTP error" if bank is None else "up 1" if bank.up else "up 0"
        seen[f"{header}: {outcome}"] += 1
    client.close()


def _holder(exporter_port: int, stop: threading.Event, cut: Counter[str]) -> None:
    """Keeps IDLE_CONNECTIONS idle and SLOW_CONNECTIONS slow sockets open: a slow one
    sends a byte of its headers every SLOW_BYTE_EVERY seconds, an idle one nothing."""
    sockets: dict[socket.socket, str] = {}

    def connect(kind: str) -> None:
        try:
            conn = socket.create_connection(("127.0.0.1", exporter_port), 5)
        except OSError:
            cut[f"{kind}: connect failed"] += 1
            return
        conn.setblocking(False)
        cut[f"{kind}: opened"] += 1
        if kind == "slow":
            conn.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        sockets[conn] = kind

    for kind, count in (("idle", IDLE_CONNECTIONS), ("slow", SLOW_CONNECTIONS)):
        for _ in range(count):
            connect(kind)
    next_byte = time.monotonic() + SLOW_BYTE_EVERY
    while not stop.wait(0.1):
        send = time.monotonic() >= next_byte
        if send:
            next_byte += SLOW_BYTE_EVERY
        for conn, kind in list(sockets.items()):
            try:
                closed = conn.recv(4096) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if not closed and kind == "slow" and send:
                try:
                    conn.send(b"X")
                except OSError:
                    closed = True
            if closed:
                cut[f"{kind}: cut off by the exporter"] += 1
                del sockets[conn]
                conn.close()
                connect(kind)
    for conn in sockets:
        conn.close()


def _settle(exporter: ExporterProcess, threads: float, seconds: float = 5.0) -> dict[str, float]:
    """The exporter's resources once its connection threads are back to ``threads`` (they
    notice the closed sockets), or after ``seconds``."""
    until = time.monotonic() + seconds
    while (now := exporter.resources())["threads"] > threads and time.monotonic() < until:
        time.sleep(0.05)
    return now


def soak(settings: Settings, *, verbose: bool = True) -> dict[str, Any]:
    stack = BatteryStack(modules=MODULES, model="US3000C", seed=settings.seed)
    stack.follow_clock()
    each = settings.fault_rate / len(MIX)
    for kind, options in MIX:
        stack.faults.add(kind, probability=each, **options)
    results: dict[str, Any] = {
        "scrapes": settings.scrapes,
        "scrapers": settings.scrapers,
        "fault_rate": settings.fault_rate,
        "machine": machine(),
        "load_before": load(),
    }
    simulator = TcpSimulator(Rs485Responder(stack), latency=0)
    with (
        simulator,
        ExporterProcess(
            simulator.url,
            baudrate=115200,
            groups=[0],
            extra=[
                "--serial.timeout",
                f"{settings.serial_timeout:g}",
                "--web.disable-exporter-metrics",
            ],
            log_level="error",
        ) as exporter,
    ):
        exporter.wait_listening()
        for _ in range(settings.warm_up):  # discovery, static data, imports, caches
            exporter.scrape(10.0)
        start = exporter.resources()
        requests_before = simulator.requests
        tally = Tally(settings.scrapes)
        samples: list[dict[str, float]] = []
        stop = threading.Event()
        attacks: Counter[str] = Counter()
        cut: Counter[str] = Counter()

        def progress(done: int) -> None:
            if done % 1000 == 0:
                samples.append(exporter.resources())
                if verbose:
                    print(
                        f"soak: {done} scrapes, {tally.complete} complete, "
                        f"{tally.errors} HTTP errors, {samples[-1]}",
                        file=sys.stderr,
                        flush=True,
                    )

        port = exporter.http_port
        hostile = [
            threading.Thread(target=_attacker, args=(port, stop, attacks), daemon=True),
            threading.Thread(target=_holder, args=(port, stop, cut), daemon=True),
        ]
        for thread in hostile:
            thread.start()
        began = time.monotonic()
        scrapers = [
            threading.Thread(target=_real_scraper, args=(port, tally, progress), daemon=True)
            for _ in range(settings.scrapers)
        ]
        for thread in scrapers:
            thread.start()
        for thread in scrapers:
            thread.join()
        elapsed = time.monotonic() - began
        during = exporter.resources()
        stop.set()
        for thread in hostile:
            thread.join(10)
        end = _settle(exporter, start["threads"])
        alive = exporter.process.poll() is None
        fired: Counter[str] = Counter()
        for fault in stack.faults:
            name = fault.kind.value + (f"_{fault.code:02X}" if fault.kind.value == "rtn" else "")
            fired[name] += fault.fired
        seconds = sorted(tally.seconds)
        results.update(
            alive=alive,
            seconds=round(elapsed, 1),
            http_errors=tally.errors,
            complete=tally.complete,
            values_complete=tally.values_complete,
            incomplete=dict(tally.missing.most_common()),
            latency={
                "p50": quantile(seconds, 0.5),
                "p99": quantile(seconds, 0.99),
                "max": seconds[-1],
            },
            attacker=dict(attacks),
            connections=dict(cut),
            bus_requests=simulator.requests - requests_before,
            faults_fired=dict(fired),
            rss_kb={
                "start": start["vmrss_kb"],
                "during": during["vmrss_kb"],
                "end": end["vmrss_kb"],
                "peak_sampled": max(s["vmrss_kb"] for s in [start, *samples, during, end]),
                "high_water_mark": end["vmhwm_kb"],
            },
            threads={"start": start["threads"], "during": during["threads"], "end": end["threads"]},
            fds={"start": start["fds"], "during": during["fds"], "end": end["fds"]},
            load_after=load(),
        )
    return results


def report(r: dict[str, Any]) -> str:
    fired = r["faults_fired"]
    share = r["complete"] / r["scrapes"]
    rows = [
        [
            "real scrapes",
            f"{r['scrapes']:,} by {r['scrapers']} concurrent scrapers (header 10 s) in "
            f"{r['seconds']} s, {r['bus_requests']:,} bus requests",
        ],
        [
            "faults injected",
            f"{sum(fired.values()):,} ({sum(fired.values()) / max(1, r['bus_requests']):.1%} of "
            "requests): " + ", ".join(f"{k} {v}" for k, v in fired.items()),
        ],
        ["attacker", ", ".join(f"{k} x{v}" for k, v in sorted(r["attacker"].items())) or "none"],
        [
            "idle and slow connections",
            f"{IDLE_CONNECTIONS} idle + {SLOW_CONNECTIONS} slow held open; "
            + ", ".join(f"{k} x{v}" for k, v in sorted(r["connections"].items())),
        ],
        ["crashes", f"exporter alive at the end: {r['alive']}; HTTP errors: {r['http_errors']}"],
        [
            "complete real scrapes",
            f"{r['complete']:,} of {r['scrapes']:,} ({share:.2%}): every module's values and "
            f"alarms; {r['values_complete']:,} with every module's values",
        ],
        [
            "real scrape latency",
            f"p50 {r['latency']['p50'] * 1000:.0f} ms, p99 {r['latency']['p99'] * 1000:.0f} ms, "
            f"max {r['latency']['max']:.2f} s",
        ],
        [
            "resident memory (kB)",
            f"{r['rss_kb']['start']:,} after warm-up, "
            f"{r['rss_kb']['during']:,} at the last scrape, "
            f"{r['rss_kb']['end']:,} after the hostile clients left; peak sampled "
            f"{r['rss_kb']['peak_sampled']:,}, VmHWM {r['rss_kb']['high_water_mark']:,}",
        ],
        [
            "threads",
            f"{r['threads']['start']} after warm-up, {r['threads']['during']} at the last scrape, "
            f"{r['threads']['end']} after",
        ],
        [
            "file descriptors",
            f"{r['fds']['start']} after warm-up, {r['fds']['during']} at the last scrape, "
            f"{r['fds']['end']} after",
        ],
    ]
    out = [table(["", ""], rows, "ll")]
    if r["incomplete"]:
        out += ["", "What the incomplete real scrapes missed:", ""]
        out += [f"- {count} x {what}" for what, count in r["incomplete"].items()]
    return "\n".join(out)


def problems(r: dict[str, Any]) -> list[str]:
    """Wrong outcomes: a crash, an HTTP error, or fds/threads not back after the run."""
    found = []
    if not r["alive"]:
        found.append("soak: the exporter died")
    if r["http_errors"]:
        found.append(f"soak: {r['http_errors']} real scrapes got an HTTP error")
    if r["threads"]["end"] > r["threads"]["start"] or r["fds"]["end"] > r["fds"]["start"]:
        found.append(f"soak: threads {r['threads']} or fds {r['fds']} did not come back")
    return found


def run(options: Options) -> Result:
    if options.quick:
        settings = Settings(scrapes=QUICK_SCRAPES, warm_up=QUICK_WARM_UP)
    else:
        settings = Settings(scrapes=options.soak_scrapes)
    results = soak(settings)
    return Result(report(results), results, problems(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").split("\n\n")[0]
    )
    defaults = Settings()
    parser.add_argument("--scrapes", type=int, default=defaults.scrapes)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SCRAPES} scrapes")
    parser.add_argument("--scrapers", type=int, default=defaults.scrapers)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--timeout", type=float, default=defaults.serial_timeout)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    settings = Settings(
        scrapes=QUICK_SCRAPES if args.quick else args.scrapes,
        warm_up=QUICK_WARM_UP if args.quick else WARM_UP,
        scrapers=args.scrapers,
        fault_rate=args.fault_rate,
        serial_timeout=args.timeout,
        seed=args.seed,
    )
    results = soak(settings, verbose=not args.json)
    print(json.dumps(results, indent=2) if args.json else report(results))
    found = problems(results)
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
