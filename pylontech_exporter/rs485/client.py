"""The library API: one method per read command of the Pylontech RS485 protocol.

This is the transaction layer, the only code that touches the bus: it owns the lock
(one request in flight per bus), the retries, the deadline and the request counters.
Nothing here can send a write command; the frame encoder refuses 0x94 and 0x95.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

from ..deadline import Deadline
from ..errors import (
    ANOTHER_MASTER,
    ChecksumError,
    ConsoleAnswer,
    DeadlinePassed,
    FrameError,
    ImplausibleReading,
    PayloadError,
    PylontechError,
    ResponseError,
    ResponseTimeout,
    TransportError,
)
from ..models import (
    MAX_MODULES_PER_GROUP,
    GroupValues,
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
    ModuleSerialNumber,
    ModuleValues,
    ProtocolVersion,
    SoftwareVersion,
    SystemParameters,
    master_address,
)
from ..transport import DEFAULT_BAUDRATE, SerialTransport
from . import commands
from .bank_query import BankQueryPolicy
from .commands import ALL_MODULES_INFO, ReadCommand
from .frame import (
    READ_COMMANDS,
    Frame,
    ReturnCode,
    check_envelope,
    decode_frame,
    encode_request,
)
from .stream import FrameSplitter

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest wait for the silent address that ends a discovery (real modules answer
#: within 80 ms), unless the line's answers take longer (a gateway): then twice the
#: slowest seen.
DISCOVERY_TIMEOUT = 0.5

#: What the RS232 console shell prints around a line it does not understand.
_CONSOLE_MARKS = (b"pylon>", b"try 'help'", b"Command completed")

#: Return codes that mean the request was garbled on the line: worth another try.
_RETRYABLE_CODES = frozenset({ReturnCode.CHKSUM_ERROR, ReturnCode.LCHKSUM_ERROR})


ScanProgress = Callable[[int, Optional[str]], None]


@dataclass
class RequestStats:
    """What went over the bus: requests sent and failures by reason."""

    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    #: The address of the last request heard that this client did not send.
    foreign_request_address: int | None = None


class Pylontech:
    """A Pylontech battery bus.

    ``port`` is any pyserial URL: ``/dev/ttyUSB0``, ``socket://192.168.1.20:8899``,
    ``rfc2217://...``. The port opens on the first request and reopens by itself after a
    failure. ``timeout`` is how long a response may stay silent; ``command_gap`` is the
    minimum pause between commands some manuals ask for; ``retries`` is how often a
    request that got no valid answer is repeated.
    """

    def __init__(
        self,
        port: str = "/dev/ttyUSB0",
        baudrate: int = DEFAULT_BAUDRATE,
        *,
        timeout: float = 1.0,
        command_gap: float = 0.0,
        retries: int = 1,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if retries < 0:
            raise ValueError(f"retries must not be negative, not {retries}")
        self.transport = SerialTransport(
            port, baudrate, framer=FrameSplitter(), command_gap=command_gap
        )
        self.timeout = timeout
        self.retries = retries
        self.stats = RequestStats()
        self._lock = threading.RLock()
        self._local = threading.local()
        #: Per group: does the firmware answer the bank-wide (FF) 0x42 query?
        self._bank_query: dict[int, BankQueryPolicy] = {}
        self._addresses: dict[int, list[int]] = {}
        #: VER of the last answer from each address: the protocol version it speaks.
        self.versions: dict[int, int] = {}
        #: The longest a successful answer's first byte took (seconds after the request).
        self.slowest_answer = 0.0
        #: The last requests sent: a 2-wire adapter echoes them, late ones too.
        self._sent: deque[bytes] = deque(maxlen=4)

    # -- connection ------------------------------------------------------------------

    @property
    def port(self) -> str:
        return self.transport.port

    def close(self) -> None:
        with self._lock:
            self.transport.close()

    def __enter__(self) -> Pylontech:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def deadline(self, when: Deadline | float) -> Iterator[None]:
        """Bound every request made by this thread inside the block by ``when`` (a
        :class:`~pylontech_exporter.deadline.Deadline`, or a :func:`time.monotonic` value):
        waits end when it passes (also when it moves while a request waits), and once it
        has passed requests fail with :class:`DeadlinePassed` without touching the bus."""
        previous = getattr(self._local, "deadline", None)
        deadline = when if isinstance(when, Deadline) else Deadline(when)
        if previous is not None and previous.when < deadline.when:
            deadline = previous
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = previous

    # -- the transaction -------------------------------------------------------------

    def request(
        self,
        address: int,
        command: ReadCommand[Any] | int,
        info: bytes | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Frame:
        """Send one read command (a :mod:`.commands` entry or its CID2) to ``address`` and
        return the response frame (RTN 00 checked). ``info`` defaults to the command's own
        form.

        Raises :class:`ResponseTimeout`, :class:`FrameError` (incl. checksum),
        :class:`ResponseError` for another RTN, :class:`TransportError` when the port
        cannot be used, :class:`DeadlinePassed` when the deadline comes first.
        """
        return self._transact(address, command, info, None, timeout, retries)[0]

    def _transact(
        self,
        address: int,
        command: ReadCommand[Any] | int,
        info: bytes | None,
        parse: Callable[[bytes], T] | None,
        timeout: float | None,
        retries: int | None,
        *,
        silence_is_failure: bool = True,
    ) -> tuple[Frame, T | None]:
        """One request with its retries; the answer parsed by ``parse`` when given."""
        if not isinstance(command, ReadCommand):
            command = commands.lookup(command)
        if info is None:
            info = command.info(address)
        request = encode_request(address, command.code, info)
        attempts = 1 + (self.retries if retries is None else retries)
        wait = self.timeout if timeout is None else timeout
        bank = info == ALL_MODULES_INFO
        deadline: Deadline | None = getattr(self._local, "deadline", None)
        with self._lock:
            attempt = 1
            while True:
                if deadline is not None and deadline.passed():
                    raise DeadlinePassed("the deadline passed before the request was sent")
                try:
                    return self._exchange(address, command, info, bank, request, wait, parse)
                except DeadlinePassed:
                    raise  # the scrape's time is up: not the bus's fault, no retry
                except PylontechError as error:
                    if silence_is_failure or not isinstance(error, ResponseTimeout):
                        self.stats.failures[error.reason] += 1
                    retry = attempt < attempts and _worth_retrying(error)
                    log.debug(
                        "0x%02X to 0x%02X failed (%s)%s",
                        command.code,
                        address,
                        error,
                        ", retrying" if retry else "",
                    )
                    if not retry:
                        raise
                    attempt += 1

    def _exchange(
        self,
        address: int,
        command: ReadCommand[Any],
        info: bytes,
        bank: bool,
        request: bytes,
        timeout: float,
        parse: Callable[[bytes], T] | None,
    ) -> tuple[Frame, T | None]:
        transport = self.transport
        deadline: Deadline | None = getattr(self._local, "deadline", None)
        self.stats.requests += 1
        self._sent.append(request)
        transport.send(request, deadline)
        sent = time.monotonic()
        # However much the line chatters, one answer takes its wire time after the wait
        # for its first byte.
        wire = command.max_answer_bytes(bank) * 10 / transport.baudrate
        limit = sent + timeout + wire
        while True:
            raw = transport.read_frame(timeout, limit, deadline)
            if any(mark in raw for mark in _CONSOLE_MARKS):
                raise ConsoleAnswer(
                    "this port answers like the RS232 console: use --serial.protocol console"
                )
            response = decode_frame(raw)
            if response.cid2 in READ_COMMANDS:
                # A request, not an answer: our own echoed by a 2-wire adapter, or another
                # master's (counted: the two collide).
                if raw not in self._sent:
                    self.stats.failures[ANOTHER_MASTER] += 1
                    self.stats.foreign_request_address = response.address
                log.debug("ignoring a request frame to 0x%02X", response.address)
                continue
            if response.address != address:
                # A late answer to an earlier request, or another master's traffic.
                log.debug(
                    "ignoring a frame from 0x%02X while waiting for 0x%02X",
                    response.address,
                    address,
                )
                continue
            if not command.answers(info, address, response):
                log.debug("ignoring a late answer to an earlier request to 0x%02X", address)
                continue
            check_envelope(response)
            if response.cid2 != ReturnCode.NORMAL:
                raise ResponseError(response.cid2, address)
            self.versions[address] = response.version
            first_byte = time.monotonic() - sent - len(raw) * 10 / transport.baudrate
            self.slowest_answer = max(self.slowest_answer, first_byte)
            if parse is None:
                return response, None
            try:
                return response, parse(response.info)
            except ImplausibleReading:
                raise
            except PayloadError as error:
                # Well-formed and from the right address, but not this command's answer:
                # the rest of an earlier one (a bank-wide 0x44 read as 0x42, say).
                log.debug("ignoring an answer that does not decode: %s", error)
                continue

    # -- one method per read command -------------------------------------------------

    def _read(
        self,
        command: ReadCommand[T],
        address: int,
        *,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> T:
        reading = self._transact(address, command, None, command.parse, timeout, retries)[1]
        assert reading is not None
        return reading

    def _read_bank(self, command: ReadCommand[T], group: int) -> list[T]:
        answer = command.bank_answer
        assert answer is not None
        readings = self._transact(
            master_address(group),
            command,
            ALL_MODULES_INFO,
            lambda info: answer.parse(info, group),
            None,
            None,
        )[1]
        assert readings is not None
        return readings

    def get_values_single(self, address: int) -> ModuleValues:
        """Analog values of the module at ``address`` (0x42)."""
        return self._read(commands.VALUES, address)

    def get_values_bank(self, group: int = 0) -> GroupValues:
        """Analog values of every module of ``group`` in one bank-wide query (0x42, FF).

        Raises :class:`PylontechError` when the firmware does not answer it."""
        return GroupValues(group, tuple(self._read_bank(commands.VALUES, group)))

    def get_values(self, group: int = 0) -> GroupValues:
        """Analog values of every module of ``group``: bank-wide when the firmware
        answers it, else module by module (the modules found by :meth:`discover`).

        A bank-wide answer lists the modules by position, not by address: when it holds
        fewer modules than discovery found, which one is missing is unknown, so the
        modules are read one by one instead."""
        policy = self._bank_query.setdefault(group, BankQueryPolicy())
        if policy.should_ask():
            try:
                values = self.get_values_bank(group)
            except TransportError:
                raise
            except PylontechError as error:
                if policy.failed() is None:
                    log.info("group %d ignores the bank-wide query (%s)", group, error)
            else:
                policy.answered()
                known = self._addresses.get(group)
                if not known or len(values.modules) >= len(known):
                    return values
        addresses = self._addresses.get(group) or self.discover(group)
        return GroupValues(group, tuple(self.get_values_single(a) for a in addresses))

    def get_alarm_info(self, address: int) -> ModuleAlarms:
        """Alarm and protection state of the module at ``address`` (0x44)."""
        return self._read(commands.ALARMS, address)

    def get_alarm_info_bank(self, group: int = 0) -> list[ModuleAlarms]:
        """Alarm info of every module of ``group`` in one bank-wide query (0x44, FF)."""
        return self._read_bank(commands.ALARMS, group)

    def get_system_parameters(self, address: int) -> SystemParameters:
        """Protection thresholds of the module at ``address`` (0x47)."""
        return self._read(commands.PARAMETERS, address)

    def get_management_info(self, address: int) -> ManagementInfo:
        """Charge/discharge limits and requests of the module at ``address`` (0x92)."""
        return self._read(commands.MANAGEMENT, address)

    def get_module_serial_number(self, address: int) -> ModuleSerialNumber:
        """Serial number of the module at ``address`` (0x93)."""
        return self._read(commands.SERIAL_NUMBER, address)

    def get_software_version(self, address: int) -> SoftwareVersion:
        """Firmware version of the module at ``address`` (0x96)."""
        return self._read(commands.SOFTWARE_VERSION, address)

    def get_manufacturer_info(self, address: int) -> ManufacturerInfo:
        """Device and manufacturer name (0x51); every module answers with the master's."""
        return self._read(commands.MANUFACTURER, address)

    def get_protocol_version(self, address: int) -> ProtocolVersion:
        """Protocol version spoken by the module at ``address`` (0x4F)."""
        return ProtocolVersion.from_ver(self.request(address, commands.PROTOCOL_VERSION).version)

    # -- discovery -------------------------------------------------------------------

    def probe(
        self, address: int, timeout: float | None = None, *, ending: bool = False
    ) -> ModuleSerialNumber | None:
        """The serial number of the module at ``address``, or None when nothing answers
        there. An answer with an error code or a garbled one is raised.

        ``ending``: the address is beyond every module known, and its silence ends a
        discovery: that is an answer, not a failure, asked once and waited for at most
        DISCOVERY_TIMEOUT (twice the slowest answer seen on a slower line). Otherwise
        (the master, a known module) the probe is an ordinary request: the client's
        timeout and retries, and silence counts as a ``timeout`` failure."""
        serial = commands.SERIAL_NUMBER
        if ending:
            wait = timeout or min(self.timeout, max(DISCOVERY_TIMEOUT, 2 * self.slowest_answer))
            retries: int | None = 0
        else:
            wait, retries = timeout or self.timeout, None
        try:
            return self._transact(
                address, serial, None, serial.parse, wait, retries, silence_is_failure=not ending
            )[1]
        except ResponseTimeout:
            return None

    def discover(self, group: int = 0, *, timeout: float | None = None) -> list[int]:
        """Addresses of the modules of ``group``: from the master upward until the first
        address that stays silent (an answer with an error code or a bad checksum still
        means a module is there; bytes that are not a frame do not). ``timeout`` is the
        wait for that silent address (default: see :meth:`probe`); the master gets the
        client's timeout."""
        found = []
        first = master_address(group)
        for address in range(first, first + MAX_MODULES_PER_GROUP):
            try:
                ending = address != first
                if self.probe(address, timeout if ending else None, ending=ending) is None:
                    break
            except (ResponseError, ChecksumError):
                pass
            except FrameError:
                break
            found.append(address)
        self._addresses[group] = found
        return found

    def scan_for_batteries(
        self,
        start: int = 2,
        end: int = 0x80,
        *,
        timeout: float = 0.3,
        progress: ScanProgress | None = None,
    ) -> dict[int, str]:
        """Probe every address in ``range(start, end)`` for a serial number.

        Returns address -> serial number. ``progress(address, serial_or_None)`` is called
        after each address. Each silent address costs ``timeout`` seconds, without retry.
        """
        batteries = {}
        for address in range(max(start, 1), min(end, 0xFF)):
            serial_number = None
            try:
                serial = self._read(commands.SERIAL_NUMBER, address, timeout=timeout, retries=0)
                serial_number = serial.serial_number
                batteries[address] = serial_number
            except TransportError:
                raise
            except PylontechError as error:
                log.debug("no battery at 0x%02X: %s", address, error)
            if progress is not None:
                progress(address, serial_number)
        return batteries


def _worth_retrying(error: PylontechError) -> bool:
    """Everything but a deliberate refusal: a battery that answered "ADR error" will say
    it again, while a garbled, lost or reset exchange (the port reopens) may well pass."""
    if isinstance(error, ResponseError):
        return error.code in _RETRYABLE_CODES
    return not isinstance(error, ConsoleAnswer)
