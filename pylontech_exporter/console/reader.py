"""The console read plan: what the exporter asks the ``pylon>`` shell, on a scrape and between.

On each scrape, in this order until the deadline:

1. after the port was (re)opened: ``info N`` of the lowest battery that answered and
   whose barcode is known (the next if it fails), to be sure the same stack is on the
   line (its barcode must be the one known);
2. ``pwr``: every battery of the stack in one command. A battery printed ``Absent``, or
   not printed, is down; the others are up with their voltage, current, state of charge
   (``Coulomb`` % / 100), temperatures and states. ``pwr`` is the stack's own listing:
   a battery that appears is known at once (unless ``modules`` fixes the count);
3. ``bat N`` of every battery up, the one read longest ago first, while one more fits in
   the time left (measured: about 2 kB each, 0.17 s at 115200 baud): its cells. A
   failing ``bat N`` (an error answer, a lost answer) leaves the battery up with its
   ``pwr`` values; only its cells are missing this time.

Between scrapes, one command per step, giving way to any scrape: ``pwr`` while the
modules are being discovered, ``info`` (the console's own module: the stack's identity),
then per battery ``info N`` (barcode, firmware, capacity), ``stat N`` (lifetime counters,
cycles, state of health) and ``soh N`` (per-cell state of health); at discovery and
hourly, the old values kept until new ones are read, each exported with its read time,
and no longer once older than STATIC_MAX_AGE refresh periods (refreshes kept failing).
The capacity of ``info N``'s specification turns the printed state of charge into Ah;
until it is known the capacities are not exported (the state of charge is).

What is remembered lives in the source-neutral :class:`~pylontech_exporter.bank.Bank`,
and what only the console knows in :class:`ConsoleMemory`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from ..bank import BACKGROUND_RETRY, Bank
from ..config import SerialSettings
from ..deadline import Deadline
from ..errors import DeadlinePassed, PylontechError, TransportError
from ..logging_setup import kv
from ..models import (
    AlarmState,
    BaseState,
    CellDetail,
    CellHealth,
    ManufacturerInfo,
    ModuleDetail,
    ModuleIdentity,
    ModuleStatistics,
    ModuleValues,
    worst_alarm,
)
from ..snapshot import BankReading, ModuleReading
from . import tables
from .shell import Answer, CommandStats, ConsoleShell

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")

#: Seconds to the first byte of an answer, for estimates until measured.
LATENCY = 0.08
#: Bytes of a ``bat N`` answer (16 cells; 15: 1.97 kB, as recorded) and of a 16-row
#: ``pwr`` of the widest layout (23 columns), for estimates until measured (docs/console.md).
BAT_BYTES = 2100
PWR_BYTES = 3600
#: A ``bat N`` is started only while this many times its last duration is left.
FIT_MARGIN = 1.2
#: ``info N``/``stat N``/``soh N`` data older than this many static refresh periods (the
#: refreshes since failed) is not exported.
STATIC_MAX_AGE = 2

#: State words -> the contract's states; any other word is ``fault`` (not normal: the
#: alerts on abnormal states fire rather than stay silent), logged once.
STATE_WORDS = {"normal": AlarmState.NORMAL, "low": AlarmState.LOW, "high": AlarmState.HIGH}
BASE_WORDS = {
    "charge": BaseState.CHARGE,
    "dischg": BaseState.DISCHARGE,
    "discharge": BaseState.DISCHARGE,
    "idle": BaseState.IDLE,
    "balance": BaseState.BALANCE,
}
_unknown_words: set[str] = set()


def alarm_state(word: str | None) -> AlarmState | None:
    """A state word of the console as a contract state; one it does not know is a fault."""
    return _known(word, STATE_WORDS, AlarmState.FAULT, "state")


def base_state(word: str | None) -> BaseState | None:
    """A base state word of the console; one it does not know is ``other``."""
    return _known(word, BASE_WORDS, BaseState.OTHER, "base state")


def _known(word: str | None, words: Mapping[str, S], unknown: S, kind: str) -> S | None:
    """``words[word]`` (case-insensitive; None for None), else ``unknown``, the word logged
    the first time it is seen."""
    if word is None:
        return None
    state = words.get(word.lower())
    if state is None:
        _first_time(word, kind)
        return unknown
    return state


def _first_time(word: str, kind: str) -> None:
    if word not in _unknown_words:
        _unknown_words.add(word)
        log.info(
            "the console prints a %s word this exporter does not know", kind, extra=kv(word=word)
        )


class Shell(Protocol):
    """What the read plan needs of :class:`~pylontech_exporter.console.shell.ConsoleShell`."""

    stats: CommandStats
    transport: Any

    def run(self, command: str, deadline: Deadline | None = None) -> Answer: ...
    def close(self) -> None: ...


ShellFactory = Callable[[SerialSettings], Shell]


def default_shell(settings: SerialSettings) -> Shell:
    return ConsoleShell(
        settings.port,
        settings.baudrate,
        timeout=settings.timeout,
        command_gap=settings.command_gap,
        wakeup=settings.console_wakeup,
    )


@dataclass
class ConsoleMemory:
    """What is kept of one battery between scrapes: what only the console reports.
    Walls are ``time.time()``, the ``_at`` values ``clock()`` values."""

    identity: ModuleIdentity | None = None
    identity_wall: float = 0.0
    identity_at: float = -math.inf
    statistics: ModuleStatistics | None = None
    statistics_wall: float = 0.0
    statistics_at: float = -math.inf
    health: tuple[CellHealth, ...] | None = None
    health_wall: float = 0.0
    health_at: float = -math.inf
    #: When its cells were last read (the oldest go first when not all fit).
    cells_at: float = -math.inf


class ConsoleSource:
    """The bank of one console port (a console shows one stack: one bank)."""

    def __init__(self, banks: list[Bank], shell_factory: ShellFactory = default_shell) -> None:
        if len(banks) != 1:
            raise ValueError("a console port shows one stack: configure one bank on it")
        self.banks = banks
        self.bank = banks[0]
        self.shell = shell_factory(self.bank.config.serial)
        self.memory: dict[int, ConsoleMemory] = {}
        #: Rows and fields that did not parse, per command (cumulative).
        self.unparsed: Counter[str] = Counter()
        baud = float(self.shell.transport.baudrate)
        #: What one ``bat N`` takes: measured by the last one read, else estimated.
        self._bat_estimate = self._bat_seconds = LATENCY + BAT_BYTES * 10 / baud
        self._pwr_seconds = LATENCY + PWR_BYTES * 10 / baud
        #: The port opening whose stack is known to be this bank's.
        self._verified = -1

    # -- a scrape ---------------------------------------------------------------------

    def scrape(self, deadline: Deadline) -> list[BankReading]:
        bank = self.bank
        start = bank.clock()
        before = self._stats()
        reading = bank.begin()
        rows: dict[int, tables.PowerRow] = {}
        cells: dict[int, tables.BatteryTable] = {}
        try:
            self._read(reading, rows, cells, deadline, start)
        except DeadlinePassed:
            reading.complete = False
            budget = deadline.when - start
            reading.error = f"the scrape deadline ({budget:.2f} s) passed before the bank was read"
            reading.hint = self._hint(budget)
            log.warning(
                "scrape deadline passed; what was not read is not exported",
                extra=kv(bank=bank.name, read=len(rows)),
            )
        except PylontechError as error:  # pwr failed: no battery is up
            bank.last_error = str(error)
            self._note(error)
            log.debug("pwr failed: %s", error, extra=kv(bank=bank.name))
        finally:
            now = bank.wall()
            reading.modules = [self._module(p, rows[p], cells.get(p), now) for p in sorted(rows)]
            self._count(before)
        reading.unparsed = dict(self.unparsed)
        return [bank.finish(reading, bank.clock() - start)]

    def _read(
        self,
        reading: BankReading,
        rows: dict[int, tables.PowerRow],
        cells: dict[int, tables.BatteryTable],
        deadline: Deadline,
        start: float,
    ) -> None:
        """The scrape that began at ``start`` (a ``clock()`` value)."""
        bank = self.bank
        if not self._same_stack(deadline):
            return
        pwr_start = bank.clock()
        table = self._pwr(deadline)
        self._pwr_seconds = bank.clock() - pwr_start
        rows.update(self._listed(table))
        order = sorted(rows, key=lambda p: self._memory(p).cells_at)
        for position in order:
            if deadline.remaining() < FIT_MARGIN * self._bat_seconds:
                if not cells:
                    # Not even one fits: one slow answer must not stop the cells for good.
                    self._bat_seconds = self._bat_estimate
                reading.complete = False
                reading.hint = self._hint(deadline.when - start)
                log.info(
                    "not every bat N fits in the scrape; the oldest are read first",
                    extra=kv(bank=bank.name, read=len(cells), batteries=len(rows)),
                )
                return
            started = bank.clock()
            found = self._try("bat", position, f"bat {position}", tables.parse_bat, deadline)
            if found is not None:
                cells[position] = found
                self._memory(position).cells_at = bank.clock()
                self._bat_seconds = bank.clock() - started

    def _pwr(self, deadline: Deadline) -> tables.PowerTable:
        table = tables.parse_pwr(self.shell.run("pwr", deadline).lines)
        self._report("pwr", table.problems)
        return table.checked()

    def _listed(self, table: tables.PowerTable) -> dict[int, tables.PowerRow]:
        """The batteries ``pwr`` lists as present, known from now on."""
        bank = self.bank
        present = {r.index: r for r in table.present}
        if bank.config.modules:
            present = {p: r for p, r in present.items() if p <= bank.config.modules}
        else:
            bank.discovered(present)
        for position in bank.known:
            bank.record(position, "pwr", position in present)
        bank.answered(set(present))
        for gone in set(self.memory) - set(bank.modules):
            del self.memory[gone]
        return present

    def _same_stack(self, deadline: Deadline) -> bool:
        """After the port was (re)opened a battery's barcode must be the one known: until
        one is confirmed nothing is served, and another one makes the bank start over
        (another stack answers on this port). Asked: the lowest battery with a known
        barcode that answered last time (the others after them), the next one if it fails
        (switched off: ``Target device is not present``)."""
        transport = self.shell.transport
        if transport.is_open and transport.generation == self._verified:
            return True
        bank = self.bank
        barcodes = {p: m.serial_number for p, m in bank.modules.items() if m.serial_number}
        if not barcodes:
            self._verified = transport.generation
            return True
        for position in sorted(barcodes, key=lambda p: (p not in bank.answering, p)):
            line = f"info {position}"
            info = self._try("info", position, line, tables.parse_info, deadline)
            if info is None:
                continue
            self._verified = transport.generation
            barcode, known = info.identity().serial_number, barcodes[position]
            if barcode == known:
                return True
            bank.forget(
                f"battery {position}'s barcode is {barcode}, not {known}: another stack "
                "answers on this port"
            )
            self.memory.clear()
            return False
        return False

    def _try(
        self,
        command: str,
        position: int | None,
        line: str,
        parse: Callable[[Sequence[str]], T],
        deadline: Deadline,
    ) -> T | None:
        """``line`` parsed, or None after a failed command (logged); the outcome is
        recorded for the battery. DeadlinePassed goes through."""
        bank = self.bank
        try:
            answer = self.shell.run(line, deadline)
        except DeadlinePassed:
            raise
        except PylontechError as error:
            bank.last_error = str(error)
            if position is not None:
                bank.record(position, command, False)
            log.debug("%s failed: %s", line, error, extra=kv(bank=bank.name))
            return None
        result = parse(answer.lines)
        self._report(command, getattr(result, "problems", ()))
        if position is not None:
            bank.record(position, command, True)
            bank.answered_now(position)
        return result

    def _report(self, command: str, problems: Sequence[str]) -> None:
        if problems:
            self.unparsed[command] += len(problems)
            log.warning(
                "skipped what did not parse in a console answer",
                extra=kv(
                    bank=self.bank.name, command=command, count=len(problems), first=problems[0]
                ),
            )

    def _memory(self, position: int) -> ConsoleMemory:
        return self.memory.setdefault(position, ConsoleMemory())

    # -- from tables to readings --------------------------------------------------------

    def _module(
        self,
        position: int,
        row: tables.PowerRow,
        cells: tables.BatteryTable | None,
        now: float,
    ) -> ModuleReading:
        bank = self.bank
        module = bank.reading(position)
        memory = self._memory(position)
        oldest = bank.clock() - STATIC_MAX_AGE * bank.static_refresh
        module.identity = _fresh(memory.identity, memory.identity_at, oldest)
        module.statistics = _fresh(memory.statistics, memory.statistics_at, oldest)
        module.cell_health = _fresh(memory.health, memory.health_at, oldest)
        module.values = self._values(position, row, cells, module.identity, module.statistics)
        module.detail = _detail(row, cells)
        module.read_at["values"] = now
        if cells is not None:
            module.read_at["cells"] = now
        for data, wall, known in (
            ("info", memory.identity_wall, module.identity),
            ("stat", memory.statistics_wall, module.statistics),
            ("soh", memory.health_wall, module.cell_health),
        ):
            if known is not None:
                module.read_at[data] = wall
        return module

    def _values(
        self,
        position: int,
        row: tables.PowerRow,
        cells: tables.BatteryTable | None,
        identity: ModuleIdentity | None,
        stats: ModuleStatistics | None,
    ) -> ModuleValues:
        capacity = identity.capacity if identity and identity.capacity else math.nan
        soc = row.state_of_charge / 100 if row.state_of_charge is not None else None
        sensors = [(n, t) for n, t in (("bms", row.temperature), ("mosfet", row.mos_temperature))]
        read = [c for c in (cells.cells if cells else ()) if c.voltage is not None]
        cycles = stats.cycles if stats is not None else None
        return ModuleValues(
            address=self.bank.address(position),
            cell_voltages=tuple(c.voltage for c in read if c.voltage is not None),
            temperatures=tuple(t for _, t in sensors if t is not None),
            current=_or_nan(row.current),
            voltage=_or_nan(row.voltage),
            remaining_capacity=soc * capacity if soc is not None else math.nan,
            total_capacity=capacity,
            cycle_number=cycles or 0,
            cell_numbers=tuple(c.cell for c in read),
            sensors=tuple(n for n, t in sensors if t is not None),
            printed_state_of_charge=soc,
            cycles_known=cycles is not None,
        )

    def _hint(self, budget: float) -> str | None:
        """Why a scrape does not fit, and what it needs."""
        batteries = len(self.bank.known)
        if not batteries:
            return None
        needed = self._pwr_seconds + batteries * self._bat_seconds
        if needed <= budget:
            return None
        baud = self.shell.transport.baudrate
        return (
            f"scrape timeout too short for {batteries} batteries on the console at {baud} Bd: "
            f"pwr and bat N of each need about {needed:.1f} s, the scrape allowed "
            f"{budget:.2f} s; raise Prometheus' scrape_timeout to "
            f"{math.ceil((needed + 0.3) * 10) / 10:.1f} s or more"
        )

    # -- between scrapes --------------------------------------------------------------

    def background(self, deadline: Deadline) -> float:
        """One step: discovery, the stack's identity, a battery's info, stat or soh."""
        bank = self.bank
        before = self._stats()
        try:
            if not self._same_stack(deadline):
                return BACKGROUND_RETRY
            if bank.discovery_due():
                self._discover(deadline)
                return 0.0
            if bank.known and bank.bank_static_due():
                self._read_bank_static(deadline)
                return 0.0
            for position in bank.known:
                if bank.static_due(position):
                    self._read_static(position, deadline)
                    return 0.0
        except DeadlinePassed:
            return 0.0  # a scrape wants the line: back after it
        except TransportError as error:
            self._note(error)
            log.debug("background work paused: %s", error, extra=kv(bank=bank.name))
            return BACKGROUND_RETRY
        finally:
            self._count(before)
        due = [
            bank.static_refresh - (bank.clock() - (m.static_at or 0.0))
            for m in bank.modules.values()
        ]
        return max(0.0, min(due, default=bank.static_refresh))

    def _discover(self, deadline: Deadline) -> None:
        try:
            self._listed(self._pwr(deadline))
        except (DeadlinePassed, TransportError):
            raise  # the port cannot be opened: still discovering, tried again in a while
        except PylontechError as error:
            self.bank.last_error = str(error)
            if not self.bank.config.modules:
                self.bank.discovered(set())  # nothing answered: tried again in a while

    def _read_bank_static(self, deadline: Deadline) -> None:
        bank = self.bank
        info = self._try("info", None, "info", tables.parse_info, deadline)
        if info is not None:
            identity = info.identity()
            bank.manufacturer = ManufacturerInfo(
                device_name=identity.device_name,
                software_version=identity.main_software_version,
                manufacturer_name=identity.manufacturer,
            )
        bank.bank_static_at = bank.clock()  # failed or not: tried again at the next refresh

    def _read_static(self, position: int, deadline: Deadline) -> None:
        """One of ``info N``, ``stat N``, ``soh N``; the old values stay until new ones
        are read."""
        bank = self.bank
        state = bank.memory(position)
        memory = self._memory(position)
        if not state.static_pending:
            state.static_pending = ["info", "stat", "soh"]
        part = state.static_pending[0]
        line = f"{part} {position}"
        wall, at = bank.wall(), bank.clock()
        if part == "info":
            info = self._try(part, position, line, tables.parse_info, deadline)
            if info is not None:
                memory.identity, memory.identity_wall = info.identity(), wall
                memory.identity_at = at
                state.serial_number = memory.identity.serial_number or None
                state.software_version = memory.identity.main_software_version or None
        elif part == "stat":
            stat = self._try(part, position, line, tables.parse_stat, deadline)
            if stat is not None:
                memory.statistics, memory.statistics_wall = stat.statistics(), wall
                memory.statistics_at = at
        else:
            health = self._try(part, position, line, tables.parse_soh, deadline)
            if health is not None and health.cells:
                memory.health, memory.health_wall = health.cells, wall
                memory.health_at = at
        state.static_pending.pop(0)
        if not state.static_pending:
            state.static_at = bank.clock()
            state.static_wall = wall

    # -- counting -----------------------------------------------------------------------

    def _stats(self) -> tuple[int, dict[str, int]]:
        return self.shell.stats.requests, dict(self.shell.stats.failures)

    def _count(self, before: tuple[int, dict[str, int]]) -> None:
        requests, failures = before
        stats = self.shell.stats
        self.bank.count(
            stats.requests - requests,
            {r: n - failures.get(r, 0) for r, n in stats.failures.items()},
        )
        if self.shell.transport.is_open:
            self.bank.report("transport", None)

    def _note(self, error: PylontechError) -> None:
        """The port that cannot be opened: warned once, shown in the bank's state."""
        if isinstance(error, TransportError):
            self.bank.report("transport", str(error))

    def close(self) -> None:
        self.shell.close()


def _fresh(value: T | None, read_at: float, oldest: float) -> T | None:
    """``value`` unless it was read before ``oldest``."""
    return value if read_at >= oldest else None


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _detail(row: tables.PowerRow, cells: tables.BatteryTable | None) -> ModuleDetail:
    measurements = {
        "module_voltage": alarm_state(row.voltage_state),
        "current": alarm_state(row.current_state),
        "cell_voltage": alarm_state(row.cell_voltage_state),
        "cell_temperature": alarm_state(row.cell_temperature_state),
        "system_alarm": alarm_state(row.system_alarm_state),
    }
    temperatures = {
        "bms": alarm_state(row.temperature_state),
        "mosfet": alarm_state(row.mos_temperature_state),
    }
    return ModuleDetail(
        base_state=base_state(row.base_state),
        measurement_states={k: v for k, v in measurements.items() if v is not None},
        temperature_states={k: v for k, v in temperatures.items() if v is not None},
        cell_voltage_min=row.cell_voltage_min,
        cell_voltage_max=row.cell_voltage_max,
        cell_temperature_min=row.cell_temperature_min,
        cell_temperature_max=row.cell_temperature_max,
        cells=tuple(_cell(c) for c in cells.cells) if cells else (),
    )


def _cell(row: tables.CellRow) -> CellDetail:
    return CellDetail(
        cell=row.cell,
        temperature=row.temperature,
        voltage_state=alarm_state(row.voltage_state),
        temperature_state=worst_alarm(
            (
                alarm_state(row.temperature_state),
                alarm_state(row.charge_temperature_state),
                alarm_state(row.discharge_temperature_state),
            )
        ),
        state_of_charge=row.state_of_charge / 100 if row.state_of_charge is not None else None,
        remaining_capacity=row.charge / 1000 if row.charge is not None else None,
        balancing=row.balancing,
    )
