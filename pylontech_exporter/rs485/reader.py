"""The RS485 read plan: what the exporter asks a bank's modules, on a scrape and between.

On each scrape, per bank, in this order until the deadline:

1. after the port was (re)opened: the master's serial number, to be sure the same stack
   is on the line (a gateway swapped, a device path reused by another adapter);
2. analog values (0x42) of every known module, bank-wide when the firmware answers the FF
   query, else module by module (also when a bank-wide answer did not fit in as much time
   before: then as many modules as fit, not none);
3. alarm info (0x44), the same way;
4. management info (0x92), oldest first, as many as the time left allows.

What a short budget does not reach is not exported (values and alarms are always of this
scrape); management info is exported while younger than a minute, with its read time.

Between scrapes, one request at a time and giving way to any scrape: discovery (0x93 from
the master upward; the first silent address beyond the known modules ends it), the static
data (0x51 per bank; 0x96 and 0x47 per module; hourly, the old values kept until the new
ones are read) and management info older than 30 s. The protocol version comes from the
VER of the answers (0x4F is not needed).

Banks on one port share one :class:`~pylontech_exporter.rs485.client.Pylontech` client
(:class:`Rs485Source`); what is remembered lives in the source-neutral
:class:`~pylontech_exporter.bank.Bank`.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any, Callable, Protocol, TypeVar

from ..bank import BACKGROUND_RETRY, Bank
from ..config import SerialSettings
from ..deadline import Deadline
from ..errors import (
    ANOTHER_MASTER,
    ChecksumError,
    ConsoleAnswer,
    DeadlinePassed,
    FrameError,
    PylontechError,
    ResponseError,
    TransportError,
)
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
    module_position,
)
from ..snapshot import BankReading, ModuleReading
from .bank_query import BankQueryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Management info older than this is read again between scrapes.
MANAGEMENT_REFRESH = 30.0
#: Seconds to the first byte of an answer on real modules, for estimates.
LATENCY = 0.08
#: Another master's requests not heard for this long: it is taken to have gone.
ANOTHER_MASTER_QUIET = 120.0


class Client(Protocol):
    """What the read plan needs of :class:`~pylontech_exporter.rs485.client.Pylontech`."""

    stats: Any
    transport: Any
    versions: dict[int, int]

    def deadline(self, when: Deadline | float) -> Any: ...
    def probe(
        self, address: int, timeout: float | None = None, *, ending: bool = False
    ) -> ModuleSerialNumber | None: ...
    def get_values_bank(self, group: int = 0) -> GroupValues: ...
    def get_values_single(self, address: int) -> ModuleValues: ...
    def get_alarm_info_bank(self, group: int = 0) -> list[ModuleAlarms]: ...
    def get_alarm_info(self, address: int) -> ModuleAlarms: ...
    def get_management_info(self, address: int) -> ManagementInfo: ...
    def get_system_parameters(self, address: int) -> SystemParameters: ...
    def get_module_serial_number(self, address: int) -> ModuleSerialNumber: ...
    def get_software_version(self, address: int) -> SoftwareVersion: ...
    def get_manufacturer_info(self, address: int) -> ManufacturerInfo: ...
    def close(self) -> None: ...


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
        #: The port opening whose stack is known to be this bank's.
        self._verified = 0
        #: Discovery in progress: the next position to probe and what answered so far.
        self._probe_next: int | None = None
        self._found: set[int] = set()
        #: Seconds the last values and alarms reads took (what a scrape needs at least).
        self.needed: float | None = None
        #: Seconds one 0x92 exchange took last.
        self._management_time = LATENCY
        #: The most time a bank-wide 0x42 had and did not finish in: with no more time
        #: than that, the modules are read one by one (as many as fit, rather than none).
        self._bank_values_cut = 0.0
        #: Another master's requests counted so far, and when the last one was heard.
        self._foreign_requests = 0
        self._foreign_at = -math.inf

    # -- a scrape ---------------------------------------------------------------------

    def read(self, deadline: Deadline) -> BankReading:
        """Read the bank for a scrape; every request ends by ``deadline``."""
        bank = self.bank
        start = bank.clock()
        before_requests = self.client.stats.requests
        before_failures = dict(self.client.stats.failures)
        reading = bank.begin()
        try:
            with self.client.deadline(deadline):
                self._read(reading, deadline)
        except DeadlinePassed:
            reading.complete = False
            budget = deadline.when - start
            reading.error = f"the scrape deadline ({budget:.2f} s) passed before the bank was read"
            reading.hint = self._hint(budget)
            log.warning(
                "scrape deadline passed; reporting unread modules as down",
                extra=kv(bank=bank.name, read=sum(m.up for m in reading.modules)),
            )
        finally:
            self._count(before_requests, before_failures)
        return bank.finish(reading, bank.clock() - start)

    def _count(self, requests: int, failures: dict[str, int]) -> None:
        stats = self.client.stats
        self.bank.count(
            stats.requests - requests,
            {r: n - failures.get(r, 0) for r, n in stats.failures.items()},
        )
        self._watch_the_line()

    def _watch_the_line(self) -> None:
        """Keep the bank's problems up to date with what the last requests saw: another
        master's requests on the line; the port open again after it could not be."""
        bank, stats = self.bank, self.client.stats
        heard = stats.failures.get(ANOTHER_MASTER, 0)
        if heard > self._foreign_requests:
            self._foreign_requests, self._foreign_at = heard, bank.clock()
            if ANOTHER_MASTER not in bank.problems:  # named by the first request heard
                bank.report(
                    ANOTHER_MASTER,
                    f"another master is polling this bus (requests to "
                    f"0x{stats.foreign_request_address:02X} that this exporter did not send): "
                    "two masters collide on RS485; use --serial.listen-only",
                )
        elif bank.clock() - self._foreign_at >= ANOTHER_MASTER_QUIET:
            bank.report(ANOTHER_MASTER, None)
        if self.client.transport.is_open:
            bank.report("transport", None)

    def _note(self, error: PylontechError) -> None:
        """A failure that says what is wrong with the line, beyond this request."""
        if isinstance(error, TransportError):
            self.bank.report("transport", str(error))
        elif isinstance(error, ConsoleAnswer):
            self.bank.report("console", str(error))

    def _read(self, reading: BankReading, deadline: Deadline) -> None:
        bank = self.bank
        if not self._same_stack() or not bank.known:
            return
        started = bank.clock()
        modules: dict[int, ModuleReading] = {}
        try:
            self._read_values(reading, modules, deadline)
            if not self._same_stack():  # the port was reopened while reading
                modules.clear()
                return
            # Every known module was asked (a module cut off by the deadline was not).
            bank.answered({p for p, m in modules.items() if m.up})
            if modules:
                self._read_alarms(modules)
                self.needed = bank.clock() - started
                self._read_management(modules, deadline)
            if not self._same_stack():
                modules.clear()
        finally:
            reading.modules = [modules[p] for p in sorted(modules)]

    def _same_stack(self) -> bool:
        """Whether what the line answers is this bank's stack. After the port was
        (re)opened (another gateway, a device path reused by another adapter), the
        master's serial number must be the one this bank knows: until it is confirmed
        nothing is served, and another one makes the bank start over."""
        transport = self.client.transport
        if transport.is_open and transport.generation == self._verified:
            return True
        bank = self.bank
        known = bank.modules.get(1)
        if known is None or known.serial_number is None:
            self._verified = transport.generation  # nothing known yet that could differ
            return True
        try:
            serial = self.client.probe(bank.address(1))
        except DeadlinePassed:
            raise
        except PylontechError as error:
            self._note(error)
            serial = None
        if serial is None:
            return False  # nobody there to confirm it: asked again next time
        self._verified = transport.generation
        if serial.serial_number == known.serial_number:
            return True
        bank.forget(
            f"the master's serial number is {serial.serial_number}, "
            f"not {known.serial_number}: another stack answers on this port"
        )
        for policy in self.policies.values():
            policy.forget()
        return False

    def _try(self, command: str, position: int, call: Callable[[], T]) -> T | None:
        """``call()``, or None after a protocol error (logged); the outcome is recorded
        for the module. DeadlinePassed goes through."""
        address = self.bank.address(position)
        try:
            result = call()
        except DeadlinePassed:
            raise
        except PylontechError as error:
            self.bank.last_error = str(error)
            self._note(error)
            self.bank.record(position, command, False)
            log.debug(
                "%s of 0x%02X failed: %s", command, address, error, extra=kv(bank=self.bank.name)
            )
            return None
        self.bank.record(position, command, True)
        self.bank.answered_now(position)
        return result

    def _bank_read(self, what: str, call: Callable[[], list[Any]]) -> dict[int, Any] | None:
        """A bank-wide read mapped by position, or None when it failed or cannot be
        trusted (fewer modules than expected: which one is missing is unknown)."""
        bank = self.bank
        policy = self.policies[what]
        try:
            modules = call()
        except DeadlinePassed:
            raise  # the deadline is no evidence about the firmware
        except PylontechError as error:
            bank.last_error = str(error)
            self._note(error)
            if policy.learning:
                previous = policy.failed()
                log.log(
                    logging.INFO if previous is None else logging.WARNING,
                    "bank-wide query failed; reading module by module",
                    extra=kv(bank=bank.name, command=what, err=str(error)),
                )
            return None
        policy.answered()
        by_position = {module_position(m.address, self.group): m for m in modules}
        unknown = set(by_position) - set(bank.known)
        if unknown:
            # Not taken on trust: a module is known once it answers for itself.
            bank.want_discovery("the bank-wide answer lists more modules than known")
        if len(by_position) < len(bank.known) and policy.learning:
            return None
        return {p: m for p, m in by_position.items() if p in bank.modules}

    def _read_values(
        self, reading: BankReading, modules: dict[int, ModuleReading], deadline: Deadline
    ) -> None:
        bank = self.bank
        policy = self.policies["values"]
        now = bank.wall()

        def keep(position: int, values: ModuleValues) -> None:
            module = modules[position] = bank.reading(position)
            module.values = values
            module.read_at["values"] = now
            module.success["values"] = True

        if policy.should_ask() and (
            policy.mode == "on" or deadline.remaining() > self._bank_values_cut
        ):
            had = deadline.remaining()
            try:
                result = self._bank_read(
                    "values", lambda: list(self.client.get_values_bank(self.group).modules)
                )
            except DeadlinePassed:
                self._bank_values_cut = max(self._bank_values_cut, had)
                raise
            if result is not None:
                reading.bank_query = True
                for position, values in result.items():
                    bank.record(position, "values", True)
                    bank.answered_now(position)
                    keep(position, values)
                return
            if policy.mode == "on":
                return
        try:
            for position in bank.known:
                value = self._try(
                    "values",
                    position,
                    partial(self.client.get_values_single, bank.address(position)),
                )
                if value is not None:
                    keep(position, value)
        finally:
            # Per-module reads fail as well: the bank is down, not the FF query unsupported.
            if not modules and policy.supported is False:
                policy.forget()

    def _read_alarms(self, modules: dict[int, ModuleReading]) -> None:
        bank = self.bank
        policy = self.policies["alarms"]
        now = bank.wall()

        def keep(position: int, alarms: ModuleAlarms) -> None:
            module = modules[position]
            module.alarms = alarms
            module.read_at["alarms"] = now
            module.success["alarms"] = True

        if policy.should_ask():
            result = self._bank_read("alarms", lambda: self.client.get_alarm_info_bank(self.group))
            if result is not None:
                for position, alarms in result.items():
                    bank.record(position, "alarms", True)
                    if position in modules:
                        keep(position, alarms)
                return
            if policy.mode == "on":  # no per-module reads: this scrape has no alarms
                for position, module in modules.items():
                    bank.record(position, "alarms", False)
                    module.success["alarms"] = False
                return
        for position in list(modules):
            alarm = self._try(
                "alarms", position, partial(self.client.get_alarm_info, bank.address(position))
            )
            if alarm is not None:  # kept at once: a deadline later keeps what was read
                keep(position, alarm)

    def _read_management(self, modules: dict[int, ModuleReading], deadline: Deadline) -> None:
        """0x92 of the modules read, oldest first, while an exchange still fits."""
        bank = self.bank
        order = sorted(modules, key=lambda p: bank.memory(p).management_at)
        for position in order:
            if deadline.remaining() < 1.5 * self._management_time:
                return
            module = modules[position]
            if self._refresh_management(position):
                memory = bank.memory(position)
                module.management = memory.management
                module.read_at["management"] = memory.management_wall
            module.success["management"] = bank.memory(position).success["management"]

    def _refresh_management(self, position: int) -> bool:
        started = self.bank.clock()
        info = self._try(
            "management",
            position,
            partial(self.client.get_management_info, self.bank.address(position)),
        )
        if info is None:
            return False
        self._management_time = self.bank.clock() - started
        self.bank.keep_management(position, info)
        return True

    def _hint(self, budget: float) -> str | None:
        """Why a scrape does not fit, and what it needs."""
        modules = len(self.bank.known)
        if not modules:
            return None
        needed = self.needed or self._estimate()
        if needed <= budget:
            return None
        baud = self.client.transport.baudrate
        return (
            f"scrape timeout too short for {modules} modules at {baud} Bd: the bus needs about "
            f"{needed:.1f} s for values and alarms, the scrape allowed {budget:.2f} s; raise "
            f"Prometheus' scrape_timeout to {math.ceil((needed + 0.3) * 10) / 10:.1f} s or more"
        )

    def _estimate(self) -> float:
        """Seconds values and alarms take on the wire (15 cells, 5 temperatures, 4-item
        capacities per module), bank-wide or per module as the firmware answers."""
        modules = len(self.bank.known)
        seconds_per_byte = 10 / float(self.client.transport.baudrate)
        values, alarms = 2 * (2 + 59), 2 * (2 + 27)  # ASCII hex of one module's INFO
        policy = self.policies["values"]
        if policy.mode == "on" or (policy.mode == "auto" and policy.supported is not False):
            exchanges, size = 2, 2 * (22 + 4) + modules * (values + alarms)
        else:
            exchanges, size = 2 * modules, modules * (2 * (22 + 22) + values + alarms)
        return exchanges * LATENCY + size * seconds_per_byte

    # -- between scrapes --------------------------------------------------------------

    def background(self) -> float:
        """One step of background work; the seconds until the next is due.
        DeadlinePassed (a scrape wants the line) goes through."""
        bank = self.bank
        if not self._same_stack():
            return BACKGROUND_RETRY if bank.known else 0.0
        if self._probe_next is not None or bank.discovery_due():
            self._discovery_step()
            return 0.0
        if bank.bank_static_due() and bank.known:
            self._read_bank_static()
            return 0.0
        for position in bank.known:
            if bank.static_due(position):
                self._read_static(position)
                return 0.0
        stale = [
            (memory.management_at, position)
            for position, memory in bank.modules.items()
            if bank.clock() - memory.management_at >= MANAGEMENT_REFRESH
        ]
        if stale:
            self._refresh_management(min(stale)[1])
            return 0.0
        next_due = [
            MANAGEMENT_REFRESH - (bank.clock() - m.management_at) for m in bank.modules.values()
        ]
        return max(0.0, min(next_due, default=MANAGEMENT_REFRESH))

    def _discovery_step(self) -> None:
        """Probe one position. The first silent one beyond every module known ends the
        discovery (one probe, not a failure: an empty address is the answer); the master
        and the modules known get the client's timeout, and their silence is a failure.
        An error code or a bad checksum is a module there; bytes that are not a frame
        (the console shell, another master's traffic) are not."""
        bank = self.bank
        if self._probe_next is None:
            self._probe_next, self._found = 1, set()
            log.debug("discovery starts", extra=kv(bank=bank.name, why=bank.discovery_reason))
        position = self._probe_next
        address = bank.address(position)
        ending = position > max(bank.known, default=1)
        try:
            serial = self.client.probe(address, ending=ending)
        except (ResponseError, ChecksumError) as error:  # somebody is there
            log.debug("0x%02X answers discovery with %s", address, error, extra=kv(bank=bank.name))
            serial, present = None, True
        except FrameError as error:
            log.debug("0x%02X: no frame (%s)", address, error, extra=kv(bank=bank.name))
            self._note(error)
            serial, present = None, False
        else:
            present = serial is not None
            if present:
                bank.report("console", None)
        if present:
            self._found.add(position)
            memory = bank.memory(position)
            if serial is not None:
                memory.serial_number = serial.serial_number
            memory.last_answer = bank.clock()
        last = position >= 16 or (not present and position > max(bank.known, default=0))
        if last:
            self._probe_next = None
            bank.discovered(self._found)
            for policy in self.policies.values():
                policy.forget()  # re-check what the firmware answers after a discovery
        else:
            self._probe_next = position + 1

    def _read_bank_static(self) -> None:
        bank = self.bank
        master = bank.address(1)
        maker = self._try("manufacturer", 1, partial(self.client.get_manufacturer_info, master))
        if maker is not None:
            bank.manufacturer = maker
            version = self.client.versions.get(master)
            bank.protocol_version = (
                ProtocolVersion.from_ver(version) if version is not None else None
            )
        bank.bank_static_at = bank.clock()  # failed or not: tried again at the next refresh

    def _read_static(self, position: int) -> None:
        """One part of a module's static data (0x96, 0x47, and 0x93 where no discovery
        reads it), one request per step; the old values stay until the new ones are read."""
        bank = self.bank
        memory = bank.memory(position)
        if not memory.static_pending:
            memory.static_pending = (["serial"] if bank.config.modules else []) + [
                "software",
                "parameters",
            ]
        part = memory.static_pending[0]
        address = bank.address(position)
        if part == "serial":
            serial = self._try(
                part, position, partial(self.client.get_module_serial_number, address)
            )
            if serial is not None:
                memory.serial_number = serial.serial_number
        elif part == "software":
            version = self._try(part, position, partial(self.client.get_software_version, address))
            if version is not None:
                memory.software_version = version.mainline_version
        else:
            parameters = self._try(
                part, position, partial(self.client.get_system_parameters, address)
            )
            if parameters is not None:
                memory.parameters = parameters
        memory.static_pending.pop(0)
        if not memory.static_pending:
            memory.static_at = bank.clock()
            memory.static_wall = bank.wall()


ClientFactory = Callable[[SerialSettings], Client]


def default_client(settings: SerialSettings) -> Client:
    from .client import Pylontech

    return Pylontech(
        settings.port,
        settings.baudrate,
        timeout=settings.timeout,
        command_gap=settings.command_gap,
    )


class Rs485Source:
    """The banks of one RS485 port, read through one client (the line's worker thread is
    the only one that uses it)."""

    def __init__(self, banks: list[Bank], client_factory: ClientFactory = default_client) -> None:
        self.banks = banks
        self.client = client_factory(banks[0].config.serial)
        self.readers = [BankReader(bank, self.client) for bank in banks]

    def scrape(self, deadline: Deadline) -> list[BankReading]:
        return [reader.read(deadline) for reader in self.readers]

    def background(self, deadline: Deadline) -> float:
        pauses = []
        for reader in self.readers:
            before_requests = self.client.stats.requests
            before_failures = dict(self.client.stats.failures)
            try:
                with self.client.deadline(deadline):
                    pause = reader.background()
            except DeadlinePassed:
                return 0.0  # a scrape wants the line: back after it
            except TransportError as error:
                reader._note(error)  # warned once, shown in the bank's state
                log.debug("background work paused: %s", error, extra=kv(bank=reader.bank.name))
                return BACKGROUND_RETRY
            finally:
                reader._count(before_requests, before_failures)
            if pause == 0.0:
                return 0.0  # one step done; the next one after a look at the scrapes
            pauses.append(pause)
        return min(pauses, default=MANAGEMENT_REFRESH)

    def close(self) -> None:
        self.client.close()
