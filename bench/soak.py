"""Soak test: many scrapes of a real exporter process against a faulty virtual stack.

    python bench/soak.py                     # 10,000 scrapes, ~2 % of requests faulty
    python bench/soak.py --scrapes 500 --json

The virtual stack (3 US3000C modules, values moving with the clock) is served on TCP
in this process with a FaultPlan that makes each request misbehave with probability
``--fault-rate`` (spread over every wire fault kind, plus vanishing modules and ignored
bank-wide queries). The exporter runs as a separate process with ``--cache.ttl 0`` (every
scrape reads the bus) and is scraped over HTTP with keep-alive, one scrape after the other.

Reported: crashes (the process alive at the end, HTTP errors), resident memory at start
(after a warm-up), end and peak, threads and file descriptors at start and end, and the
share of scrapes that returned complete data (the bank and every module up).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pylontech_exporter.simulator import BatteryStack, Rs485Responder  # noqa: E402
from pylontech_exporter.simulator.serve import TcpSimulator  # noqa: E402

#: Fault kinds mixed into the plan (options for each); the rate is split evenly.
MIX = [
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
]
UP = re.compile(rb"^pylontech_(module_)?up\{[^}]*\} (\S+)$", re.M)


def proc(pid: int) -> dict[str, int]:
    values = {"threads": len(os.listdir(f"/proc/{pid}/task"))}
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name.lower() + "_kb"] = int(rest.split()[0])
    return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scrapes", type=int, default=10_000)
    parser.add_argument("--fault-rate", type=float, default=0.02, help="per request (0.02)")
    parser.add_argument("--timeout", type=float, default=0.2, help="--serial.timeout (0.2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    stack = BatteryStack(modules=3, model="US3000C", seed=args.seed)
    stack.follow_clock()
    each = args.fault_rate / len(MIX)
    for kind, options in MIX:
        stack.faults.add(kind, probability=each, **options)
    simulator = TcpSimulator(Rs485Responder(stack), latency=0).start()
    port = free_port()
    exporter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pylontech_exporter.cli",
            "--serial.port",
            simulator.url,
            "--serial.timeout",
            str(args.timeout),
            "--cache.ttl",
            "0",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--web.disable-exporter-metrics",
            "--log.level",
            "error",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    results = {"scrapes": args.scrapes, "fault_rate": args.fault_rate, "machine": machine()}
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or exporter.poll() is not None:
                    raise SystemExit("the exporter did not start") from None
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def scrape() -> bytes | None:
            nonlocal conn
            try:
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                body = response.read()
                return body if response.status == 200 else None
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                return None

        for _ in range(50):  # warm-up: discovery, static data, imports, caches
            scrape()
        start = proc(exporter.pid)
        requests_before = simulator.requests
        complete = errors = 0
        samples = []
        began = time.monotonic()
        for number in range(1, args.scrapes + 1):
            body = scrape()
            if body is None:
                errors += 1
            else:
                ups = UP.findall(body)
                complete += len(ups) == 4 and all(v == b"1.0" for _, v in ups)
            if number % 1000 == 0:
                samples.append(proc(exporter.pid))
                if not args.json:
                    print(
                        f"{number} scrapes, {complete / number:.1%} complete, "
                        f"{errors} HTTP errors, {samples[-1]}",
                        file=sys.stderr,
                    )
        elapsed = time.monotonic() - began
        end = proc(exporter.pid)
        fired = {}
        for fault in stack.faults:
            name = fault.kind.value + (f"_{fault.code:02X}" if fault.kind.value == "rtn" else "")
            fired[name] = fault.fired
        results.update(
            alive=exporter.poll() is None,
            http_errors=errors,
            complete_share=complete / args.scrapes,
            seconds=round(elapsed, 1),
            bus_requests=simulator.requests - requests_before,
            faults_fired=fired,
            rss_kb={
                "start": start["vmrss_kb"],
                "end": end["vmrss_kb"],
                "peak_sampled": max(s["vmrss_kb"] for s in [start, *samples, end]),
                "high_water_mark": end["vmhwm_kb"],
            },
            threads={"start": start["threads"], "end": end["threads"]},
            fds={"start": start["fds"], "end": end["fds"]},
        )
        conn.close()
    finally:
        exporter.terminate()
        try:
            exporter.wait(10)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.wait()
        simulator.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        r = results
        print(f"machine: {r['machine']}")
        print(
            f"{r['scrapes']} scrapes in {r['seconds']} s, {r['bus_requests']} bus requests, "
            f"{sum(r['faults_fired'].values())} faults injected ({r['faults_fired']})"
        )
        print(f"exporter alive at the end: {r['alive']}; HTTP errors: {r['http_errors']}")
        print(f"complete scrapes (bank and every module up): {r['complete_share']:.2%}")
        print(f"RSS kB: {r['rss_kb']}; threads: {r['threads']}; fds: {r['fds']}")
    ok = results["alive"] and results["http_errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
