"""The console client over a real line (pyserial on TCP and a pty): read-only by its
allow-list, one terminator per command, answers framed at ``$$`` and the prompt
(whichever prompt, with CRs or without), error answers, a lost prompt, a truncated answer,
junk, a stale answer, the pager and the old-firmware wakeup. Asserted on what was asked on
the line and what came back, never on wall time."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from support.console import ScriptedConsole, table_answer

from pylontech_exporter.console import shell as shell_module
from pylontech_exporter.console.shell import (
    ALLOWED,
    PAGER,
    PROMPTS,
    WAKEUP_FRAME,
    AnswerSplitter,
    CommandFailed,
    CommandRefused,
    ConsoleShell,
    check_command,
    lines_of,
)
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.errors import DeadlinePassed, ResponseTimeout, WriteCommandRefused
from pylontech_exporter.simulator import BatteryStack
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator

WRITES = [
    "time 2026 1 1 0 0 0",
    "shut",
    "config",
    "log clear",
    "log",
    "pwr 1 off",
    "login debug",
    "logout",
    "trst",
    "updata",
    "help",
    "data event",
    "bat 1 2",
    "bat 0",
    "bat 17",
    "pwr ",
    " pwr",
    "PWR",
    "pwr\nshut",
    "pwr\rshut",
    "",
]
READS = [
    "pwr",
    "pwr 1",
    "bat",
    "bat 16",
    "stat",
    "stat 3",
    "info",
    "info 2",
    "soh",
    "soh 4",
    "unit",
    "time",
    "pwrsys",
]


@pytest.fixture
def stack() -> BatteryStack:
    stack = BatteryStack(modules=["US5000", "US2000C"], seed=5)
    stack.freeze()
    return stack


@pytest.fixture
def console(stack: BatteryStack):
    responder = ConsoleResponder(stack)
    with TcpSimulator(responder, latency=0) as server:
        yield responder, server


def shell_on(url: str, **options) -> ConsoleShell:
    return ConsoleShell(url, timeout=options.pop("timeout", 0.3), **options)


# --- read-only by construction ----------------------------------------------------------------


@pytest.mark.parametrize("command", WRITES)
def test_every_command_outside_the_allow_list_is_refused_before_a_byte_is_written(console, command):
    responder, server = console
    shell = shell_on(server.url)
    with pytest.raises(CommandRefused):
        shell.run(command)
    with pytest.raises(CommandRefused):
        shell.ask(command)
    assert server.received == 0 and not responder.received
    assert shell.stats.requests == 0 and not shell.transport.is_open


@pytest.mark.parametrize("command", READS)
def test_the_reads_are_allowed(command):
    assert check_command(command) == command


#: Commands of the real shells (help listings in ../shared/console) that are not reads,
#: or not only reads, or not with these arguments.
SHELL_COMMANDS_NOT_ALLOWED = [
    "data",
    "datalist",
    "disp",
    "getpwr",
    "login",
    "shut",
    "trst",
    "config",
    "log",
    "time 2026 1 1 0 0 0",
    "bat 1 x",
]
#: What this test allows, written apart from the client's ALLOWED: a read word, with a
#: battery 1..16 for those that take one.
READ_COMMAND = re.compile(r"(pwr|bat|stat|info|soh)( ([1-9]|1[0-6]))?|unit|time|pwrsys")


@pytest.mark.parametrize("command", SHELL_COMMANDS_NOT_ALLOWED)
def test_the_shell_commands_that_are_not_reads_are_not_in_the_allow_list(command):
    assert not ALLOWED.fullmatch(command)
    with pytest.raises(CommandRefused):
        check_command(command)


def test_a_refused_console_command_is_the_packages_one_refusal_of_a_write():
    with pytest.raises(WriteCommandRefused) as refused:
        check_command("shut")
    assert isinstance(refused.value, CommandRefused) and refused.value.reason == "refused"


def test_the_allow_list_takes_a_battery_number_1_to_16_only():
    for n in range(0, 40):
        assert bool(ALLOWED.fullmatch(f"bat {n}")) == (1 <= n <= 16)


def test_what_the_client_sends_is_commands_of_the_allow_list_and_enters(console):
    responder, server = console
    shell = shell_on(server.url)
    for command in ("pwr", "bat 1", "stat 2", "info 1", "soh 2", "time", "bat 2"):
        shell.run(command)
    with pytest.raises(CommandFailed):
        shell.run("unit")  # Pylontech LV firmware: unknown command
    sent = [line.rstrip(b"\n").decode() for line in responder.received]
    assert sent[0] == ""  # the first command looks for the prompt with one Enter
    assert all(s == "" or READ_COMMAND.fullmatch(s) for s in sent), sent
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in responder.received)
    assert b"\r" not in b"".join(responder.received)  # one terminator, not CRLF


# --- answers -----------------------------------------------------------------------------------


def test_an_answer_on_tcp_and_on_a_pty(stack, tmp_path: Path):
    responder = ConsoleResponder(stack)
    with PtySimulator(responder, tmp_path / "console", latency=0) as pty:
        answer = shell_on(pty.link).run("pwr")
    with TcpSimulator(ConsoleResponder(stack), latency=0) as tcp:
        over_tcp = shell_on(tcp.url).run("pwr")
    assert answer.completed and answer.prompt == "pylon>" and answer.echo == ("pwr",)
    assert answer.lines[0].startswith("Power Volt") and len(answer.lines) == 17
    assert [line.split()[:2] for line in answer.lines[1:]] == [
        line.split()[:2] for line in over_tcp.lines[1:]
    ]


@pytest.mark.parametrize("prompt", ["pylon>", "pylon_debug>", "PYTES>"])
@pytest.mark.parametrize("strip", ["", "\r", "\n"])
def test_any_prompt_and_any_mix_of_line_ends(prompt, strip):
    """Bridges and adapters strip CRs (or LFs): lines are split on runs of either."""

    def script(line: bytes) -> bytes | None:
        text = f"\r{prompt}" if line == b"\n" else table_answer(["Battery Volt", "0 3331"], prompt)
        if isinstance(text, bytes):
            text = text.decode()
        return text.replace(strip, "").encode() if strip else text.encode()

    scripted = ScriptedConsole(script)
    with TcpSimulator(scripted, latency=0) as tcp:
        shell = shell_on(tcp.url)
        answer = shell.run("bat 1")
    assert answer.lines == ("Battery Volt", "0 3331") and answer.completed
    assert shell.prompt == prompt and shell.synced


def test_prompts_before_the_answer_are_skipped():
    """Every CR and LF is an Enter: after a CRLF or a terminal's keystrokes, prompts come
    before the echo of the next command."""

    def script(line: bytes) -> bytes:
        if line == b"\n":
            return b"\n\rpylon>"
        return b"\r\n\rpylon>\n\rpylon>pylon>" + line + table_answer(["Power 1"])

    with TcpSimulator(ScriptedConsole(script, echo=False), latency=0) as tcp:
        answer = shell_on(tcp.url).run("pwr")
    assert answer.lines == ("Power 1",) and answer.completed


def test_an_echo_and_a_prompt_without_an_answer_is_a_lost_answer_not_an_error():
    """A line the shell took and did not answer (no ``@``, no ``$$``) is retried, not
    counted as the battery saying no."""
    answered = []

    def script(line: bytes) -> bytes:
        if line == b"\n":
            return b"\rpylon>"
        answered.append(line)
        return b"\r\n\rpylon>" if len(answered) == 1 else table_answer(["Power 1"])

    scripted = ScriptedConsole(script)
    with TcpSimulator(scripted, latency=0) as tcp:
        shell = shell_on(tcp.url, timeout=0.2)
        answer = shell.run("pwr")
    assert answer.lines == ("Power 1",) and answer.completed
    assert answered == [b"pwr\n", b"pwr\n"]
    assert shell.stats.failures == {"timeout": 1}


def test_an_error_answer_is_command_failed_and_not_repeated(console):
    responder, server = console
    shell = shell_on(server.url)
    with pytest.raises(CommandFailed, match="Command failed"):
        shell.run("bat 9")  # no 9th battery in the stack: an error answer
    answer = shell.ask("bat 9")
    assert not answer.completed and answer.message == "Command failed"
    assert [line for line in responder.received if line.startswith(b"bat")] == [b"bat 9\n"] * 2
    assert shell.stats.failures["return_code"] == 1 and shell.synced


def test_a_lost_prompt_keeps_the_answer_and_the_next_command_resynchronises(console, stack):
    responder, server = console
    stack.faults.add("prompt", command="bat", count=1)
    shell = shell_on(server.url)
    answer = shell.run("bat 1")
    assert answer.completed and len(answer.lines) == 16
    assert not shell.synced
    shell.run("bat 2")
    assert list(responder.received) == [b"\n", b"bat 1\n", b"\n", b"bat 2\n"]
    assert shell.synced and shell.stats.failures == {}


def test_a_truncated_answer_is_a_timeout_and_the_retry_reads_it(console, stack):
    responder, server = console
    stack.faults.add("truncate", command="bat", count=1)
    shell = shell_on(server.url)
    answer = shell.run("bat 2")
    assert answer.completed and len(answer.lines) == 16
    assert list(responder.received) == [b"\n", b"bat 2\n", b"\n", b"bat 2\n"]
    assert shell.stats.failures["timeout"] == 1 and shell.stats.requests == 2


def test_silence_is_a_timeout_after_the_retries(console, stack):
    responder, server = console
    stack.faults.add("drop", command="stat")
    shell = shell_on(server.url, retries=2)
    with pytest.raises(ResponseTimeout):
        shell.run("stat 1")
    assert [line for line in responder.received if line != b"\n"] == [b"stat 1\n"] * 3
    assert shell.stats.failures["timeout"] == 3


@pytest.mark.parametrize("fault", ["junk", "nul", "stale", "trickle"])
def test_junk_nuls_a_stale_answer_and_a_slow_trickle_leave_the_answer_right(console, stack, fault):
    _, server = console
    shell = shell_on(server.url, timeout=0.5)
    clean = shell.run("bat 1").lines
    shell.run("pwr")  # the answer a stale fault repeats is pwr's
    stack.faults.add(fault, command="bat", size=2000 if fault == "trickle" else 40)
    assert shell.run("bat 1").lines == clean
    assert shell.stats.failures == {}


def test_a_page_is_continued_with_enter():
    pages = [b"\r@\r\r\nfirst\r\n\r" + PAGER + b",other key to exit\r", b"\rsecond\r\n"]

    def script(line: bytes) -> bytes | None:
        if line == b"\n" and len(pages) == 1:  # Enter at the pager
            return pages.pop() + b"\rCommand completed successfully\r\n\r$$\r\n\rpylon>"
        if line == b"\n":
            return b"\rpylon>"
        return pages.pop(0)

    scripted = ScriptedConsole(script)
    with TcpSimulator(scripted, latency=0) as tcp:
        answer = shell_on(tcp.url).run("stat")
    assert answer.lines == ("first", "second") and answer.paged and answer.completed
    assert scripted.received == [b"\n", b"stat\n", b"\n"]


def test_the_deadline_bounds_the_wait(console, stack):
    responder, server = console
    stack.faults.add("delay", command="pwr", seconds=30.0)
    shell = shell_on(server.url, timeout=30.0)
    with pytest.raises(DeadlinePassed):
        shell.run("pwr", Deadline(shell_module.time.monotonic() + 0.3))
    with pytest.raises(DeadlinePassed):
        shell.run("pwr", Deadline(shell_module.time.monotonic() - 1))
    assert [line for line in responder.received if line != b"\n"] == [b"pwr\n"]


def test_wakeup_sends_the_switch_frame_then_finds_the_prompt(monkeypatch):
    """An old console stays silent until the 1200-baud frame switched it over."""
    monkeypatch.setattr(shell_module, "WAKEUP_PAUSE", 0.01)
    awake = []

    def script(line: bytes) -> bytes | None:
        if line == WAKEUP_FRAME[:-1] + b"\r":
            awake.append(True)
            return None
        if not awake:
            return None
        return b"\rpylon>" if line == b"\n" else table_answer(["Power 1"])

    scripted = ScriptedConsole(script)
    with TcpSimulator(scripted, latency=0) as tcp:
        answer = shell_on(tcp.url, wakeup=True, timeout=0.2).run("pwr")
    assert answer.lines == ("Power 1",)
    assert scripted.received == [b"\n", WAKEUP_FRAME, b"\n", b"pwr\n"]


def test_without_wakeup_a_silent_console_gets_no_frame():
    scripted = ScriptedConsole(lambda line: None)
    with TcpSimulator(scripted, latency=0) as tcp, pytest.raises(ResponseTimeout):
        shell_on(tcp.url, timeout=0.1, retries=1).run("pwr")
    assert scripted.received == [b"\n", b"\n"]  # one Enter per attempt, nothing else


# --- the framer ------------------------------------------------------------------------------


def test_units_end_at_dollars_at_a_prompt_and_at_a_pager_prompt():
    splitter = AnswerSplitter()
    stream = b"\rpylon>pwr\n\r@\r\r\nrow\r\n\r$$\r\n\rPYTES>" + PAGER + b", other\r tail"
    units = splitter.feed(stream)
    assert units == [
        b"\rpylon>",
        b"pwr\n\r@\r\r\nrow\r\n\r$$\r\n\r",
        b"PYTES>",
        PAGER + b", other\r",
    ]
    assert splitter.buffered == len(b" tail")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_an_answer_ends_at_any_of_the_prompts(prompt):
    text = f"pwr\n\r@\r\nrow\r\n\r$$\r\n\r{prompt.decode()} \r\n"
    answer = shell_module.parse_answer(text, "pwr")
    assert answer.prompt == prompt.decode() and answer.lines == ("row",)


def test_the_longest_answer_the_splitter_takes_fits_in_the_time_an_answer_is_given():
    shell = shell_on("socket://127.0.0.1:9", timeout=1.0)
    asked = time.monotonic()
    wire = shell_module.MAX_ANSWER_BYTES * 10 / shell.transport.baudrate
    assert shell._answer_limit() - asked >= 1.0 + wire


def test_a_flood_without_a_boundary_is_dropped():
    splitter = AnswerSplitter()
    assert splitter.feed(b"x" * (shell_module.MAX_ANSWER_BYTES + 1)) == []
    assert splitter.buffered == 0
    assert splitter.feed(b"pylon>") == [b"pylon>"]


def test_lines_are_split_on_any_run_of_cr_and_lf():
    assert lines_of("a\r\r\nb\n\rc\rd\n\n\ne  \r\n   \r\n") == ["a", "b", "c", "d", "e"]
