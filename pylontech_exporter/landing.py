"""The landing page at ``/``: what this exporter reads and what it saw last.

Plain HTML with a little inline CSS, no external assets. It never touches the bus: it
shows the latest snapshot, whatever its age (and says how old it is).
"""

from __future__ import annotations

import time
from html import escape

from ._version import __version__
from .config import BankConfig
from .models import active_alarms
from .snapshot import ModuleReading, Snapshot

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em;
       color: #222; background: #fafafa; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h1 small { color: #777; font-weight: normal; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; background: #fff; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.up { color: #1a7f37; font-weight: bold; } .down { color: #c62828; font-weight: bold; }
.alarm { color: #c62828; } .muted { color: #777; }
code { background: #eee; padding: 0.1em 0.3em; border-radius: 3px; }
"""


def _fmt(value: float, digits: int, unit: str) -> str:
    return f"{value:.{digits}f}&nbsp;{unit}"


def _module_row(module: ModuleReading) -> str:
    label = f"{module.position} <span class=muted>(0x{module.address:02X})</span>"
    if module.values is None:
        return (
            f"<tr><td class=l>{label}</td><td class='l down'>not answering</td>"
            "<td colspan=7></td></tr>"
        )
    v = module.values
    cells = v.cell_voltages
    alarms = active_alarms(module.alarms) if module.alarms is not None else []
    if module.alarms is None:
        alarm_text = "<span class=muted>not read</span>"
    elif alarms:
        alarm_text = f"<span class=alarm>{escape(', '.join(alarms))}</span>"
    else:
        alarm_text = "none"
    serial = escape(module.serial_number or "")
    return (
        f"<tr><td class=l>{label}</td><td class='l up'>up <span class=muted>{serial}</span></td>"
        f"<td>{v.state_of_charge * 100:.1f}&nbsp;%</td>"
        f"<td>{_fmt(v.voltage, 2, 'V')}</td><td>{_fmt(v.current, 1, 'A')}</td>"
        f"<td>{_fmt(min(cells), 3, 'V') if cells else '-'}</td>"
        f"<td>{_fmt(max(cells), 3, 'V') if cells else '-'}</td>"
        f"<td>{_fmt(max(v.temperatures), 1, '°C') if v.temperatures else '-'}</td>"
        f"<td class=l>{alarm_text}</td></tr>"
    )


def render(
    banks: list[BankConfig],
    snapshot: Snapshot | None,
    *,
    telemetry_path: str = "/metrics",
    simulated: bool = False,
    now: float | None = None,
) -> str:
    """The landing page as an HTML string."""
    now = time.time() if now is None else now
    path = escape(telemetry_path)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>Pylontech exporter</title><style>{_CSS}</style></head><body>",
        f"<h1>Pylontech exporter <small>{escape(__version__)}</small></h1>",
        "<p>Prometheus exporter for Pylontech low-voltage batteries (RS485 protocol V3.3).",
        f" Metrics: <a href='{path}'>{path}</a>.</p>",
    ]
    if simulated:
        parts.append(
            "<p class=alarm><b>Simulated battery stack</b> (--simulate): "
            "these are not real batteries.</p>"
        )
    parts.append("<h2>Configured banks</h2><table><tr><th class=l>bank</th><th class=l>port</th>")
    parts.append(
        "<th>group</th><th>baud</th><th class=l>modules</th><th class=l>bank query</th></tr>"
    )
    for bank in banks:
        parts.append(
            f"<tr><td class=l>{escape(bank.name)}</td><td class=l><code>{escape(bank.port)}"
            f"</code></td><td>{bank.group}</td><td>{bank.serial.baudrate}</td>"
            f"<td class=l>{bank.modules or 'discover'}</td><td class=l>{bank.bank_query}</td></tr>"
        )
    parts.append("</table>")
    if snapshot is None:
        parts.append(
            f"<h2>Last reading</h2><p class=muted>No reading yet: the bus is read when "
            f"Prometheus scrapes <a href='{path}'>{path}</a>.</p>"
        )
    else:
        age = max(0.0, now - snapshot.taken_at)
        taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot.taken_at))
        parts.append(
            f"<h2>Last reading</h2><p>Taken {taken} ({age:.0f} s ago), "
            f"took {snapshot.duration:.2f} s.</p>"
        )
        for read in snapshot.banks:
            state = "<span class=up>up</span>" if read.up else "<span class=down>down</span>"
            note = f" <span class=muted>({escape(read.error)})</span>" if read.error else ""
            parts.append(
                f"<h2>Bank {escape(read.name)} <small class=muted>group {read.group}, "
                f"<code>{escape(read.port)}</code></small>: {state}{note}</h2>"
            )
            if not read.modules:
                parts.append("<p class=muted>No modules known yet.</p>")
                continue
            parts.append(
                "<table><tr><th class=l>module</th><th class=l>state</th><th>charge</th>"
                "<th>voltage</th><th>current</th><th>lowest cell</th><th>highest cell</th>"
                "<th>temperature (max)</th><th class=l>active alarms</th></tr>"
            )
            parts.extend(_module_row(m) for m in read.modules)
            parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)
