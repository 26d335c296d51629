"""A real exporter process, scraped over HTTP as Prometheus scrapes it, and what its
scrapes contain.

:class:`ExporterProcess` runs ``python -m pylontech_exporter.cli`` (the installed entry
point's code) on a port the harness serves, with the flags a user gives; :meth:`scrape`
sends what Prometheus sends (``X-Prometheus-Scrape-Timeout-Seconds``, ``Accept``,
``Accept-Encoding: gzip``) and :func:`coverage` reads a body: per bank, which modules'
values, alarms, management info and identity it holds.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.support.net import free_port

from .section import REPO

#: What Prometheus 2.x sends as Accept.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
_SAMPLE = re.compile(rb"^(pylontech_\w+)\{([^}]*)\} (\S+)", re.M)
_LABEL = re.compile(rb'(\w+)="([^"]*)"')


@dataclass
class Scrape:
    """One scrape: when it began and ended (time.monotonic()), status and body."""

    start: float
    end: float
    status: int
    body: bytes
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class BankCoverage:
    """What one scrape holds of one bank (module positions per part)."""

    up: bool = False
    discovering: bool = False
    modules: set[int] = field(default_factory=set)  # module_up series, 0 or 1
    values: set[int] = field(default_factory=set)
    alarms: set[int] = field(default_factory=set)
    management: set[int] = field(default_factory=set)
    info: set[int] = field(default_factory=set)


def coverage(body: bytes) -> dict[str, BankCoverage]:
    """Bank name -> what the exposition ``body`` (text or OpenMetrics) holds of it."""
    banks: dict[str, BankCoverage] = {}
    parts = {
        b"pylontech_module_voltage_volts": "values",
        b"pylontech_module_protection_active": "alarms",
        b"pylontech_module_charge_voltage_limit_volts": "management",
        b"pylontech_module_info": "info",
    }
    for name, labels_text, value in _SAMPLE.findall(body):
        labels = dict(_LABEL.findall(labels_text))
        bank_name = labels.get(b"bank")
        if bank_name is None:
            continue
        bank = banks.setdefault(bank_name.decode(), BankCoverage())
        if name == b"pylontech_up":
            bank.up = float(value) == 1.0
        elif name == b"pylontech_bank_discovering":
            bank.discovering = float(value) == 1.0
        elif name == b"pylontech_module_up":
            bank.modules.add(int(labels[b"module"]))
        elif name in parts:
            getattr(bank, parts[name]).add(int(labels[b"module"]))
    return banks


@dataclass
class Verdict:
    """``up`` (every expected module's values and alarms), ``partial`` or ``empty`` (no
    module's values), with what was missing."""

    state: str
    missing: str = ""
    management: int = 0
    modules: int = 0

    def __str__(self) -> str:
        return self.state + (f": {self.missing}" if self.missing else "")


def judge(scrape: Scrape, expected: dict[str, int]) -> Verdict:
    """Verdict of a scrape of banks ``expected`` (name -> number of modules)."""
    total = sum(expected.values())
    if scrape.status != 200:
        return Verdict("empty", scrape.error or f"HTTP {scrape.status}", 0, total)
    banks = coverage(scrape.body)
    missing, values, management = [], 0, 0
    for name, count in expected.items():
        bank = banks.get(name, BankCoverage())
        wanted = set(range(1, count + 1))
        got_values, got_alarms = len(bank.values & wanted), len(bank.alarms & wanted)
        values += got_values
        management += len(bank.management & wanted)
        if got_values == count and got_alarms == count:
            continue
        what = "discovering" if bank.discovering else "up 0" if not bank.up else ""
        parts = [what] if what else []
        if len(bank.modules) != count:
            parts.append(f"{len(bank.modules)} of {count} modules known")
        if got_values < count:
            parts.append(f"values {got_values}/{count}")
        if got_alarms < count:
            parts.append(f"alarms {got_alarms}/{count}")
        label = f"bank {name}: " if len(expected) > 1 else ""
        missing.append(label + ", ".join(parts))
    state = "up" if not missing else "empty" if values == 0 else "partial"
    return Verdict(state, "; ".join(missing), management, total)


class Client:
    """HTTP/1.1 with keep-alive to an exporter on loopback (a new connection after a
    failure), as Prometheus scrapes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 120.0
    ) -> Scrape:
        start = time.monotonic()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
            self._conn.request("GET", path, headers=headers or {})
            response = self._conn.getresponse()
            body = response.read()
            if response.getheader("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return Scrape(start, time.monotonic(), response.status, body)
        except (OSError, http.client.HTTPException) as error:
            self.close()
            return Scrape(start, time.monotonic(), 0, b"", f"{type(error).__name__}: {error}")

    def scrape(self, timeout: float | None, http_timeout: float | None = None) -> Scrape:
        """A scrape as Prometheus sends it, with ``timeout`` in the header (None: none)."""
        headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
        if timeout is not None:
            headers["X-Prometheus-Scrape-Timeout-Seconds"] = f"{timeout:g}"
        wait = http_timeout if http_timeout is not None else (timeout or 10.0) + 30.0
        return self.get("/metrics", headers, wait)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ExporterProcess:
    """``pylontech-exporter`` reading ``port`` (one bank per group), serving on loopback;
    ``scrape`` and ``get`` go through one kept-alive :class:`Client`."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        groups: Sequence[int],
        cache_ttl: float | None = 0.0,
        extra: Sequence[str] = (),
        log_level: str = "info",
    ) -> None:
        self.http_port = free_port()
        command = [
            sys.executable,
            "-m",
            "pylontech_exporter.cli",
            "--serial.port",
            port,
            "--serial.baudrate",
            str(baudrate),
            "--web.listen-address",
            f"127.0.0.1:{self.http_port}",
            "--log.level",
            log_level,
            *extra,
        ]
        if cache_ttl is not None:
            command += ["--cache.ttl", f"{cache_ttl:g}"]
        for group in groups:
            command += ["--group", str(group)]
        self.command = command
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.client = Client(self.http_port)
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_listening(self, timeout: float = 30.0) -> float:
        """Seconds from the start until the HTTP port accepts connections."""
        deadline = self.started + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.http_port), 0.5).close()
                return time.monotonic() - self.started
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the exporter exited: {self.log()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the exporter did not listen in time") from None
                time.sleep(0.01)

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 120.0
    ) -> Scrape:
        return self.client.get(path, headers, timeout)

    def scrape(self, timeout: float | None, http_timeout: float | None = None) -> Scrape:
        return self.client.scrape(timeout, http_timeout)

    def resources(self) -> dict[str, float]:
        """Resident memory and its high-water mark (kB), threads, fds, CPU seconds."""
        pid = self.process.pid
        values: dict[str, float] = {
            "threads": len(os.listdir(f"/proc/{pid}/task")),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
        }
        with open(f"/proc/{pid}/status") as status:
            for row in status:
                key, _, rest = row.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key.lower() + "_kb"] = int(rest.split()[0])
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        values["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return values

    def log(self) -> str:
        """What the exporter logged so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def warnings(self) -> dict[str, int]:
        """Warning and error log lines by message (logfmt ``msg=``), with counts."""
        found: dict[str, int] = {}
        for row in self.log().splitlines():
            if "level=warn" not in row and "level=error" not in row:
                continue
            match = re.search(r'msg="([^"]*)"|msg=(\S+)', row)
            message = (match.group(1) or match.group(2)) if match else row[:120]
            found[message] = found.get(message, 0) + 1
        return found

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self._log.close()

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
