"""The landing page at ``/``: what this exporter reads, in what state each bank is, and
what it saw last.

Plain HTML with a little inline CSS, no external assets. It never touches the bus: it
shows the latest snapshot, whatever its age (and says how old it is). Per bank: up,
discovering or down, with the reason and a hint when the scrape cannot fit; the stack's
totals; per module the state of charge, voltage, current, cell spread, temperature and
active alarms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from html import escape

from ._version import __version__
from .config import BankConfig
from .dump import fixed, module_alarms
from .models import GroupValues
from .snapshot import BankReading, ModuleReading, Snapshot

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 76em; padding: 0 1em;
       color: #222; background: #fafafa; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h1 small { color: #777; font-weight: normal; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; background: #fff; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.up { color: #1a7f37; font-weight: bold; } .down { color: #c62828; font-weight: bold; }
.discovering { color: #b26a00; font-weight: bold; }
.alarm { color: #c62828; } .muted { color: #777; }
.hint { background: #fff4e5; border-left: 4px solid #b26a00; padding: 0.4em 0.8em; }
.totals td { font-size: 1.1em; }
code { background: #eee; padding: 0.1em 0.3em; border-radius: 3px; }
"""

#: Cell spread from which the page marks a module (the imbalance alert's warning level).
SPREAD_WARNING = 0.05


def _fmt(value: float, digits: int, unit: str) -> str:
    return f"{fixed(value, digits)}&nbsp;{unit}"


def _alarm_text(module: ModuleReading) -> str:
    alarms = module_alarms(module)
    if alarms is None:
        return "<span class=muted>not read</span>"
    return f"<span class=alarm>{escape(', '.join(alarms))}</span>" if alarms else "none"


def _module_row(module: ModuleReading) -> str:
    label = f"{module.position} <span class=muted>(0x{module.address:02X})</span>"
    serial = escape(module.serial_number or "")
    if module.values is None:
        return (
            f"<tr><td class=l>{label}</td><td class='l down'>not answering "
            f"<span class=muted>{serial}</span></td><td colspan=8></td></tr>"
        )
    v = module.values
    cells = v.cell_voltages
    spread = max(cells) - min(cells) if cells else math.nan
    spread_text = (
        f"<span class={'alarm' if spread >= SPREAD_WARNING else ''}>"
        f"{spread * 1000:.0f}&nbsp;mV</span>"
        if cells
        else "-"
    )
    soc = f"{v.state_of_charge * 100:.1f}&nbsp;%" if v.total_capacity else "-"
    return (
        f"<tr><td class=l>{label}</td><td class='l up'>up <span class=muted>{serial}</span></td>"
        f"<td>{soc}</td><td>{_fmt(v.voltage, 2, 'V')}</td><td>{_fmt(v.current, 1, 'A')}</td>"
        f"<td>{_fmt(min(cells), 3, 'V') if cells else '-'}</td>"
        f"<td>{_fmt(max(cells), 3, 'V') if cells else '-'}</td><td>{spread_text}</td>"
        f"<td>{_fmt(max(v.temperatures), 1, '°C') if v.temperatures else '-'}</td>"
        f"<td class=l>{_alarm_text(module)}</td></tr>"
    )


def _totals(bank: BankReading) -> str:
    values = [m.values for m in bank.modules if m.values is not None]
    if not values:
        return ""
    stack = GroupValues(bank.group, tuple(values))
    soc = stack.state_of_charge
    power = stack.total_power
    current = sum(v.current for v in values)
    voltage = sum(v.voltage for v in values) / len(values)
    return (
        "<table class=totals><tr><th>state of charge</th><th>power</th><th>voltage</th>"
        "<th>current</th><th>modules up</th></tr>"
        f"<tr><td>{'-' if math.isnan(soc) else f'{soc * 100:.1f}&nbsp;%'}</td>"
        f"<td>{_fmt(power, 0, 'W')}</td><td>{_fmt(voltage, 2, 'V')}</td>"
        f"<td>{_fmt(current, 1, 'A')}</td><td>{len(values)} of {len(bank.modules)}</td></tr>"
        "</table>"
    )


def _state(bank: BankReading, discovering: bool) -> str:
    if bank.up:
        state = "<span class=up>up</span>"
        if not bank.complete:
            state += " <span class=muted>(partly read)</span>"
        return state
    if discovering or bank.discovering:
        return "<span class=discovering>discovering</span>"
    return "<span class=down>down</span>"


def _bank(bank: BankReading, config: BankConfig | None, discovering: bool) -> list[str]:
    baud = f", {config.serial.baudrate} Bd" if config else ""
    parts = [
        f"<h2>Bank {escape(bank.name)} <small class=muted>group {bank.group}, "
        f"<code>{escape(bank.port)}</code>{baud}</small>: {_state(bank, discovering)}</h2>"
    ]
    if bank.error and not bank.up:
        parts.append(f"<p class=muted>{escape(bank.error)}</p>")
    if bank.hint:
        parts.append(f"<p class=hint><b>Hint:</b> {escape(bank.hint)}</p>")
    parts.append(_totals(bank))
    if not bank.modules:
        parts.append("<p class=muted>No modules known yet.</p>")
        return parts
    parts.append(
        "<table><tr><th class=l>module</th><th class=l>state</th><th>charge</th>"
        "<th>voltage</th><th>current</th><th>lowest cell</th><th>highest cell</th>"
        "<th>cell spread</th><th>temperature (max)</th><th class=l>active alarms</th></tr>"
    )
    parts.extend(_module_row(m) for m in bank.modules)
    parts.append("</table>")
    return parts


def render(
    banks: list[BankConfig],
    snapshot: Snapshot | None,
    *,
    discovering: Collection[str] = (),
    telemetry_path: str = "/metrics",
    simulated: bool = False,
    now: float | None = None,
) -> str:
    """The landing page as an HTML string. ``discovering``: names of the banks whose
    modules are being discovered now."""
    now = time.time() if now is None else now
    path = escape(telemetry_path)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>Pylontech exporter</title><style>{_CSS}</style></head><body>",
        f"<h1>Pylontech exporter <small>{escape(__version__)}</small></h1>",
        "<p>Prometheus exporter for Pylontech low-voltage batteries. "
        f"Metrics: <a href='{path}'>{path}</a> &middot; "
        "<a href='/docs/metrics'>metric reference</a> &middot; "
        "<a href='/docs/troubleshooting'>troubleshooting</a> &middot; "
        "<a href='/-/ready'>ready?</a></p>",
    ]
    if simulated:
        parts.append(
            "<p class=alarm><b>Simulated battery stack</b> (--simulate): "
            "these are not real batteries.</p>"
        )
    configs = {b.name: b for b in banks}
    if snapshot is None:
        parts.append(
            f"<p class=muted>No scrape yet: the bus is read when Prometheus scrapes "
            f"<a href='{path}'>{path}</a>.</p>"
        )
        for config in banks:
            state = "discovering" if config.name in discovering else "not read yet"
            parts.append(
                f"<h2>Bank {escape(config.name)} <small class=muted>group {config.group}, "
                f"<code>{escape(config.port)}</code>, {config.serial.baudrate} Bd</small>: "
                f"<span class=discovering>{state}</span></h2>"
            )
    else:
        age = max(0.0, now - snapshot.taken_at)
        taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.taken_at))
        parts.append(
            f"<p>Last reading {taken} ({age:.0f} s ago), took {snapshot.duration:.2f} s"
            + (f" of {snapshot.budget:.2f} s allowed" if math.isfinite(snapshot.budget) else "")
            + ".</p>"
        )
        for bank in snapshot.banks:
            parts.extend(_bank(bank, configs.get(bank.name), bank.name in discovering))
    parts.append("</body></html>\n")
    return "".join(parts)
