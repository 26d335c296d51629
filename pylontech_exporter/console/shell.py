"""The console client: one read-only command at a time through the ``pylon>`` shell.

The shell echoes what is typed, prints ``@``, the answer, ``Command completed
successfully`` (an error answer has no such line) and ends every answer with ``$$`` and
its prompt: ``pylon>``, ``pylon_debug>`` when a console was left logged in, ``PYTES>`` on
clones. Lines end in any mix of CR and LF (bridges and adapters strip CRs), so lines are
split on runs of them. Every CR and every LF is an Enter to the shell: a command is sent
with one terminator (LF, as in every published capture).

Read-only by construction: :func:`check_command` refuses every command that is not on
the allow-list (reads: ``pwr``, ``bat``, ``stat``, ``info``, ``soh``, optionally with a
battery number, ``unit``, ``time`` and ``pwrsys`` without arguments) before a byte is
written, the way the RS485 encoder refuses 0x94 and 0x95. The shell has commands that
change the battery (setting the time, ``shut``, ``config``, ``log`` clearing, ``login``):
none can pass. The only other bytes this client sends are a lone terminator (an empty
line: a new prompt, to find the shell again after noise, and the answer to a pager
prompt) and, with ``wakeup``, the documented 1200-baud switch frame of old firmware.

A prompt lost in noise does not lose the answer (it ends at ``$$``); the next command
first sends an empty line and waits for a prompt (resynchronisation). A pager prompt
(``Press [Enter] to be continued``) is answered with Enter; the allow-list holds no
paged command. Every wait is bounded by the caller's deadline.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from ..config import CONSOLE_BAUDRATE
from ..deadline import Deadline
from ..errors import (
    DeadlinePassed,
    FrameError,
    PylontechError,
    ResponseError,
    ResponseTimeout,
    WriteCommandRefused,
)
from ..logging_setup import kv
from ..transport import SerialTransport

log = logging.getLogger(__name__)

#: Every command this client may send (and nothing else): reads only.
ALLOWED = re.compile(r"(?:(?:pwr|bat|stat|info|soh)(?: (?:[1-9]|1[0-6]))?|unit|time|pwrsys)")
TERMINATOR = b"\n"
PROMPTS = (b"pylon_debug>", b"pylon>", b"PYTES>")
PAGER = b"Press [Enter] to be continued"
#: Old US2000B/US3000 consoles start at 1200 baud; this RS232-protocol frame (sent at
#: 1200 8N1) switches them to 115200 (docs/console.md).
WAKEUP_FRAME = b"~20014682C0048520FCC3\r"
WAKEUP_BAUDRATE = 1200
#: Seconds to wait after the frame before talking at the new rate.
WAKEUP_PAUSE = 1.0
#: Empty lines sent to find the prompt before giving up (1 s apart with ``wakeup``).
RESYNC_TRIES = 3
#: The longest answer taken (a 16-battery ``pwr`` of the widest layout is about 4 kB,
#: ``stat`` of the newest firmware 5 kB); beyond it the bytes are dropped as noise.
MAX_ANSWER_BYTES = 16384
#: After ``$$`` the prompt follows at once; this long without it means it was lost.
PROMPT_GRACE = 0.1
#: More pages than this: something is wrong (the allow-list holds no paged command).
MAX_PAGES = 20

_BOUNDARY = re.compile(
    rb"\$\$[\r\n]+|"
    + b"|".join(re.escape(p) for p in PROMPTS)
    + rb"|"
    + re.escape(PAGER)
    + rb"[^\r\n]{0,80}[\r\n]"
)
#: A boundary is at most this long: new bytes are searched from this far back.
_LOOKBACK = len(PAGER) + 82
_PROMPT_AT_END = re.compile(rb"(?:" + b"|".join(re.escape(p) for p in PROMPTS) + rb")\Z")
#: The same in decoded text, blanks after it allowed.
_PROMPT_TEXT_AT_END = re.compile(
    "(?:" + "|".join(re.escape(p.decode()) for p in PROMPTS) + r")\s*\Z"
)
_COMPLETED = re.compile(r"Command completed successfully!?")


class CommandRefused(WriteCommandRefused):
    """A command outside the read-only allow-list. Nothing was sent."""


class CommandFailed(PylontechError):
    """The shell answered with an error (no ``Command completed successfully``):
    ``Invalid command or fail to excute.``, ``Unknown command ...``, ... Counted as the
    RS485 return codes are: the battery said no."""

    reason = ResponseError.reason

    def __init__(self, command: str, message: str) -> None:
        super().__init__(f"{command!r}: {message}")
        self.command = command
        self.message = message


def check_command(command: str) -> str:
    """``command`` if it is on the allow-list, else :class:`CommandRefused`."""
    if not isinstance(command, str) or not ALLOWED.fullmatch(command):
        raise CommandRefused(
            f"{command!r} is not a read command of the allow-list (pwr, bat, stat, info, soh "
            "[1..16], unit, time, pwrsys); this client never changes the battery"
        )
    return command


class AnswerSplitter:
    """Cuts the console's bytes into units: an answer up to ``$$`` and its line end, a
    prompt (with whatever came before it), or a page up to the pager prompt."""

    max_frame_bytes = MAX_ANSWER_BYTES

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        # Bytes often come one at a time (pyserial's socket:// reads so): only the new
        # ones, and a boundary's length before them, are searched.
        start = max(0, len(self._buffer) - _LOOKBACK)
        self._buffer += data
        units: list[bytes] = []
        while True:
            found = _BOUNDARY.search(self._buffer, start)
            if found is None:
                if len(self._buffer) > MAX_ANSWER_BYTES:
                    self._buffer.clear()
                return units
            units.append(bytes(self._buffer[: found.end()]))
            del self._buffer[: found.end()]
            start = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def clear(self) -> None:
        self._buffer.clear()


def is_prompt(unit: bytes) -> bool:
    return _PROMPT_AT_END.search(unit) is not None


def is_page(unit: bytes) -> bool:
    return PAGER in unit


def lines_of(text: str) -> list[str]:
    """Lines split on any run of CR and LF, trailing spaces removed, empty ones dropped."""
    return [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]


@dataclass(frozen=True)
class Answer:
    """One answer of the shell. ``lines``: the body, without echo, ``@``, the completion
    line, ``$$`` and the prompt."""

    command: str
    lines: tuple[str, ...]
    completed: bool
    #: The lines before ``@`` (the echo, possibly after a prompt: ``pylon>bat 1``).
    echo: tuple[str, ...] = ()
    prompt: str | None = None
    #: The answer came in pages (a pager prompt was answered).
    paged: bool = False

    @property
    def message(self) -> str:
        """An error answer's first line (``Invalid command or fail to excute.``)."""
        return self.lines[0] if self.lines else "no answer text"

    @property
    def usage(self) -> str | None:
        """The line after ``Usage:`` of an error answer."""
        for line, following in zip(self.lines, self.lines[1:]):
            if line.strip() == "Usage:":
                return following.strip()
        return None

    def echoes(self, command: str) -> bool:
        """Whether this answers ``command`` (its echo ends with it)."""
        wanted = command.strip()
        return any(line.strip().endswith(wanted) for line in self.echo)


def parse_answer(text: str, command: str, *, paged: bool = False) -> Answer:
    """The answer in ``text`` (one unit or more of :class:`AnswerSplitter`, decoded as
    latin-1) to ``command``."""
    prompt = None
    found = _PROMPT_TEXT_AT_END.search(text)
    if found:
        prompt = found.group(0).strip()
        text = text[: found.start()]
    end = text.rfind("$$")
    if end >= 0:
        text = text[:end]
    lines = [line for line in lines_of(text) if not line.lstrip().startswith(PAGER.decode())]
    at = next((i for i, line in enumerate(lines[:6]) if line.strip() == "@"), None)
    if at is not None:
        echo, body = lines[:at], lines[at + 1 :]
    elif lines and lines[0].strip().endswith(command.strip()):
        echo, body = lines[:1], lines[1:]
    else:
        echo, body = [], lines
    completed = any(_COMPLETED.fullmatch(line.strip()) for line in body)
    body = [line for line in body if not _COMPLETED.fullmatch(line.strip())]
    return Answer(command, tuple(body), completed, tuple(echo), prompt, paged)


@dataclass
class CommandStats:
    """What went over the line: commands sent and failures by reason."""

    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)


class ConsoleShell:
    """The console on ``port`` (any pyserial URL). ``timeout`` bounds silence;
    ``retries`` repeats a command whose answer was lost or garbled (not an error
    answer); ``wakeup`` switches an old 1200-baud console to ``baudrate`` when no prompt
    answers."""

    def __init__(
        self,
        port: str,
        baudrate: int = CONSOLE_BAUDRATE,
        *,
        timeout: float = 1.0,
        command_gap: float = 0.0,
        retries: int = 1,
        wakeup: bool = False,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.framer = AnswerSplitter()
        self.transport = SerialTransport(
            port, baudrate, framer=self.framer, command_gap=command_gap
        )
        self.timeout = timeout
        self.retries = retries
        self.wakeup = wakeup
        self.stats = CommandStats()
        #: Whether the shell is known to be at its prompt (nothing typed pending).
        self.synced = False
        #: The prompt seen last.
        self.prompt: str | None = None
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> str:
        return self.transport.port

    def close(self) -> None:
        with self._lock:
            self.transport.close()
            self.synced = False

    def __enter__(self) -> ConsoleShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, command: str, deadline: Deadline | None = None) -> Answer:
        """The answer to ``command``; :class:`CommandFailed` for an error answer."""
        answer = self.ask(command, deadline)
        if not answer.completed:
            self.stats.failures[CommandFailed.reason] += 1
            raise CommandFailed(command, answer.message)
        return answer

    def ask(self, command: str, deadline: Deadline | None = None) -> Answer:
        """The answer to ``command``, error answers included. Raises
        :class:`CommandRefused` (nothing sent), :class:`ResponseTimeout`,
        :class:`FrameError`, :class:`TransportError`, :class:`DeadlinePassed`."""
        check_command(command)
        with self._lock:
            attempt = 0
            while True:
                if deadline is not None and deadline.passed():
                    raise DeadlinePassed("the deadline passed before the command was sent")
                self.stats.requests += 1
                try:
                    if not self.synced or self.transport.generation != self._generation:
                        self._resync(deadline)
                    return self._exchange(command, deadline)
                except DeadlinePassed:
                    self.synced = False
                    raise
                except PylontechError as error:
                    self.synced = False
                    self.stats.failures[error.reason] += 1
                    attempt += 1
                    if attempt > self.retries:
                        raise
                    log.debug("%r failed (%s), retrying", command, error)

    # -- the exchange -------------------------------------------------------------------

    def _exchange(self, command: str, deadline: Deadline | None) -> Answer:
        transport = self.transport
        transport.send(command.encode("ascii") + TERMINATOR, deadline)
        pages: list[bytes] = []
        limit = self._answer_limit()
        while True:
            unit = transport.read_frame(self.timeout, limit, deadline)
            if is_page(unit):
                if len(pages) >= MAX_PAGES:
                    raise FrameError(f"{command!r}: more than {MAX_PAGES} pages")
                pages.append(unit)
                transport.send(TERMINATOR, deadline)  # Enter: the next page
                limit = self._answer_limit()
                continue
            prompt = is_prompt(unit)
            text = b"".join([*pages, unit]).decode("latin-1")
            answer = parse_answer(text, command, paged=bool(pages))
            if b"$$" not in unit and not (
                pages or any(line.strip() == "@" for line in lines_of(text))
            ):
                continue  # a prompt after an extra Enter, not an answer that lost its $$
            if not answer.echoes(command):
                # A late answer to an earlier command, or noise before a prompt.
                log.debug("ignoring an answer that is not to %r: %r", command, text[:60])
                pages = []
                continue
            if prompt:
                self._synced_at(answer.prompt)
            else:
                self._await_prompt(limit, deadline)
            return replace(answer, prompt=self.prompt) if self.synced else answer

    def _answer_limit(self) -> float:
        """When an answer (or a page) asked for now must have ended: the silence allowed
        plus the longest answer's time on the wire."""
        return time.monotonic() + self.timeout + self.transport.longest_frame_seconds

    def _synced_at(self, prompt: str | None) -> None:
        self.synced = True
        self._generation = self.transport.generation
        if prompt and prompt != self.prompt:
            log.debug("console prompt %s", prompt)
            self.prompt = prompt

    def _await_prompt(self, limit: float, deadline: Deadline | None) -> None:
        """The prompt that follows ``$$``; without it the next command resynchronises."""
        try:
            unit = self.transport.read_frame(PROMPT_GRACE, limit, deadline)
        except (ResponseTimeout, DeadlinePassed):
            log.debug("the prompt after an answer did not come; resynchronising next time")
            self.synced = False
            return
        if is_prompt(unit):
            found = _PROMPT_AT_END.search(unit)
            self._synced_at(found.group(0).decode() if found else None)
        else:
            self.synced = False

    def _resync(self, deadline: Deadline | None) -> None:
        """Send an empty line until a prompt answers (waking an old console up when
        ``wakeup`` is set); raises ResponseTimeout when none does."""
        tries = RESYNC_TRIES if self.wakeup else 1
        for attempt in range(tries):
            if self.wakeup and attempt:
                self._wake(deadline)
            if self._find_prompt(deadline):
                return
        raise ResponseTimeout(f"no prompt from the console on {self.port}")

    def _find_prompt(self, deadline: Deadline | None) -> bool:
        transport = self.transport
        transport.send(TERMINATOR, deadline)
        limit = time.monotonic() + self.timeout
        try:
            while True:
                unit = transport.read_frame(self.timeout, limit, deadline)
                if is_prompt(unit):
                    found = _PROMPT_AT_END.search(unit)
                    self._synced_at(found.group(0).decode() if found else None)
                    return True
        except ResponseTimeout:
            return False

    def _wake(self, deadline: Deadline | None) -> None:
        """The 1200-baud switch frame, a pause, then the configured rate again."""
        log.info("waking the console up", extra=kv(port=self.port, baud=WAKEUP_BAUDRATE))
        self.transport.close()
        slow = SerialTransport(self.port, WAKEUP_BAUDRATE, framer=AnswerSplitter())
        try:
            slow.send(WAKEUP_FRAME, deadline)
            pause = WAKEUP_PAUSE
            if deadline is not None and deadline.remaining() < pause:
                raise DeadlinePassed("no time left to wake the console up")
            time.sleep(pause)
        finally:
            slow.close()
