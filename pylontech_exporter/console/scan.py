"""``pylontech-exporter scan`` on a console port: the batteries ``pwr`` lists, with the
barcode and firmware of their ``info N``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import SerialSettings
from ..errors import PylontechError
from . import tables
from .reader import default_shell


@dataclass(frozen=True)
class Battery:
    """One battery ``pwr`` lists as present."""

    index: int
    serial_number: str
    device_name: str
    firmware: str


def scan(settings: SerialSettings, found: Callable[[Battery], None]) -> None:
    """``found(battery)`` for each battery present in ``pwr``, in order, as its ``info N``
    answers ("?" for what it does not give: the US3000D rejects ``info N``). Raises
    PylontechError when ``pwr`` does not answer."""
    console = default_shell(settings)
    try:
        table = tables.parse_pwr(console.run("pwr").lines).checked()
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
        console.close()
