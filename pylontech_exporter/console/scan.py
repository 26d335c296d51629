"""``pylontech-exporter scan`` on a console port: the batteries ``pwr`` lists, with the
barcode and firmware of their ``info N``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import SerialSettings
from ..errors import PylontechError
from . import tables
from .shell import ConsoleShell


@dataclass(frozen=True)
class Battery:
    """One battery ``pwr`` lists as present."""

    index: int
    serial_number: str
    device_name: str
    firmware: str


def scan(
    settings: SerialSettings, found: Callable[[Battery], None], shell: ConsoleShell | None = None
) -> None:
    """``found(battery)`` for each battery present in ``pwr``, in order, as its ``info N``
    answers ("?" for what it does not give: the US3000D rejects ``info N``). Raises
    PylontechError when ``pwr`` does not answer."""
    console = shell or ConsoleShell(
        settings.port,
        settings.baudrate,
        timeout=settings.timeout,
        command_gap=settings.command_gap,
        wakeup=settings.console_wakeup,
    )
    try:
        table = tables.parse_pwr(console.run("pwr").lines)
        if not table.columns:
            raise PylontechError(table.problems[0])
        for row in table.present:
            try:
                identity = tables.parse_info(console.run(f"info {row.index}").lines).identity()
            except PylontechError as error:
                found(Battery(row.index, "?", "?", f"? ({error.reason})"))
                continue
            found(
                Battery(
                    row.index,
                    identity.serial_number or "?",
                    identity.device_name or "?",
                    identity.main_software_version or "?",
                )
            )
    finally:
        if shell is None:
            console.close()
