"""One consistent reading of every configured bank: the snapshot.

Per scrape and bank: analog values (0x42) and alarm info (0x44) of every module, bank-wide
when the firmware answers the FF query and module by module otherwise, then the
charge/discharge management info (0x92) of each module. Static data (0x93 serial
number, 0x96 software version, 0x47 thresholds, 0x51 manufacturer info, 0x4F protocol
version) is read at discovery and refreshed hourly or when the set of answering modules
changes.

Banks on one port share one :class:`~pylontech_exporter.client.Pylontech` client and are
read one after the other; different ports are read in parallel, one thread each. Every
request is bounded by the scrape's deadline (``client.deadline``): what was not read in
time is reported as not read, never filled in from an older snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

from .config import BankConfig, SerialSettings
from .errors import PylontechError
from .logging_setup import kv
from .models import (
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
    ModuleValues,
    ProtocolVersion,
    SystemParameters,
    master_address,
    module_address,
    module_position,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Static data (serials, versions, thresholds) is read again after this many seconds.
STATIC_REFRESH_SECONDS = 3600.0
#: Re-discovery after a module stopped answering happens at most this often.
REDISCOVER_SECONDS = 300.0
#: Failure reasons always exported, even at 0.
FAILURE_REASONS = ("timeout", "checksum", "frame", "return_code", "transport")


class Client(Protocol):
    """What the poller needs of :class:`pylontech_exporter.client.Pylontech`."""

    stats: Any

    def deadline(self, when: float) -> Any: ...
    def discover(self, group: int = 0, *, timeout: float | None = None) -> list[int]: ...
    def get_values_bank(self, group: int = 0) -> Any: ...
    def get_values_single(self, address: int) -> ModuleValues: ...
    def get_alarm_info_bank(self, group: int = 0) -> list[ModuleAlarms]: ...
    def get_alarm_info(self, address: int) -> ModuleAlarms: ...
    def get_management_info(self, address: int) -> ManagementInfo: ...
    def get_system_parameters(self, address: int) -> SystemParameters: ...
    def get_module_serial_number(self, address: int) -> Any: ...
    def get_software_version(self, address: int) -> Any: ...
    def get_manufacturer_info(self, address: int) -> ManufacturerInfo: ...
    def get_protocol_version(self, address: int) -> ProtocolVersion: ...
    def close(self) -> None: ...


# --- the snapshot --------------------------------------------------------------------------


@dataclass
class ModuleReading:
    """What this scrape learned about one module. ``values`` is None when the module's
    analog values were not read: the module is down for this scrape."""

    position: int
    address: int
    values: ModuleValues | None = None
    alarms: ModuleAlarms | None = None
    management: ManagementInfo | None = None
    serial_number: str | None = None
    software_version: str | None = None
    parameters: SystemParameters | None = None

    @property
    def up(self) -> bool:
        return self.values is not None


@dataclass
class BankReading:
    """One bank in one snapshot. ``up`` when at least one module answered."""

    name: str
    group: int
    port: str
    modules: list[ModuleReading] = field(default_factory=list)
    duration: float = 0.0
    manufacturer: ManufacturerInfo | None = None
    protocol_version: ProtocolVersion | None = None
    #: Cumulative counters of this bank's requests (client.stats deltas).
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    #: False when the deadline cut the read short.
    complete: bool = True
    #: Whether the bank-wide query served the analog values this time.
    bank_query: bool = False
    error: str | None = None

    @property
    def up(self) -> bool:
        return any(m.up for m in self.modules)


@dataclass
class Snapshot:
    """Every configured bank, read once."""

    banks: list[BankReading]
    #: Wall-clock time (time.time()) when the read finished.
    taken_at: float = 0.0
    #: time.monotonic() when the read finished, for the cache's TTL.
    finished: float = 0.0
    duration: float = 0.0

    @property
    def complete(self) -> bool:
        return all(b.complete for b in self.banks)


# --- one bank ------------------------------------------------------------------------------


@dataclass
class _Static:
    serial_number: str | None = None
    software_version: str | None = None
    parameters: SystemParameters | None = None


class _DeadlinePassed(Exception):
    pass


class BankPoller:
    """Reads one bank and keeps what it learned: which modules exist, whether the
    firmware answers bank-wide queries, and the static data."""

    def __init__(
        self,
        config: BankConfig,
        client: Client,
        *,
        clock: Callable[[], float] = time.monotonic,
        static_refresh: float = STATIC_REFRESH_SECONDS,
        rediscover: float = REDISCOVER_SECONDS,
    ) -> None:
        self.config = config
        self.client = client
        self._clock = clock
        self._static_refresh = static_refresh
        self._rediscover_after = rediscover
        self.group = config.group
        #: Addresses of the modules this bank is expected to have (never shrinks, so that a
        #: module that stops answering keeps exporting module_up 0).
        self.known: list[int] = (
            [module_address(self.group, p) for p in range(1, config.modules + 1)]
            if config.modules
            else []
        )
        self._last_discovery: float | None = None
        self._rediscover_wanted = False
        #: Per command ("values", "alarms"): True = bank-wide works, False = ignored by the
        #: firmware (probed again ``rediscover`` seconds after it was marked so), None = not
        #: known (probe next time).
        self._bank_ok: dict[str, bool | None] = {"values": None, "alarms": None}
        self._bank_off_since: dict[str, float] = {}
        self._static: dict[int, _Static] = {}
        self._static_at: float | None = None
        self._manufacturer: ManufacturerInfo | None = None
        self._protocol: ProtocolVersion | None = None
        #: Addresses that answered last time (a change triggers the static refresh).
        self._answering: set[int] = set()
        self.requests = 0
        self.failures: dict[str, int] = dict.fromkeys(FAILURE_REASONS, 0)
        self._deadline = float("inf")
        #: The last protocol error seen, for messages ("no module answered: ...").
        self._last_error: str | None = None
        self._was_up: bool | None = None

    # -- public ---------------------------------------------------------------------------

    def unread(self, error: str) -> BankReading:
        """This bank as reported when it could not be read at all."""
        return BankReading(
            name=self.config.name,
            group=self.group,
            port=self.config.port,
            modules=[self._empty(a) for a in self.known],
            requests=self.requests,
            failures=dict(self.failures),
            complete=False,
            error=error,
        )

    def read(self, deadline: float) -> BankReading:
        """Read the bank; every request ends by ``deadline`` (time.monotonic())."""
        self._deadline = deadline
        self._last_error = None
        start = self._clock()
        before_requests = self.client.stats.requests
        before_failures = dict(self.client.stats.failures)
        reading = BankReading(name=self.config.name, group=self.group, port=self.config.port)
        try:
            with self.client.deadline(deadline):
                self._read(reading)
        except _DeadlinePassed:
            reading.complete = False
            reading.error = "scrape deadline passed before the bank was read"
            log.warning(
                "scrape deadline passed; reporting unread modules as down",
                extra=kv(
                    bank=self.config.name,
                    read=sum(m.up for m in reading.modules),
                    modules=len(reading.modules),
                ),
            )
        finally:
            self.requests += self.client.stats.requests - before_requests
            for reason, count in self.client.stats.failures.items():
                delta = count - before_failures.get(reason, 0)
                self.failures[reason] = self.failures.get(reason, 0) + delta
        # Modules never reached this scrape are there, down.
        read = {m.address for m in reading.modules}
        reading.modules.extend(self._empty(a) for a in self.known if a not in read)
        reading.modules.sort(key=lambda m: m.address)
        reading.duration = self._clock() - start
        reading.requests = self.requests
        reading.failures = dict(self.failures)
        if not reading.up and reading.error is None:
            reading.error = "no module answered"
        if not reading.up and self._last_error and reading.complete:
            reading.error += f" (last error: {self._last_error})"
        if reading.up != self._was_up and (self._was_up is not None or not reading.up):
            if reading.up:
                log.info("bank answers again", extra=kv(bank=self.config.name))
            else:
                log.warning("bank down", extra=kv(bank=self.config.name, err=reading.error))
        self._was_up = reading.up
        return reading

    # -- the read, step by step -----------------------------------------------------------

    def _check_deadline(self) -> None:
        if self._clock() >= self._deadline:
            raise _DeadlinePassed

    def _try(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None after a protocol error (logged). Raises _DeadlinePassed when
        the scrape's time is up, before or during the call."""
        self._check_deadline()
        try:
            return call()
        except PylontechError as error:
            self._check_deadline()
            self._last_error = str(error)
            log.debug("%s failed: %s", what, error, extra=kv(bank=self.config.name))
            return None

    def _read(self, reading: BankReading) -> None:
        now = self._clock()
        if self._discovery_due(now):
            self._discover(now)
        if not self.known:
            reading.error = "no module answered discovery"
            return
        values = self._read_values(reading)
        modules = {module.address: module for module in reading.modules}
        answering = set(values)
        if answering != self._answering:
            lost = self._answering - answering
            new = answering - self._answering
            if lost:
                log.warning(
                    "modules stopped answering",
                    extra=kv(bank=self.config.name, modules=_positions(lost, self.group)),
                )
                self._rediscover_wanted = True
            if new and self._answering:
                log.info(
                    "modules answer again",
                    extra=kv(bank=self.config.name, modules=_positions(new, self.group)),
                )
            for address in new:  # re-read static data of modules that (re)appeared
                self._static.pop(address, None)
                self._apply_static(modules[address], None)
            self._answering = answering
        if not modules:
            return
        for address, alarms in self._read_alarms(list(modules)).items():
            if address in modules:
                modules[address].alarms = alarms
        for address, module in modules.items():
            module.management = self._try(
                f"0x92 at 0x{address:02X}", lambda a=address: self.client.get_management_info(a)
            )
        self._read_static(modules)

    def _discovery_due(self, now: float) -> bool:
        if self.config.modules:
            return False
        if not self.known or self._last_discovery is None:
            return True
        if now - self._last_discovery >= self._static_refresh:
            return True
        return self._rediscover_wanted and now - self._last_discovery >= self._rediscover_after

    def _discover(self, now: float) -> None:
        self._check_deadline()
        try:
            found = self.client.discover(self.group)
        except PylontechError as error:
            self._check_deadline()
            self._last_error = str(error)
            log.warning("discovery failed", extra=kv(bank=self.config.name, err=str(error)))
            return
        if self._clock() >= self._deadline:
            # discover() stops at the first silent address: a deadline makes it look short.
            self.known = sorted(set(self.known) | set(found))
            raise _DeadlinePassed
        self._last_discovery = now
        self._rediscover_wanted = False
        before = set(self.known)
        self.known = sorted(before | set(found))
        # Re-check what the firmware answers after every discovery.
        self._bank_ok = dict.fromkeys(self._bank_ok)
        if set(self.known) != before:
            self._static_at = None
            log.info(
                "discovered modules",
                extra=kv(
                    bank=self.config.name,
                    group=self.group,
                    modules=_positions(self.known, self.group),
                ),
            )

    def _use_bank_query(self, what: str) -> bool:
        mode = self.config.bank_query
        if mode == "on":
            return True
        if mode == "off":
            return False
        if self._bank_ok[what] is False:
            # Maybe a lost answer rather than a firmware that ignores FF: ask again now
            # and then (with a fixed module count there is no discovery to reset this).
            if self._clock() - self._bank_off_since.get(what, 0.0) < self._rediscover_after:
                return False
            self._bank_ok[what] = None
        return True

    def _bank_read(self, what: str, call: Callable[[], list[T]]) -> dict[int, T] | None:
        """A bank-wide read mapped by address, or None when it failed or cannot be trusted
        (fewer modules than expected: which one is missing is unknown)."""
        self._check_deadline()
        try:
            modules = call()
        except PylontechError as error:
            self._check_deadline()
            self._last_error = str(error)
            if self.config.bank_query == "auto":
                previous = self._bank_ok[what]
                # Worked last time: a passing hiccup, only this scrape reads module by
                # module. Not known to work: the firmware may ignore FF; read module by
                # module and probe again after a while (sooner if the per-module reads
                # fail too).
                if previous:
                    self._bank_ok[what] = None
                else:
                    self._bank_ok[what] = False
                    self._bank_off_since[what] = self._clock()
                log.log(
                    logging.INFO if previous is None else logging.WARNING,
                    "bank-wide query failed; reading module by module",
                    extra=kv(bank=self.config.name, command=what, err=str(error)),
                )
            return None
        by_address = {m.address: m for m in modules}  # type: ignore[attr-defined]
        if len(by_address) > len(self.known) and not self.config.modules:
            log.info(
                "bank reports more modules than known; rediscovering",
                extra=kv(bank=self.config.name, count=len(by_address)),
            )
            self.known = sorted(set(self.known) | set(by_address))
            self._rediscover_wanted = True
            self._last_discovery = None
        if self.config.bank_query == "auto":
            self._bank_ok[what] = True
        if len(by_address) < len(self.known) and self.config.bank_query == "auto":
            return None
        return by_address

    def _read_values(self, reading: BankReading) -> dict[int, ModuleValues]:
        """The analog values, by address. ``reading.modules`` gets the modules read, with
        the static data known from earlier scrapes, even when the deadline cuts this
        short."""
        values: dict[int, ModuleValues] = {}
        try:
            self._fill_values(reading, values)
        finally:
            reading.modules = [self._reading(a, v) for a, v in sorted(values.items())]
        return values

    def _reading(self, address: int, values: ModuleValues) -> ModuleReading:
        module = ModuleReading(module_position(address, self.group), address, values=values)
        self._apply_static(module, self._static.get(address))
        return module

    def _fill_values(self, reading: BankReading, values: dict[int, ModuleValues]) -> None:
        if self._use_bank_query("values"):
            group = self.group
            result = self._bank_read(
                "values", lambda: list(self.client.get_values_bank(group).modules)
            )
            if result is not None:
                reading.bank_query = True
                values.update((a, v) for a, v in result.items() if a in self.known)
                return
            if self.config.bank_query == "on":
                return
        try:
            for address in self.known:
                value = self._try(
                    f"0x42 at 0x{address:02X}", lambda a=address: self.client.get_values_single(a)
                )
                if value is not None:
                    values[address] = value
        finally:
            # Per-module reads fail as well: the bank is down, not the FF query unsupported.
            if not values and self._bank_ok["values"] is False and self.config.bank_query == "auto":
                self._bank_ok["values"] = None

    def _read_alarms(self, addresses: list[int]) -> dict[int, ModuleAlarms]:
        if self._use_bank_query("alarms"):
            group = self.group
            result = self._bank_read("alarms", lambda: self.client.get_alarm_info_bank(group))
            if result is not None:
                return result
            if self.config.bank_query == "on":
                return {}
        alarms = {}
        for address in addresses:
            alarm = self._try(
                f"0x44 at 0x{address:02X}", lambda a=address: self.client.get_alarm_info(a)
            )
            if alarm is not None:
                alarms[address] = alarm
        return alarms

    def _read_static(self, modules: dict[int, ModuleReading]) -> None:
        now = self._clock()
        if self._static_at is None or now - self._static_at >= self._static_refresh:
            self._static.clear()
            self._manufacturer = self._protocol = None
            self._static_at = now
        master = master_address(self.group)
        if self._manufacturer is None:
            self._manufacturer = self._try(
                "0x51", lambda: self.client.get_manufacturer_info(master)
            )
        if self._protocol is None:
            self._protocol = self._try("0x4F", lambda: self.client.get_protocol_version(master))
        for address, module in modules.items():
            static = self._static.setdefault(address, _Static())
            if static.serial_number is None:
                serial = self._try(
                    f"0x93 at 0x{address:02X}",
                    lambda a=address: self.client.get_module_serial_number(a),
                )
                static.serial_number = serial.serial_number if serial is not None else None
            if static.software_version is None:
                version = self._try(
                    f"0x96 at 0x{address:02X}",
                    lambda a=address: self.client.get_software_version(a),
                )
                static.software_version = version.mainline_version if version else None
            if static.parameters is None:
                static.parameters = self._try(
                    f"0x47 at 0x{address:02X}",
                    lambda a=address: self.client.get_system_parameters(a),
                )
            self._apply_static(module, static)

    def _apply_static(self, module: ModuleReading, static: _Static | None) -> None:
        static = static or _Static()
        module.serial_number = static.serial_number
        module.software_version = static.software_version
        module.parameters = static.parameters

    def bank_static(self) -> tuple[ManufacturerInfo | None, ProtocolVersion | None]:
        return self._manufacturer, self._protocol

    def _empty(self, address: int) -> ModuleReading:
        return ModuleReading(module_position(address, self.group), address)


def _positions(addresses: Any, group: int) -> str:
    return ",".join(str(module_position(a, group)) for a in sorted(addresses))


# --- every bank ----------------------------------------------------------------------------


ClientFactory = Callable[[SerialSettings], Client]


def default_client_factory(settings: SerialSettings) -> Client:
    from .client import Pylontech

    return Pylontech(
        settings.port,
        settings.baudrate,
        timeout=settings.timeout,
        command_gap=settings.command_gap,
    )


class _Port:
    """The banks of one port, read one after the other by one thread."""

    def __init__(self, client: Client, banks: list[BankPoller]) -> None:
        self.client = client
        self.banks = banks
        self.busy = threading.Lock()

    def read(self, deadline: float) -> list[BankReading]:
        if not self.busy.acquire(blocking=False):
            return [b.unread("the previous read of this port is still running") for b in self.banks]
        try:
            results = []
            for bank in self.banks:
                try:
                    result = bank.read(deadline)
                except Exception as error:  # a bug must not take the other banks down
                    log.exception("reading the bank failed", extra=kv(bank=bank.config.name))
                    result = bank.unread(f"internal error: {error}")
                # Bank identity only with readings: a bank that is down exports no bank_info.
                if result.up:
                    result.manufacturer, result.protocol_version = bank.bank_static()
                results.append(result)
            return results
        finally:
            self.busy.release()


class Poller:
    """Reads every configured bank: one client per port, ports in parallel."""

    def __init__(
        self,
        banks: list[BankConfig],
        client_factory: ClientFactory = default_client_factory,
        *,
        clock: Callable[[], float] = time.monotonic,
        static_refresh: float = STATIC_REFRESH_SECONDS,
        rediscover: float = REDISCOVER_SECONDS,
    ) -> None:
        self._clock = clock
        self.banks: list[BankPoller] = []
        clients: dict[str, Client] = {}
        by_port: dict[str, list[BankPoller]] = {}
        for config in banks:
            if config.port not in clients:
                clients[config.port] = client_factory(config.serial)
            poller = BankPoller(
                config,
                clients[config.port],
                clock=clock,
                static_refresh=static_refresh,
                rediscover=rediscover,
            )
            self.banks.append(poller)
            by_port.setdefault(config.port, []).append(poller)
        self.clients = clients
        self._ports = [_Port(clients[port], pollers) for port, pollers in by_port.items()]
        self._executor = (
            ThreadPoolExecutor(max_workers=len(self._ports), thread_name_prefix="bus")
            if len(self._ports) > 1
            else None
        )

    def unread(self, error: str) -> Snapshot:
        """A snapshot in which nothing was read (every bank and known module down)."""
        return Snapshot(
            banks=[b.unread(error) for b in self.banks],
            taken_at=time.time(),
            finished=self._clock(),
        )

    def read(self, deadline: float) -> Snapshot:
        """Read every bank, bounded by ``deadline`` (time.monotonic())."""
        start = self._clock()
        results: dict[str, BankReading] = {}
        if self._executor is None:
            for reading in self._ports[0].read(deadline):
                results[reading.name] = reading
        else:
            futures: list[tuple[_Port, Future[list[BankReading]]]] = [
                (port, self._executor.submit(port.read, deadline)) for port in self._ports
            ]
            for port, future in futures:
                try:
                    # The client honours the deadline; the grace covers one blocked write.
                    readings = future.result(timeout=max(0.0, deadline - self._clock()) + 2.5)
                except Exception as error:
                    log.error("port read did not finish", extra=kv(err=str(error)))
                    readings = [b.unread("the read did not finish in time") for b in port.banks]
                for reading in readings:
                    results[reading.name] = reading
        return Snapshot(
            banks=[results[b.config.name] for b in self.banks],
            taken_at=time.time(),
            finished=self._clock(),
            duration=self._clock() - start,
        )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        for client in self.clients.values():
            try:
                client.close()
            except Exception:  # pragma: no cover - closing is best effort
                log.debug("closing a client failed", exc_info=True)
