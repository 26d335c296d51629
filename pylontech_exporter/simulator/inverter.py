"""A virtual inverter: the bus master that polls the stack, as inverters do.

Many inverters read the battery over this protocol themselves. A :class:`PollProfile`
says what one kind asks and how often; :class:`Inverter` turns it into the request
frames of one poll cycle, built with the real encoder (which refuses the write
commands). The servers in :mod:`.serve` put those requests on the line and the stack's
answers after them, so a listener beside the "inverter" hears what it would hear on a
real bus.

Profiles follow published captures: an FF bank-wide 0x42 once a second (the live capture
in DESIGN.md, ``~20024642E002FFFD09``); per-module 0x42, 0x44 and 0x92; per-module with
a 2-byte INFO (address, then 01) as one published client sends; and a full poll that also
reads the static data.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import master_address
from ..rs485.commands import ALL_MODULES_INFO
from ..rs485.frame import Command, encode_request
from .battery import BatteryStack

#: INFO forms of a request: the group's master with FF (bank-wide), the module's address
#: (one module), the address and 01 (2-byte INFO), or none (0x47/0x4F/0x51 to the master).
FORMS = ("bank", "module", "module2", "none")


@dataclass(frozen=True)
class Poll:
    """One request kind of a cycle: ``command`` in INFO ``form``."""

    command: Command
    form: str

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"unknown poll form {self.form!r}; one of {', '.join(FORMS)}")

    def requests(self, stack: BatteryStack, group: int) -> list[bytes]:
        """This poll's requests to ``group``: one per present module, or one to the master."""
        master = master_address(group)
        if self.form == "bank":
            return [encode_request(master, self.command, ALL_MODULES_INFO)]
        if self.form == "none":
            return [encode_request(master, self.command)]
        extra = b"\x01" if self.form == "module2" else b""
        return [
            encode_request(m.address, self.command, bytes([m.address]) + extra)
            for m in stack.group_modules(group)
        ]


@dataclass(frozen=True)
class PollProfile:
    """What one kind of inverter asks each cycle, and the cycle's period in seconds."""

    name: str
    description: str
    polls: tuple[Poll, ...]
    period: float
    #: Pause after each answer before the next request of the cycle.
    gap: float = 0.02


_P = Poll
PROFILES: dict[str, PollProfile] = {
    profile.name: profile
    for profile in (
        PollProfile(
            "bank",
            "bank-wide 0x42 (INFO FF) once a second",
            (_P(Command.ANALOG_VALUES, "bank"),),
            period=1.0,
        ),
        PollProfile(
            "per-module",
            "0x42, 0x44 and 0x92 of each module every 2 s",
            (
                _P(Command.ANALOG_VALUES, "module"),
                _P(Command.ALARM_INFO, "module"),
                _P(Command.MANAGEMENT_INFO, "module"),
            ),
            period=2.0,
        ),
        PollProfile(
            "two-byte",
            "0x42, 0x44, 0x92 and 0x96 of each module with a 2-byte INFO every 3 s",
            (
                _P(Command.ANALOG_VALUES, "module2"),
                _P(Command.ALARM_INFO, "module2"),
                _P(Command.MANAGEMENT_INFO, "module2"),
                _P(Command.SOFTWARE_VERSION, "module2"),
            ),
            period=3.0,
        ),
        PollProfile(
            "full",
            "bank-wide 0x42 and 0x44, then 0x92, 0x93, 0x96 and 0x47 of each module, "
            "0x51 and 0x4F of the master, every 2 s",
            (
                _P(Command.ANALOG_VALUES, "bank"),
                _P(Command.ALARM_INFO, "bank"),
                _P(Command.MANAGEMENT_INFO, "module"),
                _P(Command.SERIAL_NUMBER, "module"),
                _P(Command.SOFTWARE_VERSION, "module"),
                _P(Command.SYSTEM_PARAMETERS, "module"),
                _P(Command.MANUFACTURER_INFO, "none"),
                _P(Command.PROTOCOL_VERSION, "none"),
            ),
            period=2.0,
        ),
    )
}


def get_profile(name: str) -> PollProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown inverter profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None


class Inverter:
    """Plays ``profile`` against ``stack``: the requests of each cycle, every group."""

    def __init__(
        self, stack: BatteryStack, profile: PollProfile, period: float | None = None
    ) -> None:
        self.stack = stack
        self.profile = profile
        self.period = profile.period if period is None else period
        if self.period <= 0:
            raise ValueError(f"the poll period must be positive, not {self.period}")
        #: Cycles played so far.
        self.cycles = 0

    def cycle(self) -> list[bytes]:
        """The request frames of one poll cycle, in the order they go on the bus."""
        self.cycles += 1
        return [
            request
            for group in self.stack.groups
            for poll in self.profile.polls
            for request in poll.requests(self.stack, group)
        ]
