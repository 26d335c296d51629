"""The real console recordings of ../shared/console (read from there, never copied into
the repository) and helpers for tests of the console source."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pylontech_exporter.console.tables import key_values, number_unit
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.errors import DeadlinePassed, ResponseTimeout
from pylontech_exporter.simulator.console import LineSplitter
from pylontech_exporter.simulator.responder import Reply

from . import REPO

CONSOLE = REPO.parent / "shared" / "console"
TRANSCRIPTS = CONSOLE / "transcripts.json"


def transcript_bytes(record: dict[str, Any]) -> bytes:
    """The device's bytes of a record: ``transcripts/<id>.raw``, or the record's
    ``raw_device_only`` where the stored file carries annotation lines."""
    if "raw_device_only" in record:
        return record["raw_device_only"].encode("latin-1")
    return Path(CONSOLE / "transcripts" / f"{record['id']}.raw").read_bytes()


class ScriptedConsole:
    """A console whose answers a test writes: ``script(line)`` gets each typed line (its
    terminator included) and returns the bytes to send after the echo (None: silence).
    ``received`` lists every line, as the virtual console's does. ``echo=False``: the
    script's bytes are all that is sent."""

    def __init__(self, script: Callable[[bytes], bytes | None], *, echo: bool = True) -> None:
        from pylontech_exporter.simulator import BatteryStack

        self.stack = BatteryStack(modules=1)
        self.script = script
        self.echo = echo
        self.received: list[bytes] = []

    def framer(self) -> LineSplitter:
        return LineSplitter()

    def handle(self, request: bytes) -> Reply:
        self.received.append(request)
        answer = self.script(request)
        if answer is None:
            return Reply(None)
        return Reply(request + answer if self.echo else answer)


def table_answer(rows: list[str], prompt: str = "pylon>") -> bytes:
    """A table answer as the firmware frames it (after the echo)."""
    body = "\r\r\n".join(rows)
    text = f"\r@\r\r\n{body}\r\n\rCommand completed successfully\r\n\r$$\r\n\r{prompt}"
    return text.encode("latin-1")


class ResponderShell:
    """The read plan's view of a console, without a line: each command goes to ``responder``
    (the virtual console) and takes ``step`` seconds of the test's ``clock``; ``asked``
    lists the commands. A reply without ``$$`` (silence, a truncated answer) is a timeout;
    an error answer is CommandFailed, as through the real shell."""

    def __init__(self, responder: Any, clock: list[float], *, step: float = 0.01) -> None:
        from pylontech_exporter.console.shell import CommandStats

        self.responder = responder
        self.clock = clock
        self.step = step
        self.stats = CommandStats()
        self.asked: list[str] = []
        self.transport = SimpleNamespace(is_open=True, generation=1, baudrate=115200)

    def run(self, command: str, deadline: Deadline | None = None) -> Any:
        from pylontech_exporter.console.shell import CommandFailed, check_command, parse_answer

        check_command(command)
        if deadline is not None and deadline.passed():
            raise DeadlinePassed(f"{command}: the deadline passed before it was sent")
        self.asked.append(command)
        self.stats.requests += 1
        self.clock[0] += self.step
        if deadline is not None and deadline.passed():
            raise DeadlinePassed(f"{command}: the deadline came before the answer")
        data = self.responder.handle(command.encode() + b"\n").data
        if data is None or b"$$" not in data:
            self.stats.failures["timeout"] += 1
            raise ResponseTimeout(f"{command}: no answer")
        answer = parse_answer(data.decode("latin-1"), command)
        if not answer.completed:
            self.stats.failures["return_code"] += 1
            raise CommandFailed(command, answer.message)
        return answer

    def close(self) -> None:
        pass


# -- answers the exporter never asks for, parsed to check the recordings of them ---------


@dataclass(frozen=True)
class KeyValues:
    """An answer of ``Key : value unit`` lines (``pwr N``, ``pwrsys``) as printed, and its
    other lines (``Power 1``, ``System is Charge``)."""

    fields: dict[str, str]
    plain: list[str]

    def number(self, key: str) -> tuple[int, str] | None:
        """The integer and unit of ``key`` (None: not printed or not a number)."""
        return number_unit(self.fields[key]) if key in self.fields else None

    def milli(self, key: str) -> float | None:
        found = self.number(key)
        return found[0] / 1000 if found else None

    def word(self, key: str) -> str | None:
        value = self.fields.get(key)
        return value.split()[0] if value else None

    def line(self, pattern: str) -> re.Match[str] | None:
        """The first other line that matches ``pattern``."""
        return next(filter(None, (re.fullmatch(pattern, line) for line in self.plain)), None)


def parse_key_values(lines: Sequence[str]) -> KeyValues:
    fields, plain = key_values(lines)
    return KeyValues(fields, plain)


def printed_time(lines: Sequence[str]) -> str | None:
    """The date and time ``time`` prints."""
    found = re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "\n".join(lines))
    return found.group(0) if found else None


def help_commands(lines: Sequence[str]) -> list[str]:
    """The local commands ``help`` lists."""
    commands: list[str] = []
    local = False
    for line in (line.strip() for line in lines):
        if line.startswith("Local command"):
            local = True
        elif line.startswith(("*", "Remote command")):
            local = False
        elif local and line:
            commands.append(line.split()[0])
    return commands
