"""The RS485 read plan: what the exporter asks a bank's modules on each scrape.

Per scrape and bank: analog values (0x42) and alarm info (0x44) of every module, bank-wide
when the firmware answers the FF query and module by module otherwise, then the
charge/discharge management info (0x92) of each module. Static data (0x93 serial
number, 0x96 software version, 0x47 thresholds, 0x51 manufacturer info, 0x4F protocol
version) is read at discovery and refreshed hourly or when the set of answering modules
changes. What is remembered between scrapes lives in the source-neutral
:class:`~pylontech_exporter.bank.Bank`.

Banks on one port share one :class:`~pylontech_exporter.rs485.client.Pylontech` client
and are read one after the other (:class:`Rs485Line`). Every request is bounded by the
scrape's deadline (``client.deadline``): what was not read in time is reported as not
read, never filled in from an older snapshot.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any, Callable, Protocol, TypeVar

from ..bank import Bank, ModuleStatic
from ..config import SerialSettings
from ..errors import PylontechError
from ..logging_setup import kv
from ..models import (
    GroupValues,
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
    ModuleSerialNumber,
    ModuleValues,
    ProtocolVersion,
    SoftwareVersion,
    SystemParameters,
    master_address,
    module_position,
)
from ..snapshot import BankReading, ModuleReading
from .bank_query import BankQueryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


class Client(Protocol):
    """What the read plan needs of :class:`~pylontech_exporter.rs485.client.Pylontech`."""

    stats: Any

    def deadline(self, when: float) -> Any: ...
    def discover(self, group: int = 0, *, timeout: float | None = None) -> list[int]: ...
    def get_values_bank(self, group: int = 0) -> GroupValues: ...
    def get_values_single(self, address: int) -> ModuleValues: ...
    def get_alarm_info_bank(self, group: int = 0) -> list[ModuleAlarms]: ...
    def get_alarm_info(self, address: int) -> ModuleAlarms: ...
    def get_management_info(self, address: int) -> ManagementInfo: ...
    def get_system_parameters(self, address: int) -> SystemParameters: ...
    def get_module_serial_number(self, address: int) -> ModuleSerialNumber: ...
    def get_software_version(self, address: int) -> SoftwareVersion: ...
    def get_manufacturer_info(self, address: int) -> ManufacturerInfo: ...
    def get_protocol_version(self, address: int) -> ProtocolVersion: ...
    def close(self) -> None: ...


class _DeadlinePassed(Exception):
    pass


class BankReader:
    """Reads one bank through ``client``; remembers what it learns in ``bank``."""

    def __init__(self, bank: Bank, client: Client) -> None:
        self.bank = bank
        self.client = client
        self.group = bank.group
        mode = bank.config.bank_query
        #: Per command: does the firmware answer the bank-wide query?
        self.policies = {
            what: BankQueryPolicy(mode, reprobe_after=bank.rediscover_after, clock=bank.clock)
            for what in ("values", "alarms")
        }
        self._deadline = float("inf")

    def read(self, deadline: float) -> BankReading:
        """Read the bank; every request ends by ``deadline`` (time.monotonic())."""
        bank = self.bank
        self._deadline = deadline
        start = bank.clock()
        before_requests = self.client.stats.requests
        before_failures = dict(self.client.stats.failures)
        reading = bank.begin()
        try:
            with self.client.deadline(deadline):
                self._read(reading)
        except _DeadlinePassed:
            reading.complete = False
            reading.error = "scrape deadline passed before the bank was read"
            log.warning(
                "scrape deadline passed; reporting unread modules as down",
                extra=kv(
                    bank=bank.name,
                    read=sum(m.up for m in reading.modules),
                    modules=len(bank.known),
                ),
            )
        finally:
            stats = self.client.stats
            bank.count(
                stats.requests - before_requests,
                {r: n - before_failures.get(r, 0) for r, n in stats.failures.items()},
            )
        return bank.finish(reading, bank.clock() - start)

    # -- the read, step by step -------------------------------------------------------

    def _address(self, position: int) -> int:
        return self.bank.address(position)

    def _check_deadline(self) -> None:
        if self.bank.clock() >= self._deadline:
            raise _DeadlinePassed

    def _try(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()``, or None after a protocol error (logged). Raises _DeadlinePassed when
        the scrape's time is up, before or during the call."""
        self._check_deadline()
        try:
            return call()
        except PylontechError as error:
            self._check_deadline()
            self.bank.last_error = str(error)
            log.debug("%s failed: %s", what, error, extra=kv(bank=self.bank.name))
            return None

    def _read(self, reading: BankReading) -> None:
        bank = self.bank
        if bank.discovery_due(bank.clock()):
            self._discover()
        if not bank.known:
            reading.error = "no module answered discovery"
            return
        values = self._read_values(reading)
        modules = {module.position: module for module in reading.modules}
        for position in bank.answered(set(values)):
            bank.apply_static(modules[position])
        if not modules:
            return
        for position, alarms in self._read_alarms(list(modules)).items():
            if position in modules:
                modules[position].alarms = alarms
        for position, module in modules.items():
            address = self._address(position)
            module.management = self._try(
                f"0x92 at 0x{address:02X}", partial(self.client.get_management_info, address)
            )
        self._read_static(modules)

    def _discover(self) -> None:
        bank = self.bank
        now = bank.clock()
        self._check_deadline()
        try:
            found = self.client.discover(self.group)
        except PylontechError as error:
            self._check_deadline()
            bank.last_error = str(error)
            log.warning("discovery failed", extra=kv(bank=bank.name, err=str(error)))
            return
        positions = [module_position(a, self.group) for a in found]
        if bank.clock() >= self._deadline:
            # discover() stops at the first silent address: a deadline makes it look short.
            bank.learn(positions)
            raise _DeadlinePassed
        bank.discovered(positions, now)
        # Re-check what the firmware answers after every discovery.
        for policy in self.policies.values():
            policy.forget()

    def _bank_read(self, what: str, call: Callable[[], list[Any]]) -> dict[int, Any] | None:
        """A bank-wide read mapped by position, or None when it failed or cannot be
        trusted (fewer modules than expected: which one is missing is unknown)."""
        bank = self.bank
        policy = self.policies[what]
        self._check_deadline()
        try:
            modules = call()
        except PylontechError as error:
            self._check_deadline()
            bank.last_error = str(error)
            if policy.learning:
                previous = policy.failed()
                log.log(
                    logging.INFO if previous is None else logging.WARNING,
                    "bank-wide query failed; reading module by module",
                    extra=kv(bank=bank.name, command=what, err=str(error)),
                )
            return None
        by_position = {module_position(m.address, self.group): m for m in modules}
        if len(by_position) > len(bank.known) and not bank.config.modules:
            log.info(
                "bank reports more modules than known; rediscovering",
                extra=kv(bank=bank.name, count=len(by_position)),
            )
            bank.learn(by_position)
            bank.rediscover_wanted = True
            bank.last_discovery = None
        policy.answered()
        if len(by_position) < len(bank.known) and policy.learning:
            return None
        return by_position

    def _read_values(self, reading: BankReading) -> dict[int, ModuleValues]:
        """The analog values, by position. ``reading.modules`` gets the modules read, with
        the static data known from earlier scrapes, even when the deadline cuts this
        short."""
        values: dict[int, ModuleValues] = {}
        try:
            self._fill_values(reading, values)
        finally:
            reading.modules = []
            for position, value in sorted(values.items()):
                module = self.bank.reading(position)
                module.values = value
                reading.modules.append(module)
        return values

    def _fill_values(self, reading: BankReading, values: dict[int, ModuleValues]) -> None:
        policy = self.policies["values"]
        if policy.should_ask():
            group = self.group
            result = self._bank_read(
                "values", lambda: list(self.client.get_values_bank(group).modules)
            )
            if result is not None:
                reading.bank_query = True
                values.update((p, v) for p, v in result.items() if p in self.bank.known)
                return
            if policy.mode == "on":
                return
        try:
            for position in self.bank.known:
                address = self._address(position)
                value = self._try(
                    f"0x42 at 0x{address:02X}", partial(self.client.get_values_single, address)
                )
                if value is not None:
                    values[position] = value
        finally:
            # Per-module reads fail as well: the bank is down, not the FF query unsupported.
            if not values and policy.supported is False:
                policy.forget()

    def _read_alarms(self, positions: list[int]) -> dict[int, ModuleAlarms]:
        policy = self.policies["alarms"]
        if policy.should_ask():
            group = self.group
            result = self._bank_read("alarms", lambda: self.client.get_alarm_info_bank(group))
            if result is not None:
                return result
            if policy.mode == "on":
                return {}
        alarms = {}
        for position in positions:
            address = self._address(position)
            alarm = self._try(
                f"0x44 at 0x{address:02X}", partial(self.client.get_alarm_info, address)
            )
            if alarm is not None:
                alarms[position] = alarm
        return alarms

    def _read_static(self, modules: dict[int, ModuleReading]) -> None:
        bank = self.bank
        bank.static_expired(bank.clock())
        master = master_address(self.group)
        if bank.manufacturer is None:
            bank.manufacturer = self._try("0x51", lambda: self.client.get_manufacturer_info(master))
        if bank.protocol_version is None:
            bank.protocol_version = self._try(
                "0x4F", lambda: self.client.get_protocol_version(master)
            )
        for position, module in modules.items():
            address = self._address(position)
            static = bank.static.setdefault(position, ModuleStatic())
            if static.serial_number is None:
                serial = self._try(
                    f"0x93 at 0x{address:02X}",
                    partial(self.client.get_module_serial_number, address),
                )
                static.serial_number = serial.serial_number if serial is not None else None
            if static.software_version is None:
                version = self._try(
                    f"0x96 at 0x{address:02X}",
                    partial(self.client.get_software_version, address),
                )
                static.software_version = version.mainline_version if version else None
            if static.parameters is None:
                static.parameters = self._try(
                    f"0x47 at 0x{address:02X}",
                    partial(self.client.get_system_parameters, address),
                )
            bank.apply_static(module)


ClientFactory = Callable[[SerialSettings], Client]


def default_client(settings: SerialSettings) -> Client:
    from .client import Pylontech

    return Pylontech(
        settings.port,
        settings.baudrate,
        timeout=settings.timeout,
        command_gap=settings.command_gap,
    )


class Rs485Line:
    """The banks of one RS485 port, read one after the other through one client."""

    def __init__(self, banks: list[Bank], client_factory: ClientFactory = default_client) -> None:
        self.banks = banks
        self.client = client_factory(banks[0].config.serial)
        self.readers = [BankReader(bank, self.client) for bank in banks]
        self._busy = threading.Lock()

    def read(self, deadline: float) -> list[BankReading]:
        if not self._busy.acquire(blocking=False):
            return [b.unread("the previous read of this port is still running") for b in self.banks]
        try:
            results = []
            for reader in self.readers:
                try:
                    result = reader.read(deadline)
                except Exception as error:  # a bug must not take the other banks down
                    log.exception("reading the bank failed", extra=kv(bank=reader.bank.name))
                    result = reader.bank.unread(f"internal error: {error}")
                results.append(result)
            return results
        finally:
            self._busy.release()

    def close(self) -> None:
        self.client.close()
