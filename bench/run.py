"""``python -m bench``: the benchmark harness. Prints markdown tables; see docs/benchmarks.md.

Everything runs against the simulator on a pty with wire-speed emulation (:mod:`bench.line`):
the exporter's snapshot of every bank (the bus read behind a scrape) for stacks of 1, 3, 8
and 16 modules per group in 1 to 4 groups at 115200 and 9600 baud, its ratio to the floor,
the peer libraries on the same line, decoding speed, ``/metrics`` rendering, and a real
exporter process: its resident memory and 100 concurrent scrapes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.poller import Poller, Snapshot
from pylontech_exporter.rs485 import payloads
from pylontech_exporter.rs485.client import Pylontech
from pylontech_exporter.rs485.frame import decode_frame, encode_request
from pylontech_exporter.simulator import BatteryStack, Rs485Responder

from . import peers
from .line import Line

MODEL = "US5000-16S"
LATENCY = 0.07
BAUDS = (115200, 9600)
MODULES = (1, 3, 8, 16)
GROUPS = (1, 2, 3, 4)


@dataclass
class SnapshotResult:
    modules: int
    groups: int
    baud: int
    requests: int
    wall: float
    floor: float
    cpu: float
    walls: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.wall / self.floor


@dataclass
class PeerResult:
    peer: str
    modules: int
    baud: int
    wall: float
    cpu: float
    requests: int
    floor: float
    ours_wall: float = 0.0
    ours_requests: int = 0
    ours_floor: float = 0.0
    error: str | None = None


@dataclass
class Results:
    machine: dict[str, Any]
    options: dict[str, Any]
    snapshots: list[SnapshotResult] = field(default_factory=list)
    peers: list[PeerResult] = field(default_factory=list)
    peer_status: dict[str, str | None] = field(default_factory=dict)
    decode: dict[str, float] = field(default_factory=dict)
    render: dict[str, float] = field(default_factory=dict)
    exporter: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# --- the line ------------------------------------------------------------------------------


@contextlib.contextmanager
def simulated(modules: int, groups: int, *, tcp: bool = False) -> Iterator[tuple[Line, str]]:
    """A stack of ``modules`` x ``groups`` on a fresh pty (or TCP gateway): (line, port).
    At 115200 baud without latency until ``line.set_speed`` (unpaced, a 2 KB answer can
    overflow the pty buffer before the client reads it, and the simulator drops what does
    not fit)."""
    stack = BatteryStack(modules=modules, groups=groups, model=MODEL, seed=modules * 10 + groups)
    stack.freeze()
    line = Line(stack, baudrate=115200)
    if tcp:
        with line.serve_tcp() as server:
            yield line, server.url
        return
    with tempfile.TemporaryDirectory(prefix="pylontech-bench-") as folder:
        link = os.path.join(folder, "battery")
        with line.serve_pty(link):
            yield line, link


def banks_of(line: Line, link: str, baud: int) -> list[BankConfig]:
    serial = SerialSettings(port=link, baudrate=baud)
    return [BankConfig(name=str(g), serial=serial, group=g) for g in line.stack.groups]


def settle(poller: Poller, timeout: float = 60.0) -> None:
    """Start ``poller`` and wait until it knows every bank (as an exporter at start)."""
    poller.start()
    deadline = time.monotonic() + timeout
    while not all(b.settled for b in poller.banks):
        if time.monotonic() > deadline:
            raise RuntimeError("the banks were not discovered in time")
        time.sleep(0.01)


def read(poller: Poller) -> Snapshot:
    snapshot = poller.read(time.monotonic() + 120)
    if not all(b.up and b.complete and b.bank_query for b in snapshot.banks):
        raise RuntimeError(f"incomplete snapshot: {[b.error for b in snapshot.banks]}")
    return snapshot


# --- our snapshot --------------------------------------------------------------------------


def measure_snapshots(
    modules: int, groups: int, bauds: tuple[int, ...], reps: dict[int, int], latency: float
) -> tuple[list[SnapshotResult], Snapshot, dict[int, dict[str, tuple[float, int, float]]]]:
    """Our snapshots of one stack at each baud rate, plus (for one group) our reads of the
    same information each peer reads: {baud: {peer: (wall, requests, floor)}}."""
    results = []
    like: dict[int, dict[str, tuple[float, int, float]]] = {}
    with simulated(modules, groups) as (line, link):
        poller = Poller(banks_of(line, link, bauds[0]))
        try:
            settle(poller)  # discovery and static data, no latency
            snapshot = read(poller)
            for baud in bauds:
                line.set_speed(baud, latency)
                walls, cpus, floor, requests = [], [], 0.0, 0
                for _ in range(reps[baud]):
                    line.reset()
                    start, cpu = time.monotonic(), time.thread_time()
                    snapshot = read(poller)
                    walls.append(time.monotonic() - start)
                    cpus.append(time.thread_time() - cpu)
                    exchanges = line.reset()
                    floor, requests = line.floor(exchanges), len(exchanges)
                results.append(
                    SnapshotResult(
                        modules,
                        groups,
                        baud,
                        requests,
                        statistics.median(walls),
                        floor,
                        statistics.median(cpus),
                        walls,
                    )
                )
                if groups == 1:
                    poller.close()  # the port is opened exclusively
                    like[baud] = {
                        name: ours_like(line, link, baud, modules, name) for name in peers.PEERS
                    }
        finally:
            poller.close()
    return results, snapshot, like


def ours_like(
    line: Line, link: str, baud: int, modules: int, peer: str
) -> tuple[float, int, float]:
    """Our client reading what ``peer`` reads: (wall, requests, floor)."""
    addresses = range(2, 2 + modules)
    with Pylontech(link, baud, timeout=5.0) as client:
        client.get_manufacturer_info(2)  # open the port outside the measurement
        line.reset()
        start = time.monotonic()
        client.get_values_bank(0)
        if peer == "pylontech":
            client.get_alarm_info_bank(0)
        for address in addresses:
            client.get_management_info(address)
        if peer == "pylontech":
            client.get_system_parameters(2)
        wall = time.monotonic() - start
    exchanges = line.reset()
    return wall, len(exchanges), line.floor(exchanges)


# --- the peers -----------------------------------------------------------------------------


def measure_peer(peer: str, modules: int, baud: int, latency: float) -> PeerResult:
    # pylontech 0.1.3 drives RTS around each write, which a pty refuses: a TCP gateway, as
    # its users with an Ethernet converter have it.
    with simulated(modules, 1, tcp=peer == "pylontech") as (line, link):
        line.set_speed(baud, latency)
        try:
            wall, cpu = peers.PEERS[peer](link, baud, modules, line.reset)
        except Exception as error:  # reported in the table
            return PeerResult(peer, modules, baud, 0, 0, 0, 0, error=f"{error!r}")
        exchanges = line.reset()
        return PeerResult(peer, modules, baud, wall, cpu, len(exchanges), line.floor(exchanges))


def measure_peers(
    configs: list[tuple[str, int, int]], latency: float, parallel: bool
) -> list[PeerResult]:
    with peers.quiet():
        if not parallel:
            return [measure_peer(p, m, b, latency) for p, m, b in configs]
        with ThreadPoolExecutor(max_workers=len(configs) or 1) as pool:
            return list(pool.map(lambda c: measure_peer(*c, latency), configs))


# --- decoding, rendering -------------------------------------------------------------------


def measure_decode() -> dict[str, float]:
    """Frames per second for a bank-wide 0x42 answer of 16 modules x 16 cells."""
    stack = BatteryStack(modules=16, model=MODEL, seed=1)
    raw = Rs485Responder(stack).respond(encode_request(2, 0x42, bytes([payloads.ALL_MODULES])))
    assert raw is not None

    def ours() -> object:
        return payloads.ANALOG_VALUES_BANK.parse(decode_frame(raw).info, 0)

    result = {"frame_bytes": float(len(raw)), "ours_fps": _rate(ours)}
    with contextlib.suppress(ImportError):
        from pylontech.pylontech import Pylontech as Theirs

        theirs_client = Theirs.__new__(Theirs)  # no port: only the decoder

        def theirs() -> object:
            frame = theirs_client._decode_frame(theirs_client._decode_hw_frame(raw))
            return Theirs.get_values_fmt.parse(frame.info[1:])

        assert len(theirs().Module) == len(ours())
        result["python_pylontech_fps"] = _rate(theirs)
    return result


def _rate(function: Callable[[], object]) -> float:
    number = 1
    while timeit.timeit(function, number=number) < 0.05:
        number *= 2
    return number / min(timeit.repeat(function, number=number, repeat=7))


def measure_render(snapshot: Snapshot, reps: int = 15) -> dict[str, float]:
    """``/metrics`` text rendering of ``snapshot`` (the exporter's collectors and encoder)."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from pylontech_exporter.collector import PylontechCollector

    registry = CollectorRegistry()
    registry.register(PylontechCollector(lambda deadline: snapshot, 5.0))
    walls, cpus = [], []
    for _ in range(reps):
        start, cpu = time.perf_counter(), time.thread_time()
        output = generate_latest(registry)
        walls.append(time.perf_counter() - start)
        cpus.append(time.thread_time() - cpu)
    samples = sum(1 for line in output.splitlines() if line and not line.startswith(b"#"))
    return {
        "wall_ms": statistics.median(walls) * 1000,
        "cpu_ms": statistics.median(cpus) * 1000,
        "samples": samples,
        "bytes": len(output),
    }


# --- a real exporter process ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> float:
    request = urllib.request.Request(url, headers={"X-Prometheus-Scrape-Timeout-Seconds": "60"})
    start = time.monotonic()
    with urllib.request.urlopen(request, timeout=90) as response:
        body = response.read()
    if b"pylontech_up" not in body:
        raise RuntimeError("scrape without pylontech_up")
    return time.monotonic() - start


def _proc_status(pid: int) -> dict[str, float]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            key, _, value = row.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024  # MiB
    return values


def measure_exporter(
    modules: int, groups: int, baud: int, latency: float, scrapes: int
) -> dict[str, Any]:
    """A real exporter process (``--cache.ttl 0``) reading the stack: RSS, one scrape, and
    ``scrapes`` concurrent scrapes (bus reads they caused, their latencies)."""
    with simulated(modules, groups) as (line, link):
        port = _free_port()
        command = [
            sys.executable,
            "-m",
            "pylontech_exporter.cli",
            "--serial.port",
            link,
            "--serial.baudrate",
            str(baud),
            "--serial.timeout",
            "5",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--cache.ttl",
            "0",
            "--log.level",
            "warn",
        ]
        for group in line.stack.groups:
            command += ["--group", str(group)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    _scrape(url)  # discovery and static data, no latency
                    break
                except OSError:
                    if process.poll() is not None:
                        stderr = process.stderr.read() if process.stderr else b""
                        raise RuntimeError(f"the exporter exited: {stderr!r}") from None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            line.set_speed(baud, latency)
            line.reset()
            single = _scrape(url)
            per_read = len(line.reset())
            for _ in range(2):
                _scrape(url)
            steady = _proc_status(process.pid)  # serving one scrape at a time
            line.reset()
            barrier = threading.Barrier(scrapes)

            def one(_: int) -> float:
                barrier.wait()
                return _scrape(url)

            with ThreadPoolExecutor(max_workers=scrapes) as pool:
                latencies = sorted(pool.map(one, range(scrapes)))
            exchanges = line.reset()
            master = 0x02 + 0x10 * line.stack.groups[0]
            reads = sum(1 for e in exchanges if e.address == master and e.command == 0x42)
            memory = _proc_status(process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return {
        "modules": modules,
        "groups": groups,
        "baud": baud,
        "rss_mib": steady["VmRSS"],
        "rss_after_concurrent_mib": memory["VmRSS"],
        "peak_rss_mib": memory["VmHWM"],
        "single_scrape_s": single,
        "requests_per_read": per_read,
        "concurrent_scrapes": scrapes,
        "concurrent_bus_reads": reads,
        "concurrent_requests": len(exchanges),
        "latency_min_s": latencies[0],
        "latency_p50_s": _quantile(latencies, 0.5),
        "latency_p90_s": _quantile(latencies, 0.9),
        "latency_p99_s": _quantile(latencies, 0.99),
        "latency_max_s": latencies[-1],
    }


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- output --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for row in cpuinfo:
            if row.startswith("model name"):
                model = row.partition(":")[2].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def report(results: Results) -> str:
    out = []
    m = results.machine
    out.append(f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, {m['platform']}")
    out.append(
        f"Model {MODEL}, response latency {results.options['latency']} s, "
        f"run took {results.seconds:.0f} s\n"
    )
    out.append("### Snapshot (all banks, bank-wide 0x42 + 0x44, 0x92 per module)\n")
    out.append(
        "| modules/group | groups | baud | requests | snapshot s | floor s | ratio | CPU ms |"
    )
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(results.snapshots, key=lambda r: (-r.baud, r.groups, r.modules)):
        out.append(
            f"| {r.modules} | {r.groups} | {r.baud} | {r.requests} | {r.wall:.3f} | "
            f"{r.floor:.3f} | {r.ratio:.3f} | {r.cpu * 1000:.1f} |"
        )
    if results.peers or results.peer_status:
        out.append("\n### Peers (group 0; ours = our client reading the same information)\n")
        for name, status in results.peer_status.items():
            if status:
                out.append(f"- {name}: not available ({status})")
        out.append(
            "| peer | modules | baud | peer requests | peer s | peer floor s | "
            "ours requests | ours s | peer / ours |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in sorted(results.peers, key=lambda p: (p.peer, -p.baud, p.modules)):
            if p.error:
                out.append(f"| {p.peer} | {p.modules} | {p.baud} | failed: {p.error} ||||||")
                continue
            out.append(
                f"| {p.peer} | {p.modules} | {p.baud} | {p.requests} | {p.wall:.3f} | "
                f"{p.floor:.3f} | {p.ours_requests} | {p.ours_wall:.3f} | "
                f"{p.wall / p.ours_wall:.1f}x |"
            )
    out.append("\n### Single figures\n")
    d = results.decode
    if d:
        line = f"- decode, bank-wide 0x42 of 16 modules ({d['frame_bytes']:.0f} bytes): "
        line += f"ours {d['ours_fps']:.0f} frames/s"
        if "python_pylontech_fps" in d:
            line += (
                f", python-pylontech {d['python_pylontech_fps']:.0f} frames/s, "
                f"{d['ours_fps'] / d['python_pylontech_fps']:.1f}x"
            )
        out.append(line)
    largest = max(results.snapshots, key=lambda r: (r.modules * r.groups, r.baud), default=None)
    if largest:
        for r in results.snapshots:
            if (r.modules, r.groups) == (largest.modules, largest.groups):
                out.append(
                    f"- CPU per snapshot, {r.groups} x {r.modules} modules at {r.baud} baud: "
                    f"{r.cpu * 1000:.1f} ms"
                )
    if results.render:
        r = results.render
        out.append(
            f"- /metrics render of the largest stack ({r['samples']:.0f} samples, "
            f"{r['bytes'] / 1024:.0f} KiB): {r['wall_ms']:.1f} ms wall, {r['cpu_ms']:.1f} ms CPU"
        )
    if results.exporter:
        e = results.exporter
        out.append(
            f"- exporter process serving {e['groups']} x {e['modules']} modules: "
            f"RSS {e['rss_mib']:.1f} MiB; after the concurrent scrapes "
            f"{e['rss_after_concurrent_mib']:.1f} MiB (peak {e['peak_rss_mib']:.1f}); one scrape "
            f"{e['single_scrape_s']:.3f} s at {e['baud']} baud"
        )
        out.append(
            f"- {e['concurrent_scrapes']} concurrent scrapes: {e['concurrent_bus_reads']} bus "
            f"read(s) ({e['concurrent_requests']} requests, {e['requests_per_read']} per read); "
            f"latency min {e['latency_min_s']:.3f} / p50 {e['latency_p50_s']:.3f} / "
            f"p90 {e['latency_p90_s']:.3f} / p99 {e['latency_p99_s']:.3f} / "
            f"max {e['latency_max_s']:.3f} s"
        )
    return "\n".join(out)


def plot(results: Results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bauds = sorted({r.baud for r in results.snapshots}, reverse=True)
    figure, axes = plt.subplots(1, len(bauds), figsize=(6 * len(bauds), 4.6), squeeze=False)
    for axis, baud in zip(axes[0], bauds):
        ours = sorted(
            (r for r in results.snapshots if r.baud == baud and r.groups == 1),
            key=lambda r: r.modules,
        )
        x = [r.modules for r in ours]
        axis.plot(x, [r.floor for r in ours], "k--", label="floor (our snapshot's frames)")
        axis.plot(x, [r.wall for r in ours], "o-", label="pylontech-exporter snapshot")
        styles = {"python-pylontech": "s-", "pylontech": "^-"}
        for name, style in styles.items():
            rows = sorted(
                (p for p in results.peers if p.peer == name and p.baud == baud and not p.error),
                key=lambda p: p.modules,
            )
            if rows:
                axis.plot([p.modules for p in rows], [p.wall for p in rows], style, label=name)
                axis.plot(
                    [p.modules for p in rows],
                    [p.ours_wall for p in rows],
                    style[0] + ":",
                    alpha=0.6,
                    label=f"ours, same reads as {name}",
                )
        axis.set_yscale("log")
        axis.set_xticks(x)
        axis.set_xlabel("modules (one group)")
        axis.set_ylabel("seconds per full read (log)")
        axis.set_title(f"{baud} baud, {results.options['latency']} s response latency")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- main ----------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 and 3 modules, 1 and 2 groups")
    parser.add_argument("--modules", type=_ints, help="modules per group, e.g. 1,3,8,16")
    parser.add_argument("--groups", type=_ints, help="group counts, e.g. 1,2,3,4")
    parser.add_argument("--bauds", type=_ints, help=f"baud rates (default {BAUDS})")
    parser.add_argument("--reps", type=int, default=3, help="snapshots per config at 115200")
    parser.add_argument("--latency", type=float, default=LATENCY, help="response latency, s")
    parser.add_argument("--no-peers", action="store_true", help="leave out the peer libraries")
    parser.add_argument(
        "--sequential-peers",
        action="store_true",
        help="run the peers' configurations one after the other (default: in parallel, "
        "each on its own line; they sleep in their read timeouts)",
    )
    parser.add_argument("--no-exporter", action="store_true", help="no exporter process")
    parser.add_argument("--scrapes", type=int, default=100, help="concurrent scrapes")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="write the snapshot plot")
    args = parser.parse_args(argv)
    modules = args.modules or ((1, 3) if args.quick else MODULES)
    groups = args.groups or ((1, 2) if args.quick else GROUPS)
    bauds = args.bauds or BAUDS
    # 9600 baud reads take 10x longer and vary less: one is enough.
    reps = {b: (args.reps if b > 9600 else 1) for b in bauds}
    began = time.monotonic()
    results = Results(machine(), {"latency": args.latency, "reps": reps, "quick": args.quick})
    largest: Snapshot | None = None
    like: dict[tuple[int, int], dict[str, tuple[float, int, float]]] = {}
    for g in groups:
        for n in modules:
            print(f"snapshot: {n} modules x {g} groups", file=sys.stderr, flush=True)
            rows, snapshot, ours = measure_snapshots(n, g, bauds, reps, args.latency)
            results.snapshots += rows
            for baud, by_peer in ours.items():
                like[(n, baud)] = by_peer
            largest = snapshot
    if not args.no_peers:
        results.peer_status = peers.available()
        configs = [
            (name, n, baud)
            for name, status in results.peer_status.items()
            if status is None
            for n in modules
            for baud in bauds
        ]
        print(f"peers: {len(configs)} runs", file=sys.stderr, flush=True)
        results.peers = measure_peers(configs, args.latency, not args.sequential_peers)
        for p in results.peers:
            if (p.modules, p.baud) in like:
                p.ours_wall, p.ours_requests, p.ours_floor = like[(p.modules, p.baud)][p.peer]
    print("decode, render", file=sys.stderr, flush=True)
    results.decode = measure_decode()
    if largest is not None:
        results.render = measure_render(largest)
    if not args.no_exporter:
        print("exporter process", file=sys.stderr, flush=True)
        results.exporter = measure_exporter(
            max(modules), max(groups), max(bauds), args.latency, args.scrapes
        )
    results.seconds = time.monotonic() - began
    print(report(results))
    if args.json:
        with open(args.json, "w") as output:
            json.dump(asdict(results), output, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0
