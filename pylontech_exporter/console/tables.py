"""Parsers of the console's answers, by header, never by column position.

Real layouts differ by firmware (docs/console.md): ``pwr`` has 16, 18, 22 or 23 header
tokens and clones add others; ``Absent`` rows keep the old 16-token pattern whatever the
header; old ``bat`` layouts print SOC % and mAh under one ``Coulomb`` header and have no
``BAL``; a Pytes firmware prints a SOC inside the state columns. So a row is cut into
whitespace-separated tokens and the header says which fields come in which order: a
``pwr`` row's ``Time`` takes two tokens (``2023-09-16 11:50:32``) or one (``-``); a
``bat`` row's SOC (``45%``) and charge (``44231 mAH``) are recognised by their form
wherever they are printed, and the other tokens fill the other columns in order.

Values come in the base units of :mod:`pylontech_exporter.models` (mV -> V, mA -> A,
m°C -> °C); ``-`` is a missing value (None). A row or field that cannot be parsed is
skipped, never guessed, and said in ``problems`` (the source logs and counts them); the
rest of the table still counts. Input is the answer's body: lines without the echo, the
``@``, the ``Command completed`` line, ``$$`` and the prompt (see :mod:`.shell`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import PylontechError
from ..models import CellHealth, ModuleIdentity, ModuleStatistics

# --- fields ----------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]*")
_PERCENT = re.compile(r"(\d+)%")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CLOCK = re.compile(r"\d{2}:\d{2}:\d{2}")
_CHARGE = re.compile(r"(\d+)\s*mAH", re.IGNORECASE)
MISSING = "-"
#: A stack has at most this many batteries (``pwr`` rows 1..16).
MAX_BATTERIES = 16


class FieldError(ValueError):
    """A token that is not what its column holds."""


def _milli(token: str) -> float:
    """mV, mA, m°C -> V, A, °C (exact: the integer divided once)."""
    if not _INT.fullmatch(token):
        raise FieldError(f"{token!r} is not a whole number")
    return int(token) / 1000


def _integer(token: str) -> int:
    if not _INT.fullmatch(token):
        raise FieldError(f"{token!r} is not a whole number")
    return int(token)


def _percent(token: str) -> int:
    found = _PERCENT.fullmatch(token)
    if not found:
        raise FieldError(f"{token!r} is not a percentage")
    return int(found.group(1))


def _word(token: str) -> str:
    if not _WORD.fullmatch(token):
        raise FieldError(f"{token!r} is not a state word")
    return token


def _flag(token: str) -> bool:
    if token not in ("Y", "N"):
        raise FieldError(f"{token!r} is not Y or N")
    return token == "Y"


def _text(token: str) -> str:
    return token


Convert = Callable[[str], Any]


@dataclass(frozen=True)
class Column:
    """What a header names: the attribute it fills and how its token is read."""

    attribute: str
    convert: Convert


def _header_columns(line: str) -> list[str]:
    """Header tokens, ``X State`` kept together (``Base State``, ``Volt. State``);
    tokens that are not printable ASCII dropped (a Pytes header ends in ``\\xc8$``)."""
    names: list[str] = []
    for token in line.split():
        if not token.isascii() or not token.isprintable() or not any(c.isalnum() for c in token):
            continue
        if token == "State" and names:
            names[-1] += " State"
        else:
            names.append(token)
    return names


class Problems(list[str]):
    """What could not be parsed, one line each."""

    def bad(self, where: str, name: str, error: Exception) -> None:
        self.append(f"{where}: {name}: {error}")


def _fill(
    values: dict[str, Any],
    columns: Sequence[tuple[str, Column | None]],
    tokens: Sequence[str],
    where: str,
    problems: Problems,
) -> None:
    """``tokens`` into ``values`` by ``columns`` (name, spec; None: kept as text under the
    printed name in ``values['extra']``), one token each. A field that does not convert
    is None and reported."""
    extra: dict[str, str] = values.setdefault("extra", {})
    for (name, column), token in zip(columns, tokens):
        if column is None:
            extra[name] = token
            continue
        if token == MISSING:
            values[column.attribute] = None
            continue
        try:
            values[column.attribute] = column.convert(token)
        except FieldError as error:
            values[column.attribute] = None
            problems.bad(where, name, error)


# --- pwr -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerRow:
    """One battery of ``pwr`` (``absent``: printed as ``Absent``, nothing else read)."""

    index: int
    absent: bool = False
    #: Volt, Curr, Tempr (the BMS board), MosTempr.
    voltage: float | None = None
    current: float | None = None
    temperature: float | None = None
    mos_temperature: float | None = None
    #: Tlow/Thigh and Vlow/Vhigh: the coldest and warmest, lowest and highest cell.
    cell_temperature_min: float | None = None
    cell_temperature_max: float | None = None
    cell_voltage_min: float | None = None
    cell_voltage_max: float | None = None
    #: Base.St, Volt.St, Curr.St, Temp.St, B.V.St, B.T.St, M.T.St, SysAlarm.St as printed.
    base_state: str | None = None
    voltage_state: str | None = None
    current_state: str | None = None
    temperature_state: str | None = None
    cell_voltage_state: str | None = None
    cell_temperature_state: str | None = None
    mos_temperature_state: str | None = None
    system_alarm_state: str | None = None
    #: Coulomb: state of charge in %.
    state_of_charge: int | None = None
    #: The module's own clock, as printed.
    time: str | None = None
    #: Columns this parser does not interpret (``Tlow.Id``, ``Barcode``, ``DevType``...).
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PowerTable:
    columns: tuple[str, ...]
    rows: tuple[PowerRow, ...]
    problems: tuple[str, ...] = ()

    @property
    def present(self) -> list[PowerRow]:
        return [r for r in self.rows if not r.absent]

    def checked(self) -> PowerTable:
        """This table; PylontechError when ``pwr`` printed no header (nothing to read)."""
        if not self.columns:
            raise PylontechError(self.problems[0])
        return self


_TIME = Column("time", _text)  # two tokens, joined by the row parser
POWER_COLUMNS: dict[str, Column] = {
    "Power": Column("index", _integer),
    "Volt": Column("voltage", _milli),
    "Curr": Column("current", _milli),
    "Tempr": Column("temperature", _milli),
    "Tlow": Column("cell_temperature_min", _milli),
    "Thigh": Column("cell_temperature_max", _milli),
    "Vlow": Column("cell_voltage_min", _milli),
    "Vhigh": Column("cell_voltage_max", _milli),
    "Base.St": Column("base_state", _word),
    "Volt.St": Column("voltage_state", _word),
    "Curr.St": Column("current_state", _word),
    "Temp.St": Column("temperature_state", _word),
    "Coulomb": Column("state_of_charge", _percent),
    "Time": _TIME,
    "B.V.St": Column("cell_voltage_state", _word),
    "B.T.St": Column("cell_temperature_state", _word),
    "MosTempr": Column("mos_temperature", _milli),
    "M.T.St": Column("mos_temperature_state", _word),
    "SysAlarm.St": Column("system_alarm_state", _word),
}


def _find_header(lines: Sequence[str], first: str) -> int | None:
    for number, line in enumerate(lines):
        tokens = line.split()
        if tokens and tokens[0] == first:
            return number
    return None


def _join_time(tokens: list[str], at: int) -> list[str]:
    """``tokens`` with a printed date and clock at ``at`` joined into one token."""
    if at + 1 < len(tokens) and _DATE.fullmatch(tokens[at]) and _CLOCK.fullmatch(tokens[at + 1]):
        return [*tokens[:at], f"{tokens[at]} {tokens[at + 1]}", *tokens[at + 2 :]]
    return tokens


def parse_pwr(lines: Sequence[str]) -> PowerTable:
    """``pwr``: one row per battery (16 or 8 rows, or the present ones only)."""
    problems = Problems()
    at = _find_header(lines, "Power")
    if at is None:
        return PowerTable((), (), ("pwr: no header line (Power Volt Curr ...)",))
    names = lines[at].split()
    columns = [(n, POWER_COLUMNS.get(n)) for n in names]
    time_at = names.index("Time") if "Time" in names else None
    rows: list[PowerRow] = []
    for line in lines[at + 1 :]:
        tokens = line.split()
        where = f"pwr row {tokens[0] if tokens else '?'}"
        if not tokens or not _INT.fullmatch(tokens[0]):
            problems.append(f"pwr: not a row: {line.strip()[:60]!r}")
            continue
        if not 1 <= int(tokens[0]) <= MAX_BATTERIES:
            problems.append(f"{where}: not a battery (1..{MAX_BATTERIES}), skipped")
            continue
        if any(r.index == int(tokens[0]) for r in rows):
            problems.append(f"{where}: printed twice, the second skipped")
            continue
        if "Absent" in tokens:  # the old 16-token pattern, whatever the header
            rows.append(PowerRow(int(tokens[0]), absent=True))
            continue
        if time_at is not None:
            tokens = _join_time(tokens, time_at)
        if len(tokens) != len(columns):
            problems.append(f"{where}: {len(tokens)} fields for {len(columns)} columns, skipped")
            continue
        values: dict[str, Any] = {}
        _fill(values, columns, tokens, where, problems)
        rows.append(PowerRow(**values))
    return PowerTable(tuple(names), tuple(rows), tuple(problems))


# --- bat -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellRow:
    """One cell of ``bat N``."""

    #: The printed row number (0-based: cell ``index + 1``).
    index: int
    voltage: float | None = None
    #: The pack current, repeated on every row (not printed by every firmware).
    current: float | None = None
    temperature: float | None = None
    #: State words as printed, in order (Base, Volt., Curr., Temp. / DTemp., CTemp.).
    base_state: str | None = None
    voltage_state: str | None = None
    current_state: str | None = None
    temperature_state: str | None = None
    discharge_temperature_state: str | None = None
    charge_temperature_state: str | None = None
    #: SOC in % and the cell's charge in mAh (``Coulomb``).
    state_of_charge: int | None = None
    charge: int | None = None
    balancing: bool | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def cell(self) -> int:
        return self.index + 1

    @property
    def states(self) -> list[str]:
        """The state words in printed order."""
        words = (
            self.base_state,
            self.voltage_state,
            self.current_state,
            self.temperature_state,
            self.discharge_temperature_state,
            self.charge_temperature_state,
        )
        return [w for w in words if w is not None]


@dataclass(frozen=True)
class BatteryTable:
    columns: tuple[str, ...]
    cells: tuple[CellRow, ...]
    problems: tuple[str, ...] = ()


BATTERY_COLUMNS: dict[str, Column] = {
    "Battery": Column("index", _integer),
    "Volt": Column("voltage", _milli),
    "Curr": Column("current", _milli),
    "Tempr": Column("temperature", _milli),
    "Base State": Column("base_state", _word),
    "Volt. State": Column("voltage_state", _word),
    "Curr. State": Column("current_state", _word),
    "Temp. State": Column("temperature_state", _word),
    "DTemp. State": Column("discharge_temperature_state", _word),
    "CTemp. State": Column("charge_temperature_state", _word),
    "BAL": Column("balancing", _flag),
}
#: Columns found by their form wherever they are printed.
_BY_FORM = ("SOC", "Coulomb")


def _take_charge(tokens: list[str]) -> tuple[list[str], int | None, bool]:
    """``tokens`` without the ``NNN mAH`` of the row, the number, whether it was found."""
    for at, token in enumerate(tokens):
        glued = _CHARGE.fullmatch(token)
        if glued:
            return [*tokens[:at], *tokens[at + 1 :]], int(glued.group(1)), True
        if token.lower() == "mah" and at > 0 and tokens[at - 1].isdigit():
            return [*tokens[: at - 1], *tokens[at + 1 :]], int(tokens[at - 1]), True
    return tokens, None, False


def parse_bat(lines: Sequence[str]) -> BatteryTable:
    """``bat N``: one row per cell."""
    problems = Problems()
    at = _find_header(lines, "Battery")
    if at is None:
        return BatteryTable((), (), ("bat: no header line (Battery Volt ...)",))
    names = _header_columns(lines[at])
    in_order = [(n, BATTERY_COLUMNS.get(n)) for n in names if n not in _BY_FORM]
    has_charge = "Coulomb" in names
    cells = []
    for line in lines[at + 1 :]:
        tokens = line.split()
        where = f"bat row {tokens[0] if tokens else '?'}"
        if not tokens or not _INT.fullmatch(tokens[0]):
            problems.append(f"bat: not a row: {line.strip()[:60]!r}")
            continue
        values: dict[str, Any] = {}
        percents = [t for t in tokens if _PERCENT.fullmatch(t)]
        tokens = [t for t in tokens if not _PERCENT.fullmatch(t)]
        if len(percents) > 1:
            problems.append(f"{where}: {len(percents)} percentages, SOC skipped")
        elif percents:
            values["state_of_charge"] = _percent(percents[0])
        tokens, charge, found = _take_charge(tokens)
        if found:
            values["charge"] = charge
        elif has_charge:
            problems.append(f"{where}: no 'NNN mAH' charge")
        if len(tokens) != len(in_order):
            problems.append(f"{where}: {len(tokens)} fields for {len(in_order)} columns, skipped")
            continue
        _fill(values, in_order, tokens, where, problems)
        cells.append(CellRow(**values))
    return BatteryTable(tuple(names), tuple(cells), tuple(problems))


# --- soh -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthTable:
    """``soh N``: per cell its voltage, SOH count (where printed) and status."""

    power: int | None
    columns: tuple[str, ...]
    cells: tuple[CellHealth, ...]
    voltages: tuple[float | None, ...]
    problems: tuple[str, ...] = ()


HEALTH_COLUMNS: dict[str, Column] = {
    "Battery": Column("index", _integer),
    "Voltage": Column("voltage", _milli),
    "SOHCount": Column("count", _integer),
    "SOHStatus": Column("status", _text),
}


def parse_soh(lines: Sequence[str]) -> HealthTable:
    problems = Problems()
    power = None
    for line in lines:
        found = re.fullmatch(r"\s*Power\s+(\d+)\s*", line)
        if found:
            power = int(found.group(1))
            break
    at = _find_header(lines, "Battery")
    if at is None:
        return HealthTable(power, (), (), (), ("soh: no header line (Battery Voltage ...)",))
    names = _header_columns(lines[at])
    columns = [(n, HEALTH_COLUMNS.get(n)) for n in names]
    cells, voltages = [], []
    for line in lines[at + 1 :]:
        tokens = line.split()
        where = f"soh row {tokens[0] if tokens else '?'}"
        if not tokens or not _INT.fullmatch(tokens[0]):
            problems.append(f"soh: not a row: {line.strip()[:60]!r}")
            continue
        if len(tokens) != len(columns):
            problems.append(f"{where}: {len(tokens)} fields for {len(columns)} columns, skipped")
            continue
        values: dict[str, Any] = {}
        _fill(values, columns, tokens, where, problems)
        if values.get("index") is None or values.get("status") is None:
            problems.append(f"{where}: no cell number or status, skipped")
            continue
        cells.append(CellHealth(values["index"] + 1, values.get("count"), values["status"]))
        voltages.append(values.get("voltage"))
    return HealthTable(power, tuple(names), tuple(cells), tuple(voltages), tuple(problems))


# --- key : value records ---------------------------------------------------------------------


def key_values(lines: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``Key : value`` lines (key and value stripped, inner spaces of the key kept:
    ``Soft  version``) and the other lines, stripped."""
    pairs: dict[str, str] = {}
    plain: list[str] = []
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            pairs.setdefault(key.strip(), value.strip())
        elif line.strip():
            plain.append(line.strip())
    return pairs, plain


def number_unit(text: str) -> tuple[int, str] | None:
    """``49959       mV`` -> (49959, "mV"); ``-100000mA`` -> (-100000, "mA")."""
    found = re.fullmatch(r"([+-]?\d+)\s*([A-Za-z%]*)", text.strip())
    return (int(found.group(1)), found.group(2)) if found else None


@dataclass(frozen=True)
class InfoRecord:
    """``info`` / ``info N``: every line as printed."""

    fields: dict[str, str]
    problems: tuple[str, ...] = ()

    def identity(self) -> ModuleIdentity:
        f = self.fields
        capacity = None
        spec = re.fullmatch(r"[\d.]+V/([\d.]+)AH", f.get("Specification", ""), re.IGNORECASE)
        if spec:
            capacity = float(spec.group(1))
        cells = f.get("Cell Number", "")

        def amperes(key: str) -> float | None:
            found = number_unit(f.get(key, ""))
            return found[0] / 1000 if found and found[1] == "mA" else None

        return ModuleIdentity(
            device_name=f.get("Device name", ""),
            manufacturer=f.get("Manufacturer", ""),
            serial_number=f.get("Barcode", ""),
            main_software_version=f.get("Main Soft version", ""),
            software_version=f.get("Soft  version", f.get("Soft version", "")),
            boot_version=f.get("Boot  version", f.get("Boot version", "")),
            comm_version=f.get("Comm version", ""),
            board_version=f.get("Board version", ""),
            release_date=f.get("Release Date", ""),
            specification=f.get("Specification", ""),
            capacity=capacity,
            cell_count=int(cells) if cells.isdigit() else None,
            max_charge_current=amperes("Max Charge Curr"),
            max_discharge_current=amperes("Max Dischg Curr"),
        )


def parse_info(lines: Sequence[str]) -> InfoRecord:
    pairs, _ = key_values(lines)
    problems = () if "Device name" in pairs else ("info: no 'Device name' line",)
    return InfoRecord(pairs, problems)


#: ``stat`` keys that are not lifetime event counters.
_NOT_EVENTS = frozenset({"CYCLE Times", "SOH", "Pwr Percent", "Pwr Coulomb", "Dsg Cap"})


def counter_name(key: str) -> str:
    """A printed ``stat`` key as a label value: ``HT@0.5C Cnt`` -> ``ht_at_0_5c_cnt``."""
    return re.sub(r"[^a-z0-9]+", "_", key.lower().replace("@", " at ")).strip("_")


@dataclass(frozen=True)
class StatRecord:
    """``stat`` / ``stat N``: ``Device address`` and integer counters as printed."""

    address: int | None
    fields: dict[str, int]
    problems: tuple[str, ...] = ()

    def statistics(self) -> ModuleStatistics:
        f = self.fields
        events = {
            counter_name(key): value
            for key, value in f.items()
            if key not in _NOT_EVENTS and not key.endswith("Items")
        }
        soh, discharged = f.get("SOH"), f.get("Dsg Cap")
        return ModuleStatistics(
            events=events,
            cycles=f.get("CYCLE Times"),
            state_of_health=soh / 100 if soh is not None else None,
            discharged=discharged / 1000 if discharged is not None else None,
        )


def parse_stat(lines: Sequence[str]) -> StatRecord:
    problems = Problems()
    address = None
    pairs, plain = key_values(lines)
    for line in plain:
        found = re.fullmatch(r"Device address\s+(\d+)", line)
        if found:
            address = int(found.group(1))
    counts: dict[str, int] = {}
    for key, value in pairs.items():
        if _INT.fullmatch(value):
            counts[key] = int(value)
        else:
            problems.append(f"stat: {key}: {value!r} is not a whole number")
    return StatRecord(address, counts, tuple(problems))
