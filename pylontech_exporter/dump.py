"""``pylontech-exporter dump``: one snapshot as a readable table or as JSON.

For a listen-only bank the table starts with what the line carried: which requests the
bus master (the inverter) sends, how often, and how many frames of each kind were heard;
the first thing to look at when the inverter's protocol is in doubt.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Sequence
from typing import Any

from .models import active_alarms, active_states
from .snapshot import BankReading, ModuleReading, Snapshot


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN (e.g. the state of charge of a 0 Ah module)
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_dict(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as plain JSON-able data; bank and module ``up`` added."""
    banks = []
    for bank in snapshot.banks:
        data = _plain(bank)
        data["up"] = bank.up
        data["protocol_version"] = str(bank.protocol_version) if bank.protocol_version else None
        for module, entry in zip(bank.modules, data["modules"]):
            entry["up"] = module.up
            if module.values is not None:
                entry["values"]["power"] = _plain(module.values.power)
                entry["values"]["state_of_charge"] = _plain(module.values.state_of_charge)
                entry["values"]["temperature_sensors"] = [
                    sensor for sensor, _ in module.values.sensor_temperatures()
                ]
        banks.append(data)
    return {"taken_at": snapshot.taken_at, "duration": snapshot.duration, "banks": banks}


def render_json(snapshot: Snapshot) -> str:
    return json.dumps(to_dict(snapshot), indent=2, sort_keys=False, allow_nan=False)


def module_alarms(module: ModuleReading) -> list[str] | None:
    """A module's active alarms in words, from its RS485 alarm info or its console states;
    None when neither was read. What ``dump`` and the landing page show."""
    if module.alarms is not None:
        return active_alarms(module.alarms)
    if module.detail is not None:
        return active_states(module.detail)
    return None


def fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, without the minus of a value that rounds to 0
    ("0 W", not "-0 W")."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _alarms(module: ModuleReading) -> str:
    alarms = module_alarms(module)
    return "not read" if alarms is None else ", ".join(alarms) or "none"


def _columns(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def _heard(bank: BankReading) -> list[str]:
    """What a listen-only bank's line carried: the master's requests and the frames."""
    heard = bank.listen
    if heard is None:
        return []
    frames = heard.frames
    failures = sum(heard.decode_failures.values())
    lines = [
        f"  heard: {frames.get('request', 0)} requests, {frames.get('answer', 0)} answers, "
        f"{frames.get('error_answer', 0)} error answers, {heard.unanswered} unanswered, "
        f"{failures} frames that did not decode"
        + (
            " ("
            + ", ".join(f"{n} {r}" for r, n in sorted(heard.decode_failures.items()) if n)
            + ")"
            if failures
            else ""
        )
    ]
    if not heard.polls:
        lines.append("  the bus master sent no request to this group")
        return lines
    lines.append("  the bus master polls:")
    rows = [("command", "address", "INFO", "requests", "every")]
    for poll in heard.polls:
        every = f"{poll.period:.2f} s" if poll.period is not None else "once"
        rows.append(
            (poll.command, f"0x{poll.address:02X}", poll.info or "-", str(poll.requests), every)
        )
    return lines + _columns(rows, "    ")


def render_table(snapshot: Snapshot) -> str:
    header = (
        "module",
        "addr",
        "serial",
        "SoC",
        "voltage",
        "current",
        "power",
        "cell min",
        "cell max",
        "temp max",
        "cycles",
        "alarms",
    )
    lines = []
    for bank in snapshot.banks:
        state = "up" if bank.up else f"DOWN ({bank.error})"
        maker = bank.manufacturer
        ident = f", {maker.device_name} {maker.software_version}" if maker else ""
        if bank.listen is not None:
            how = "listened"
        elif bank.up or bank.duration >= 0.005:
            how = f"read in {bank.duration:.2f} s"
        else:  # nothing to read (no module known), the port not open, the line busy
            how = "not read"
        lines.append(f"bank {bank.name} (group {bank.group}, {bank.port}{ident}): {state}, {how}")
        lines.extend(_heard(bank))
        rows = [header]
        for m in bank.modules:
            v = m.values
            if v is None:
                rows.append(
                    (
                        str(m.position),
                        f"0x{m.address:02X}",
                        m.serial_number or "-",
                        "not answering",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                    )
                )
                continue
            rows.append(
                (
                    str(m.position),
                    f"0x{m.address:02X}",
                    m.serial_number or "-",
                    f"{v.state_of_charge * 100:.1f}%" if math.isfinite(v.state_of_charge) else "-",
                    f"{fixed(v.voltage, 3)} V",
                    f"{fixed(v.current, 1)} A",
                    f"{fixed(v.power, 0)} W",
                    f"{min(v.cell_voltages):.3f} V" if v.cell_voltages else "-",
                    f"{max(v.cell_voltages):.3f} V" if v.cell_voltages else "-",
                    f"{max(v.temperatures):.1f} C" if v.temperatures else "-",
                    str(v.cycle_number) if v.cycles_known else "-",
                    _alarms(m),
                )
            )
        if len(rows) > 1:
            lines.extend(_columns(rows))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
