"""The RS232 console: the virtual stack through a ``pylon>`` shell. Lines in, text out; no I/O.

It prints what real firmware prints, in each recorded layout (docs/console.md lists what
is recorded and what is our guess): the echo of what was typed with its terminator,
``\\r@``, table rows ending ``\\r\\r\\n`` (the last ``\\r\\n``), key/value lines as
``\\r<text>\\r\\n``, ``Command completed successfully``, ``$$`` and the prompt. Every CR
and every LF is an Enter; an empty line gets a new prompt. ``pwr`` lists 16 or 8 rows
with ``Absent`` rows in the old 16-token pattern (or, on a US3000D, the present batteries
only); errors answer unknown commands, bad arguments and batteries out of range. The
firmware (:data:`FIRMWARES`) is chosen by name or by the master's model
(:data:`MODEL_FIRMWARE`).

Values come from the stack's state at the console's resolution: mV, mA, m°C in steps of
100 (0.1 °C), SOC in whole percent. What the stack does not model is the console's own:
per-module lifetime counters and state of health, per-cell SOH counts (``extras``, set
them in tests), balancing (a cell 20 mV or more above the lowest while charging).

Faults of the stack's plan apply (``address`` = the module the command names, the master
for ``pwr``; ``command`` = the command word): ``drop`` (silence), ``rtn`` (an error
answer), ``truncate``, ``prompt`` (no prompt after ``$$``), ``junk``, ``nul``,
``stale``, ``delay``, ``trickle`` (slow bytes) and ``vanish`` (the battery is Absent).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..models import AlarmState, ModuleAlarms, module_address, worst_alarm
from .battery import BatteryStack, VirtualModule
from .faults import FaultKind
from .responder import SILENCE, Reply

#: A cell this far above the lowest is balanced while charging.
BALANCE_SPREAD = 0.02
#: Bytes per second of a ``trickle`` fault without a size.
TRICKLE_RATE = 100
#: The longest line the shell takes (longer input is dropped).
MAX_LINE = 256
#: Typed lines :attr:`ConsoleResponder.received` keeps (the newest; it runs inside the
#: exporter under ``--simulate``, so it must not grow per scrape).
RECEIVED_KEPT = 1000

_CONTENT = frozenset({FaultKind.VANISH})
_WIRE = frozenset(
    {
        FaultKind.DROP,
        FaultKind.RTN,
        FaultKind.TRUNCATE,
        FaultKind.PROMPT,
        FaultKind.JUNK,
        FaultKind.NUL,
        FaultKind.STALE,
        FaultKind.DELAY,
        FaultKind.TRICKLE,
    }
)


@dataclass(frozen=True)
class Firmware:
    """One console layout. ``pwr``: ``16`` (old), ``18`` (MosTempr), ``22`` (US3000D,
    ``*.Id``), ``23`` (SysAlarm.St) or ``pytes`` (Barcode, DevType); ``bat``: ``old`` (SOC
    and mAh under one Coulomb header, no BAL), ``current``, ``us3000d`` (DTemp./CTemp.
    State) or ``pytes`` (no Curr)."""

    name: str
    version: str
    pwr: str
    bat: str
    #: Rows of ``pwr`` (None: the present batteries only).
    rows: int | None = 16
    prompt: str = "pylon>"
    #: ``stat`` counter order ``COC, DOC, COC2, DOC2`` (old) or ``COC, COC2, DOC, DOC2``.
    stat_old_order: bool = False
    #: ``stat`` prints ``SOH``.
    stat_soh: bool = True
    #: What ``stat`` ends with (the US3000D prints ``successfully!``).
    stat_completed: str = "Command completed successfully"
    #: ``info N`` and ``stat N`` answered (the US3000D rejects them).
    indexed_info: bool = True
    #: ``soh`` prints an 8-digit status word and no count (Pytes).
    soh_status_only: bool = False
    #: The invalid-command wording (the US3000D adds ``!``).
    invalid: str = "Invalid command or fail to excute."
    manufacturer: str = "Pylon"


FIRMWARES: dict[str, Firmware] = {
    f.name: f
    for f in (
        Firmware(
            "B66.6", "B66.6", pwr="16", bat="old", rows=8, stat_old_order=True, stat_soh=False
        ),
        Firmware("B67.9", "B67.9.0", pwr="18", bat="current", stat_old_order=True, stat_soh=False),
        Firmware("B68.2", "B68.2.0.0", pwr="18", bat="current", stat_soh=False),
        Firmware("B69.16", "B69.16.0.0", pwr="18", bat="current"),
        Firmware(
            "B1.4.0.0",
            "B1.4.0.0",
            pwr="22",
            bat="us3000d",
            rows=None,
            stat_completed="Command completed successfully!",
            indexed_info=False,
            invalid="Invalid command or fail to excute!",
        ),
        Firmware("B69.26", "B69.26.0.0", pwr="23", bat="current"),
        Firmware(
            "pytes-4850",
            "SPBMS15SPH2111V1.3.19",
            pwr="16",
            bat="old",
            rows=8,
            prompt="PYTES>",
            stat_old_order=True,
            stat_soh=False,
            manufacturer="PYTES",
        ),
        Firmware(
            "pytes-48100",
            "SPBMS16SRP2304V1.10.7.1C",
            pwr="pytes",
            bat="pytes",
            prompt="PYTES>",
            stat_soh=False,
            soh_status_only=True,
            manufacturer="PYTES",
        ),
    )
}

#: The firmware each model's console speaks unless told (best guess: one recorded
#: firmware of the model, the newest layout for the 16-cell US5000).
MODEL_FIRMWARE = {
    "US2000B-Plus": "B66.6",
    "US2000C": "B68.2",
    "US3000": "B66.6",
    "US3000C": "B69.16",
    "US5000": "B69.16",
    "UP2500": "B69.16",
    "US5000-16S": "B69.26",
}


def get_firmware(name: str) -> Firmware:
    """The firmware ``name``; KeyError listing the known ones."""
    try:
        return FIRMWARES[name]
    except KeyError:
        raise KeyError(f"unknown firmware {name!r}; known: {', '.join(FIRMWARES)}") from None


# --- the headers, as printed (trailing spaces included) --------------------------------------

_PWR_16 = (
    "Power Volt   Curr   Tempr  Tlow   Thigh  Vlow   Vhigh  Base.St  Volt.St  Curr.St  "
    "Temp.St  Coulomb  Time                 B.V.St   B.T.St  "
)
PWR_HEADERS = {
    "16": _PWR_16,
    "18": _PWR_16 + " MosTempr M.T.St  ",
    "22": "Power Volt   Curr   Tempr  Tlow   Tlow.Id  Thigh  Thigh.Id Vlow   Vlow.Id  Vhigh  "
    "Vhigh.Id Base.St  Volt.St  Curr.St  Temp.St  Coulomb  Time                 B.V.St   "
    "B.T.St   MosTempr M.T.St  ",
    "23": "Power Volt   Curr   Tempr  Tlow   Tlow.Id  Thigh  Thigh.Id Vlow   Vlow.Id  Vhigh  "
    "Vhigh.Id Base.St  Volt.St  Curr.St  Temp.St  Coulomb  Time                 B.V.St   "
    "B.T.St  MosTempr M.T.St   SysAlarm.St ",
    "pytes": _PWR_16 + " Barcode              DevType             ",
}
_BAT_STATES = "Base State   Volt. State  Curr. State  Temp. State  "
BAT_HEADERS = {
    "old": "Battery  Volt     Curr     Tempr    " + _BAT_STATES + "Coulomb     ",
    "current": "Battery  Volt     Curr     Tempr    "
    + _BAT_STATES
    + "SOC          Coulomb      BAL         ",
    "us3000d": "Battery  Volt     Curr     Tempr    Base State   Volt. State  Curr. State  "
    "DTemp. State CTemp. State SOC          Coulomb          BAL",
    "pytes": "Battery  Volt     Tempr    " + _BAT_STATES + "Coulomb     ",
}
ABSENT = (
    "-      " * 7 + "Absent   " + "-        " * 4 + "-                    " + "-        -       "
)
_PYTES_ABSENT = "-                    -                   "

#: Words of the states, as the simulator prints them (best guess beyond Normal).
WORDS = {
    AlarmState.NORMAL: "Normal",
    AlarmState.LOW: "Low",
    AlarmState.HIGH: "High",
    AlarmState.FAULT: "Fault",
}

USAGE = {
    "bat": "Battery data show - bat [pwr][index]",
    "pwr": "Power data show - pwr [index]",
    "stat": "Statistic data show - stat",
    "info": "Device infomation - info",
    "soh": "State of health - soh [addr]",
    "time": "Time - time [year] [month] [day] [hour] [minute] [second]",
}
HELP_PAGES = (
    [
        "Local command:",
        *(
            f"{name:<9}{text}"
            for name, text in (
                ("bat", USAGE["bat"]),
                ("help", "Help [cmd]"),
                ("info", USAGE["info"]),
                ("pwr", USAGE["pwr"]),
                ("soh", USAGE["soh"]),
                ("stat", USAGE["stat"]),
                ("time", USAGE["time"]),
            )
        ),
        "*" * 58,
    ],
    ["Remote command:", "pwr      Power data show - pwr [index]"],
)
PAGER_LINE = "Press [Enter] to be continued,other key to exit"

#: ``stat`` counters beyond what the stack models, in the order printed (US5000 B69.16).
_STAT_HEAD = ("Data Items", "HisData Items", "Charge Cnt.", "Discharge Cnt.", "Charge Times")
_STAT_TAIL = (
    "COCA Times",
    "DOCA Times",
    "SC Times",
    "Bat OV Times",
    "Bat HV Times",
    "Bat LV Times",
    "Bat UV Times",
    "Bat SLP Times",
    "Pwr OV Times",
    "Pwr HV Times",
    "Pwr LV Times",
    "Pwr UV Times",
    "Pwr SLP Times",
    "COT Times",
    "CUT Times",
    "DOT Times",
    "DUT Times",
    "CHT Times",
    "CLT Times",
    "DHT Times",
    "DLT Times",
    "Shut Times",
    "Reset Times",
    "RV Times",
    "Input OV Times",
    "SOH Times",
    "BMICERR Times",
)
_STAT_LIFE = ("HT@0.5C Cnt", "LT@0.5C Cnt", "HT Cnt", "LT Cnt", "LV Cnt", "LifeWarn Times")
STAT_COUNTERS = (
    *_STAT_HEAD,
    "Status Cnt.",
    "Idle Times",
    "COC Times",
    "COC2 Times",
    "DOC Times",
    "DOC2 Times",
    *_STAT_TAIL,
    *_STAT_LIFE,
    "LifeAlarm Times",
)


@dataclass
class ConsoleExtras:
    """What the console reports of a module that the stack does not model."""

    #: ``stat`` counter (printed key) -> count.
    counters: dict[str, int] = field(default_factory=dict)
    #: Percent, printed by ``stat`` on B69+ firmware.
    state_of_health: int = 100
    #: Per cell (0-based): ``SOHCount`` of ``soh N``.
    soh_counts: dict[int, int] = field(default_factory=dict)


class LineSplitter:
    """Cuts what is typed into lines: every CR and every LF is an Enter, so ``pwr\\r\\n`` is
    the line ``pwr\\r`` and an empty line ``\\n``. Each line keeps its terminator."""

    max_frame_bytes = MAX_LINE

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        for byte in data:
            self._buffer.append(byte)
            if byte in b"\r\n":
                lines.append(bytes(self._buffer))
                self._buffer.clear()
            elif len(self._buffer) > MAX_LINE:
                self._buffer.clear()
        return lines

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def clear(self) -> None:
        self._buffer.clear()


def _milli(value: float) -> int:
    return round(value * 1000)


def _mc(celsius: float) -> int:
    """m°C as the console prints it: in steps of 0.1 °C."""
    return round(celsius * 10) * 100


class ConsoleResponder:
    """The stack's console: one typed line in, what the shell prints out."""

    #: The fault kinds it applies.
    HONOURED: ClassVar[frozenset[FaultKind]] = _CONTENT | _WIRE

    def __init__(
        self,
        stack: BatteryStack,
        *,
        firmware: str | Firmware | None = None,
        group: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stack = stack
        self.group = stack.groups[0] if group is None else group
        master = stack.master(self.group)
        if firmware is None:
            firmware = MODEL_FIRMWARE.get(master.model.name, "B69.16")
        self.firmware = get_firmware(firmware) if isinstance(firmware, str) else firmware
        self.clock = clock
        #: The last :data:`RECEIVED_KEPT` lines typed, as received (terminator included).
        self.received: deque[bytes] = deque(maxlen=RECEIVED_KEPT)
        #: The last answer sent without faults (what a ``stale`` fault repeats).
        self.last_reply: bytes | None = None
        rng = random.Random(f"console-{stack.seed}")
        self.extras: dict[int, ConsoleExtras] = {
            m.address: ConsoleExtras(
                counters={name: rng.randrange(0, 50) for name in STAT_COUNTERS},
                state_of_health=rng.randrange(90, 101),
            )
            for m in stack.modules
            if m.group == self.group
        }
        self._pages: list[list[str]] = []

    @property
    def prompt(self) -> str:
        return self.firmware.prompt

    def framer(self) -> LineSplitter:
        return LineSplitter()

    def handle(self, request: bytes) -> Reply:
        with self.stack.lock:
            self.received.append(request)
            return self._handle(request)

    def respond(self, request: bytes) -> bytes | None:
        """Like :meth:`handle`, the bytes only."""
        return self.handle(request).data

    # -- the answer ---------------------------------------------------------------------

    def _handle(self, request: bytes) -> Reply:
        line = request.rstrip(b"\r\n").decode("latin-1")
        words = line.split()
        name = words[0] if words else ""
        index = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
        address = module_address(self.group, index if index and index <= 16 else 1)
        plan = self.stack.faults
        gone = {f.module for f in plan.draw(address, name, _CONTENT)}
        text = self._answer(line, words, gone)
        data = request + text.encode("latin-1")
        drawn = plan.draw(address, name, _WIRE)
        fired = {f.kind: f for f in drawn}
        clean = data
        if not fired:
            self.last_reply = data
            return Reply(data)
        if FaultKind.DROP in fired:
            return SILENCE
        if FaultKind.RTN in fired:
            data = request + self._error([self.firmware.invalid]).encode("latin-1")
        if FaultKind.PROMPT in fired:
            data = data[: len(data) - len(self.prompt)]
        if FaultKind.TRUNCATE in fired:
            size = fired[FaultKind.TRUNCATE].size
            data = data[: size if size is not None else len(data) // 2]
        if FaultKind.STALE in fired and self.last_reply is not None:
            data = self.last_reply + data
        if FaultKind.JUNK in fired:
            size = fired[FaultKind.JUNK].size
            data = plan.junk(size if size is not None else 4) + data
        if FaultKind.NUL in fired:
            size = fired[FaultKind.NUL].size
            data += b"\x00" * (size if size is not None else 3)
        self.last_reply = clean
        delay = sum(f.seconds for f in drawn if f.kind is FaultKind.DELAY)
        pace = 0.0
        if FaultKind.TRICKLE in fired:
            pace = 1.0 / (fired[FaultKind.TRICKLE].size or TRICKLE_RATE)
        return Reply(data, delay, pace)

    def _answer(self, line: str, words: list[str], gone: set[int | None]) -> str:
        """What the shell prints after the echo."""
        if self._pages:
            return self._page() if not words else self._end()
        if not words:
            return "\r" + self.prompt
        name, args = words[0], words[1:]
        commands: dict[str, Callable[[int | None, set[int | None]], str]] = {
            "pwr": self._pwr_command,
            "bat": self._bat_command,
            "stat": self._stat_command,
            "info": self._info_command,
            "soh": self._soh_command,
        }
        if name in commands:
            if len(args) > 1 or (args and not args[0].isdigit()):
                return self._error([self.firmware.invalid, "Usage:", USAGE[name]])
            return commands[name](int(args[0]) if args else None, gone)
        if name == "time":
            if args:  # setting the clock: nothing here changes the battery
                return self._error([self.firmware.invalid, "Usage:", USAGE["time"]])
            now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.clock()))
            return self._records([f"Ds3231 {now}"])
        if name == "help" and not args:
            self._pages = [list(page) for page in HELP_PAGES]
            return "\r@\r\r\n" + self._page()
        return self._error([f"Unknown command '{name}' - try 'help'"])

    # -- framing ------------------------------------------------------------------------

    def _end_text(self, completed: str = "Command completed successfully") -> str:
        return f"\r{completed}\r\n\r$$\r\n\r{self.prompt}"

    def _table(self, rows: Sequence[str], completed: str = "Command completed successfully") -> str:
        """Table style: ``\\r@``, rows ending ``\\r\\r\\n``, the last ``\\r\\n``."""
        body = "\r\r\n".join(rows)
        return "\r@\r\r\n" + body + "\r\n" + self._end_text(completed)

    def _records(self, lines: Sequence[str]) -> str:
        """Key/value style: ``\\r@\\r\\n`` and ``\\r<text>\\r\\n`` per line."""
        return "\r@\r\n" + "".join(f"\r{line}\r\n" for line in lines) + self._end_text()

    def _error(self, lines: Sequence[str]) -> str:
        return "\r@\r\n" + "".join(f"\r{line}\r\n" for line in lines) + f"\r$$\r\n\r{self.prompt}"

    def _page(self) -> str:
        page = self._pages.pop(0)
        text = "".join(f"\r{line}\r\n" for line in page)
        if self._pages:
            return text + f"\r{PAGER_LINE}\r"
        return text + self._end_text()

    def _end(self) -> str:
        self._pages = []
        return f"\r$$\r\n\r{self.prompt}"

    # -- which battery ------------------------------------------------------------------

    def _rows(self) -> int:
        return self.firmware.rows or 16

    def _present(self, index: int, gone: set[int | None]) -> VirtualModule | None:
        address = module_address(self.group, index) if 1 <= index <= 16 else -1
        module = self.stack.present(address)
        if module is None or module.group != self.group or address in gone:
            return None
        return module

    def _target(
        self, name: str, index: int | None, gone: set[int | None], absent: str
    ) -> VirtualModule | str:
        """The battery ``index`` names (None: the master), or the error text."""
        index = 1 if index is None else index
        if not 1 <= index <= self._rows():
            return self._error([self.firmware.invalid, "Usage:", USAGE[name]])
        module = self._present(index, gone)
        if module is None:
            return self._error([absent])
        return module

    # -- pwr ----------------------------------------------------------------------------

    def _pwr_command(self, index: int | None, gone: set[int | None]) -> str:
        if index is not None:
            target = self._target("pwr", index, gone, "Command failed")
            return target if isinstance(target, str) else self._pwr_detail(index, target)
        kind = self.firmware.pwr
        rows = [PWR_HEADERS[kind]]
        last = max((m.address for m in self.stack.group_modules(self.group)), default=0)
        count = self.firmware.rows or (last - 0x10 * self.group - 1)
        for position in range(1, count + 1):
            module = self._present(position, gone)
            if module is not None:
                rows.append(self._pwr_row(position, module))
            elif self.firmware.rows is not None:
                tail = _PYTES_ABSENT if kind == "pytes" else ""
                rows.append(f"{position:<6}{ABSENT}{tail}")
        text = self._table(rows)
        if kind == "pytes" and len(rows) > 2:  # row 1 ends in a bare LF, then CRLF
            text = text.replace(rows[1] + "\r\r\n", rows[1] + "\n\r\n", 1)
        return text

    def _states(self, module: VirtualModule, alarms: ModuleAlarms) -> dict[str, str]:
        t = alarms.temperature_states
        current = (
            alarms.charge_current_state if module.current > 0 else alarms.discharge_current_state
        )
        return {
            "volt": WORDS[alarms.voltage_state],
            "curr": WORDS[current],
            "temp": WORDS[t[0]],
            "cells_v": WORDS[worst_alarm(alarms.cell_states) or AlarmState.NORMAL],
            "cells_t": WORDS[worst_alarm(t[1:5]) or AlarmState.NORMAL],
            "mos": WORDS[t[5]] if len(t) > 5 else "-",
        }

    def _base(self, module: VirtualModule) -> str:
        current = _milli(module.current)
        return "Charge" if current > 0 else "Dischg" if current < 0 else "Idle"

    def _pwr_row(self, position: int, module: VirtualModule) -> str:
        alarms = module.alarms()
        states = self._states(module, alarms)
        cells = [_milli(v) for v in module.cell_voltages]
        groups = [_mc(t) for t in module.temperatures[1:5]]
        temps = module.temperatures
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.clock()))
        soc = f"{round(module.soc * 100)}%"
        kind = self.firmware.pwr
        base = f"{position:<6}{sum(cells):<7}{_milli(module.current):<7}{_mc(temps[0]):<7}"
        if kind in ("22", "23"):
            base += (
                f"{min(groups):<7}{groups.index(min(groups)):<9}{max(groups):<7}"
                f"{groups.index(max(groups)):<9}{min(cells):<7}{cells.index(min(cells)):<9}"
                f"{max(cells):<7}{cells.index(max(cells)):<9}"
            )
        else:
            base += f"{min(groups):<7}{max(groups):<7}{min(cells):<7}{max(cells):<7}"
        base += (
            f"{self._base(module):<9}{states['volt']:<9}{states['curr']:<9}{states['temp']:<9}"
            f"{soc:<9}{clock:<21}{states['cells_v']:<9}"
        )
        mos = _mc(temps[5]) if len(temps) > 5 else None
        if kind == "16":
            return base + f"{states['cells_t']:<8}"
        if kind == "pytes":
            return (
                base
                + f"{states['cells_t']:<9}{module.serial_number:<21}"
                + (f"{module.model.device_name:<20}")
            )
        if mos is None:
            tail = f"{states['cells_t']:<9}{'-':<9}{'-':<8}"
        else:
            tail = f"{states['cells_t']:<8}{mos:<9}{states['mos']:<8}"
        if kind == "23":
            alarm = "Alarm" if any(vars(alarms.protections).values()) else "Normal"
            tail += f" {alarm:<11}"
        return base + tail

    def _pwr_detail(self, index: int, module: VirtualModule) -> str:
        alarms = module.alarms()
        states = self._states(module, alarms)
        current = _milli(module.current)
        lines = [
            " ----------------------------",
            f" Power  {index}",
            "",
            f" Voltage         : {_milli(module.voltage):<12}mV",
            f" Current         : {current:<12}mA",
            f" Temperature     : {_mc(module.temperatures[0]):<12}mC",
            f" Coulomb         : {round(module.soc * 100):<12}%",
            f" Total Coulomb   : {round(module.full_capacity * 1000):<12}mAH",
            f" Max Voltage     : {_milli(module.model.parameters.module_high_voltage_limit):<12}mV",
            f" Charge Times    : {module.cycle_number:<12}",
            f" Basic Status    : {self._base(module):<8}",
            f" Volt Status     : {states['volt']:<8}",
            f" Current Status  : {states['curr']:<8}",
            f" Tmpr. Status    : {states['temp']:<8}",
            " Bat Events      : 0x0        ",
            " Power Events    : 0x0        ",
            " System Fault    : 0x0        ",
            " ----------------------------",
        ]
        return self._table(lines)

    # -- bat ----------------------------------------------------------------------------

    def _bat_command(self, index: int | None, gone: set[int | None]) -> str:
        module = self._target("bat", index, gone, "Command failed")
        if isinstance(module, str):
            return module
        layout = self.firmware.bat
        alarms = module.alarms()
        states = self._states(module, alarms)
        base = self._base(module)
        current = _milli(module.current)
        soc = round(module.soc * 100)
        charge = round(module.remaining_capacity * 1000)
        lowest = min(module.cell_voltages)
        rows = [BAT_HEADERS[layout]]
        for cell, volts in enumerate(module.cell_voltages):
            group = 1 + min(cell // 4, 3)
            temp_state = WORDS[alarms.temperature_states[group]]
            row = f"{cell:<9}{_milli(volts):<9}"
            if layout != "pytes":
                row += f"{current:<9}"
            row += f"{_mc(module.temperatures[group]):<9}{base:<13}"
            row += f"{WORDS[alarms.cell_states[cell]]:<13}{states['curr']:<13}"
            balancing = "Y" if current > 0 and volts - lowest >= BALANCE_SPREAD else "N"
            if layout == "current":
                # Fixed print widths, not columns: 100 % shifts what follows by one.
                row += f"{temp_state:<13}{soc:>2}%{' ' * 9}{charge} mAH{' ' * 6}{balancing}"
            elif layout == "us3000d":
                charge_state, discharge_state = self._temperature_states(module, group)
                row += f"{discharge_state:<13}{charge_state:<13}"
                row += f"{soc}%{' ' * 10}{charge:<13}mAH {balancing}"
            else:
                row += f"{temp_state:<13}{f'{soc:>3}%':<10}{charge} mAH"
            rows.append(row)
        return self._table(rows)

    @staticmethod
    def _temperature_states(module: VirtualModule, sensor: int) -> tuple[str, str]:
        """The charge and discharge temperature states of ``sensor`` (both limits)."""
        p = module.model.parameters
        t = module.temperatures[sensor]

        def state(low: float, high: float) -> str:
            return WORDS[
                AlarmState.HIGH if t > high else AlarmState.LOW if t < low else AlarmState.NORMAL
            ]

        return (
            state(p.charge_low_temperature_limit, p.charge_high_temperature_limit),
            state(p.discharge_low_temperature_limit, p.discharge_high_temperature_limit),
        )

    # -- stat, info, soh ----------------------------------------------------------------

    def _stat_command(self, index: int | None, gone: set[int | None]) -> str:
        firmware = self.firmware
        if index is not None and not firmware.indexed_info:
            return self._error([firmware.invalid])
        module = self._target("stat", index, gone, "Target device is not present")
        if isinstance(module, str):
            return module
        extras = self.extras[module.address]
        order = list(STAT_COUNTERS)
        if firmware.stat_old_order:
            for name in ("COC2 Times", "DOC2 Times"):
                order.remove(name)
            at = order.index("DOC Times") + 1
            order[at:at] = ["COC2 Times", "DOC2 Times"]
        position = index or 1
        lines = [f"Device address {position:>10}"]
        for name in order:
            lines.append(f"{name:<16}: {extras.counters.get(name, 0):>8}")
            if name == "BMICERR Times":
                lines.append(f"{'CYCLE Times':<16}: {module.cycle_number:>8}")
                if firmware.stat_soh:
                    lines.append(f"{'SOH':<16}: {extras.state_of_health:>8}")
                pwr_coulomb = round(module.remaining_capacity * 3600 * 1000)
                lines.append(f"{'Pwr Percent':<16}: {round(module.soc * 100):>8}")
                lines.append(f"{'Pwr Coulomb':<16}: {pwr_coulomb:>8}")
                discharged = round(module.cycle_number * module.full_capacity * 1000)
                lines.append(f"{'Dsg Cap':<16}: {discharged:>8}")
        return self._table(lines, firmware.stat_completed)

    def _info_command(self, index: int | None, gone: set[int | None]) -> str:
        firmware = self.firmware
        if index is not None and not firmware.indexed_info:
            return self._error([firmware.invalid])
        module = self._target("info", index, gone, "Target device is not present")
        if isinstance(module, str):
            return module
        m = module.model
        nominal = {8: "24V", 15: "48V", 16: "51.2V"}.get(m.cells, f"{m.cells * 3.2:g}V")
        fields = [
            ("Device address", str(index or 1)),
            ("Manufacturer", firmware.manufacturer),
            ("Device name", m.device_name),
            ("Board version", "V10R04"),
            ("Main Soft version", firmware.version),
            ("Soft  version", f"V{m.software_version}"),
            ("Boot  version", "V1.0"),
            ("Comm version", "V2.0"),
            ("Release Date", "22-08-10"),
            ("Barcode", module.serial_number),
            ("", ""),
            ("Specification", f"{nominal}/{m.capacity:g}AH"),
            ("Cell Number", str(m.cells)),
            ("Max Dischg Curr", f"{round(m.discharge_current * 1000)}mA"),
            ("Max Charge Curr", f"{round(m.charge_current * 1000)}mA"),
            ("EPONPort rate", "1200"),
            ("Console Port rate", "115200"),
        ]
        return self._records([f"{k:<20}: {v}" if k else "" for k, v in fields])

    def _soh_command(self, index: int | None, gone: set[int | None]) -> str:
        module = self._target("soh", index, gone, "Command failed")
        if isinstance(module, str):
            return module
        counts = self.extras[module.address].soh_counts
        if self.firmware.soh_status_only:
            rows = ["Battery    Voltage    SOHStatus  \xc8$        "]
            rows += [
                f"{cell:<11}{_milli(v):<11}00000000" for cell, v in enumerate(module.cell_voltages)
            ]
        else:
            rows = ["Battery    Voltage    SOHCount   SOHStatus "]
            rows += [
                f"{cell:<11}{_milli(v):<11}{counts.get(cell, 0):<11}{'Normal':<10}"
                for cell, v in enumerate(module.cell_voltages)
            ]
        return self._table([f"Power   {index or 1}", *rows])


__all__ = [
    "FIRMWARES",
    "MODEL_FIRMWARE",
    "ConsoleExtras",
    "ConsoleResponder",
    "Firmware",
    "LineSplitter",
    "get_firmware",
]
