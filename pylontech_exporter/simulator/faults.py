"""Fault injection: programmable misbehaviour of the bus and the modules.

A :class:`FaultPlan` holds :class:`Fault` entries. For every request that gets an
answer, each entry whose filter matches (``address``, ``command``; None = any) fires
with ``probability`` (drawn from the plan's own seeded RNG, so faults never disturb the
battery physics) as long as its ``count`` is not used up (None = forever); ``count``
counts firings. Several faults may fire on one request; they compose in a fixed order:
drop, then rtn / wrong_address (frame level), then chksum / lchksum / lenid / truncate,
then stale, junk and nul (byte level), delay on top. Silence is never turned into an
answer. A disabled plan (no entries) costs one length check per request.

The same faults are written on the command line as ``kind[:key=value,...]``, see
:func:`parse_fault` and :data:`FAULT_HELP`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..rs485.frame import frame_checksum, length_checksum


class FaultKind(str, enum.Enum):
    JUNK = "junk"
    NUL = "nul"
    CHKSUM = "chksum"
    LCHKSUM = "lchksum"
    LENID = "lenid"
    TRUNCATE = "truncate"
    DROP = "drop"
    DELAY = "delay"
    RTN = "rtn"
    WRONG_ADDRESS = "wrong_address"
    STALE = "stale"
    VANISH = "vanish"
    NOBANK = "nobank"
    INFLATE = "inflate"
    IMPLAUSIBLE = "implausible"
    #: Console only: the answer without its final prompt; the answer dribbling out.
    PROMPT = "prompt"
    TRICKLE = "trickle"


FAULT_HELP = """\
fault SPEC is KIND[:KEY=VALUE,...]; integers may be hex (0x42). KINDS:
  junk           random bytes (never '~' or CR) before the answer; size=N (4)
  nul            N NUL bytes after the answer's CR; size=N (3)
  chksum         (RS485) wrong CHKSUM
  lchksum        (RS485) wrong LCHKSUM nibble (CHKSUM matches the corrupted frame)
  lenid          (RS485) LENID 2 more than the INFO length (LCHKSUM and CHKSUM match it)
  truncate       only the first size=N bytes (half the frame), no CR
  drop           no answer at all
  delay          answer seconds=S (1.0) late
  rtn            answer with RTN code=C (0x91) and empty INFO
  wrong_address  (RS485) answer from ADR to=A (request ADR + 1)
  stale          an old answer (the previous one) first, in the same write
  vanish         module=A is unplugged (silent, missing from bank answers)
  nobank         (RS485) the master ignores FF: no answer to the bank-wide query
  inflate        (RS485) a bank-wide answer lists size=N modules (20), the last one repeated
  implausible    (RS485) an 0x42 answer reports cell 1 at 0xFFFF (-0.001 V), checksum right
  prompt         (console) the answer without the prompt after its $$
  trickle        (console) the answer at size=N bytes per second (100)
KEYS (filters and firing, all kinds): address=A, command=C (only requests to that
address / with that CID2; on the console the module a command names, bat 2 being
address 3, and the command word, command=bat), count=N (fire N times, then never), p=P
(probability per request, default 1). e.g. junk:p=0.02  drop:address=3,count=5
rtn:code=0x90,address=4  rtn:command=bat,address=3"""


@dataclass
class Fault:
    """One fault. Which of ``seconds``, ``code``, ``size``, ``module``, ``to`` matter
    depends on ``kind`` (see :data:`FAULT_HELP`). ``fired`` counts firings."""

    kind: FaultKind
    address: int | None = None
    #: A CID2, or a console command word (``bat``).
    command: int | str | None = None
    count: int | None = None
    probability: float = 1.0
    seconds: float = 1.0
    code: int = 0x91
    size: int | None = None
    module: int | None = None
    to: int | None = None
    fired: int = 0

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within 0..1, not {self.probability}")
        if self.kind is FaultKind.VANISH and self.module is None:
            raise ValueError("vanish needs module=ADDRESS")

    def matches(self, address: int, command: int | str) -> bool:
        return (self.address is None or self.address == address) and (
            self.command is None or self.command == command
        )


class FaultPlan:
    """The faults of one stack, with their own RNG (seeded from the stack's seed)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(f"faults-{seed}")
        self._faults: list[Fault] = []

    def add(self, kind: FaultKind | str, **options: object) -> Fault:
        """Add a fault, e.g. ``plan.add("drop", address=3, count=5)``; returns it."""
        fault = Fault(FaultKind(kind), **options)  # type: ignore[arg-type]
        self._faults.append(fault)
        return fault

    def extend(self, faults: Iterable[Fault]) -> None:
        self._faults.extend(faults)

    def remove(self, fault: Fault) -> None:
        self._faults.remove(fault)

    def clear(self) -> None:
        self._faults.clear()

    def __iter__(self) -> Iterator[Fault]:
        return iter(list(self._faults))

    def __len__(self) -> int:
        return len(self._faults)

    def draw(self, address: int, command: int | str, kinds: frozenset[FaultKind]) -> list[Fault]:
        """The faults of ``kinds`` that fire for this request (counts are consumed)."""
        if not self._faults:
            return []
        fired = []
        for fault in self._faults:
            if fault.kind not in kinds or not fault.matches(address, command):
                continue
            if fault.count is not None and fault.count <= 0:
                continue
            if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                continue
            if fault.count is not None:
                fault.count -= 1
            fault.fired += 1
            fired.append(fault)
        return fired

    def junk(self, size: int) -> bytes:
        return bytes(self.rng.choice(_JUNK_BYTES) for _ in range(size))


_JUNK_BYTES = bytes(b for b in range(256) if b not in b"~\r")

#: Faults that change what the answer says (the responder builds it so).
CONTENT_FAULTS = frozenset(
    {FaultKind.VANISH, FaultKind.NOBANK, FaultKind.INFLATE, FaultKind.IMPLAUSIBLE}
)
#: Faults that change how the answer looks on the wire.
WIRE_FAULTS = frozenset(FaultKind) - CONTENT_FAULTS
#: Faults only the console honours (RS485 never draws them).
CONSOLE_ONLY_FAULTS = frozenset({FaultKind.PROMPT, FaultKind.TRICKLE})


def _reseal(body: bytes) -> bytes:
    """``~`` + body + a CHKSUM matching it + CR."""
    return b"~" + body + b"%04X\r" % frame_checksum(body)


def corrupt_chksum(frame: bytes) -> bytes:
    body, checksum = frame[1:-5], int(frame[-5:-1], 16)
    return b"~" + body + b"%04X\r" % ((checksum + 1) & 0xFFFF)


def corrupt_lchksum(frame: bytes) -> bytes:
    body = bytearray(frame[1:-5])
    length = int(body[8:12], 16)
    body[8:12] = b"%04X" % (length ^ 0x1000)
    return _reseal(bytes(body))


def corrupt_lenid(frame: bytes) -> bytes:
    body = bytearray(frame[1:-5])
    lenid = (int(body[8:12], 16) & 0xFFF) + 2
    body[8:12] = b"%04X" % ((length_checksum(lenid) << 12) | lenid)
    return _reseal(bytes(body))


_INT_KEYS = {"address", "command", "count", "code", "size", "module", "to"}
_FLOAT_KEYS = {"p": "probability", "seconds": "seconds"}


def parse_fault(spec: str) -> Fault:
    """``kind[:key=value,...]`` -> :class:`Fault`; ``ValueError`` with a readable
    message for anything else."""
    kind_text, _, options_text = spec.partition(":")
    try:
        kind = FaultKind(kind_text.strip())
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown fault kind {kind_text!r} (known: {known})") from None
    options: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in options_text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or (key not in _INT_KEYS and key not in _FLOAT_KEYS):
            raise ValueError(f"bad fault option {item!r} in {spec!r}")
        try:
            if key in _FLOAT_KEYS:
                options[_FLOAT_KEYS[key]] = float(value)
            elif key == "command" and value.strip().isalpha():
                options[key] = value.strip()  # a console command word
            else:
                options[key] = int(value, 0)
        except ValueError:
            raise ValueError(f"bad value in fault option {item!r}") from None
    return Fault(kind, **options)  # type: ignore[arg-type]
