"""Decoding another master's traffic: requests paired with their answers.

On a bus where an inverter is the master, every frame is either a request (CID2 is a
command) or an answer (CID2 is a return code: the two sets do not overlap). An answer is
decoded as the answer to the request just before it when that request went to the same
address, with the same command table and codec the client uses; the command, the INFO
form (bank-wide FF or one module) and the group all come from that request. An answer
whose request was lost (a collision, noise) is decoded from its shape where exactly one
read command's declaration parses it, else counted and dropped.

Knows nothing about time beyond the timestamps handed in, nor about the line: feed it
the candidate frames the framer cut (:meth:`BusDecoder.feed`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from ..errors import FrameError, ImplausibleReading, PayloadError
from ..models import MAX_MODULES_PER_GROUP
from ..snapshot import HeardPoll
from .commands import ALL_MODULES_INFO, COMMANDS, ReadCommand
from .frame import READ_COMMANDS, Frame, ReturnCode, check_envelope, decode_frame

#: An answer this long after its request is not taken as its answer (a 16-module bank
#: answer takes 2 s at 9600 Bd; the first byte comes within 0.1 s).
PAIRING_WINDOW = 5.0
#: Groups 0..7 (DIP switches 2-4 of the master).
GROUPS = 8
#: Request intervals kept per command and address for the poll period.
PERIOD_SAMPLES = 16
#: Frame kinds counted, and the reasons a frame heard could not be used.
FRAME_KINDS = ("request", "answer", "error_answer")
DECODE_FAILURES = ("checksum", "frame", "implausible", "payload", "orphan", "unknown_command")


def group_of(address: int) -> int | None:
    """The group an address belongs to (``None``: none): group m has ``0x02 + 0x10*m``
    to ``0x11 + 0x10*m``."""
    group, offset = divmod(address - 2, 0x10)
    return group if 0 <= group < GROUPS and 0 <= offset < MAX_MODULES_PER_GROUP else None


@dataclass(frozen=True)
class Answer:
    """One decoded answer: ``readings`` maps module address to the typed reading."""

    command: ReadCommand[Any]
    group: int
    #: The address the answer came from (the master's for a bank-wide answer).
    address: int
    #: The bank-wide (FF) form: ``readings`` covers the group's modules in order.
    bank: bool
    readings: dict[int, Any]
    #: VER of the answer: the protocol version the module speaks.
    version: int
    at: float
    #: Decoded from its shape: its request was not heard.
    orphan: bool = False


@dataclass
class GroupTraffic:
    """What was heard of one group: counters by kind and reason, poll intervals."""

    frames: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FRAME_KINDS, 0))
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECODE_FAILURES, 0))
    unanswered: int = 0
    #: Requests heard per form (command name, address asked, INFO as hex).
    polled: dict[tuple[str, int, str], int] = field(default_factory=dict)
    #: Per form: seconds between consecutive requests.
    intervals: dict[tuple[str, int, str], deque[float]] = field(default_factory=dict)

    def poll_periods(self) -> dict[str, float]:
        """Per command: the median interval between the master's requests of it to one
        address (the longest over the addresses it asks)."""
        periods: dict[str, float] = {}
        for (name, _address, _info), samples in self.intervals.items():
            if samples:
                periods[name] = max(periods.get(name, 0.0), median(samples))
        return periods

    def polls(self) -> list[HeardPoll]:
        """What the master asks, in the order first heard."""
        heard = []
        for form, count in self.polled.items():
            samples = self.intervals.get(form)
            heard.append(HeardPoll(*form, count, median(samples) if samples else None))
        return heard


@dataclass
class _Request:
    frame: Frame
    at: float
    group: int | None


class BusDecoder:
    """Pairs answers with requests and decodes them; counts everything per group."""

    def __init__(self, window: float = PAIRING_WINDOW) -> None:
        self.window = window
        self.traffic: dict[int, GroupTraffic] = {}
        #: Frames that could not be given a group (corrupt beyond their address).
        self.unattributed: dict[str, int] = dict.fromkeys(DECODE_FAILURES, 0)
        self._pending: _Request | None = None
        self._last_request: dict[tuple[str, int, str], float] = {}

    def group_traffic(self, group: int) -> GroupTraffic:
        return self.traffic.setdefault(group, GroupTraffic())

    def feed(self, raw: bytes, at: float) -> Answer | None:
        """One candidate frame (``~`` .. CR) heard at ``at``: the answer it completes,
        decoded, or None (a request, an error answer, or something unusable, counted)."""
        try:
            frame = decode_frame(raw)
        except FrameError as error:
            self._pending = None  # most likely its answer, garbled: not unanswered
            self._fail(_raw_group(raw), error.reason)
            return None
        group = group_of(frame.address)
        if frame.cid2 not in _RETURN_CODES:
            self._request(frame, at, group)
            return None
        request, self._pending = self._pending, None
        if group is None:
            self._fail(None, "frame")
            return None
        traffic = self.group_traffic(group)
        if frame.cid2 != ReturnCode.NORMAL:
            traffic.frames["error_answer"] += 1
            return None
        traffic.frames["answer"] += 1
        try:
            check_envelope(frame)
        except FrameError as error:
            self._fail(group, error.reason)
            return None
        if (
            request is not None
            and request.frame.address == frame.address
            and at - request.at <= self.window
        ):
            return self._paired(request.frame, frame, group, at)
        return self._orphan(frame, group, at)

    def _request(self, frame: Frame, at: float, group: int | None) -> None:
        if self._pending is not None and self._pending.group is not None:
            self.group_traffic(self._pending.group).unanswered += 1
        self._pending = _Request(frame, at, group)
        if group is None:
            self._fail(None, "frame")
            return
        traffic = self.group_traffic(group)
        traffic.frames["request"] += 1
        command = COMMANDS.get(frame.cid2)
        name = command.name if command is not None else f"0x{frame.cid2:02X}"
        form = (name, frame.address, frame.info.hex().upper())
        traffic.polled[form] = traffic.polled.get(form, 0) + 1
        previous = self._last_request.get(form)
        if previous is not None:
            traffic.intervals.setdefault(form, deque(maxlen=PERIOD_SAMPLES)).append(at - previous)
        self._last_request[form] = at

    def _paired(self, request: Frame, answer: Frame, group: int, at: float) -> Answer | None:
        command = COMMANDS.get(request.cid2)
        if command is None or request.cid2 not in READ_COMMANDS:
            self._fail(group, "unknown_command")
            return None
        bank = request.info == ALL_MODULES_INFO and command.bank_answer is not None
        try:
            readings = _decode(command, bank, answer, group)
        except PayloadError as error:
            self._fail(group, error.reason if isinstance(error, ImplausibleReading) else "payload")
            return None
        return Answer(command, group, answer.address, bank, readings, answer.version, at)

    def _orphan(self, answer: Frame, group: int, at: float) -> Answer | None:
        """The answer of a request not heard: decoded when exactly one form parses it."""
        found = [
            Answer(command, group, answer.address, bank, readings, answer.version, at, True)
            for command, bank in _ANSWER_FORMS
            if (readings := _decode_as(command, bank, answer, group)) is not None
        ]
        if len(found) != 1:
            self._fail(group, "orphan")
            return None
        return found[0]

    def _fail(self, group: int | None, reason: str) -> None:
        reason = reason if reason in DECODE_FAILURES else "frame"
        counts = self.unattributed if group is None else self.group_traffic(group).failures
        counts[reason] += 1


_RETURN_CODES = frozenset(code.value for code in ReturnCode)


#: The answers an orphan may be: (command, bank-wide form). Only forms that say whose they
#: are: per-module answers that repeat the address, and the bank-wide ones (0x47 and 0x51
#: answers look alike at every address and could be anything of their size).
_ANSWER_FORMS = [(c, False) for c in COMMANDS.values() if c.echo_offset is not None] + [
    (c, True) for c in COMMANDS.values() if c.bank_answer is not None
]


def _decode_as(
    command: ReadCommand[Any], bank: bool, answer: Frame, group: int
) -> dict[int, Any] | None:
    """``answer`` decoded as ``command``'s answer, or None when it is not one."""
    if not bank and not command.answers(bytes([answer.address]), answer.address, answer):
        return None
    try:
        return _decode(command, bank, answer, group)
    except PayloadError:
        return None


def _decode(command: ReadCommand[Any], bank: bool, answer: Frame, group: int) -> dict[int, Any]:
    if command.answer is None:  # 0x4F: what it says is in the VER of its answer
        return {}
    if bank:
        assert command.bank_answer is not None
        modules = command.bank_answer.parse(answer.info, group)
        return {answer.address + index: reading for index, reading in enumerate(modules)}
    return {answer.address: command.parse(answer.info)}


def _raw_group(raw: bytes) -> int | None:
    """The group of a frame that does not decode, from its ADR field if that is legible."""
    try:
        return group_of(int(raw[3:5], 16))
    except ValueError:
        return None
