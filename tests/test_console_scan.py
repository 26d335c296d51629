"""``pylontech-exporter scan`` on a console port: the batteries ``pwr`` lists, in order,
each with the barcode, device name and firmware of its ``info N``; over a real line (a pty
and TCP) against the virtual console, and as the command line prints it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.processes import run_cli
from support.stacks import frozen_stack

from pylontech_exporter.config import SerialSettings
from pylontech_exporter.console.scan import Battery, scan
from pylontech_exporter.errors import PylontechError
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator


def settings(port: str) -> SerialSettings:
    return SerialSettings(port, 115200, timeout=0.3, protocol="console")


def scanned(port: str) -> list[Battery]:
    found: list[Battery] = []
    scan(settings(port), found.append)
    return found


def test_scan_lists_the_batteries_of_pwr_with_their_info_on_a_pty(tmp_path: Path):
    stack = frozen_stack(modules=["US5000", "US2000C", "US3000C", "US2000C"])
    stack.remove_module(4)  # battery 3: an Absent row
    responder = ConsoleResponder(stack, firmware="B69.16")
    with PtySimulator(responder, tmp_path / "console", latency=0) as pty:
        found = scanned(pty.link)
    assert found == [
        Battery(n, m.serial_number, m.model.device_name, "B69.16.0.0")
        for n, m in ((1, stack.modules[0]), (2, stack.modules[1]), (4, stack.modules[3]))
    ]
    asked = [line.strip().decode() for line in responder.received]
    assert asked == ["", "pwr", "info 1", "info 2", "info 4"]  # reads only


def test_a_battery_whose_info_n_fails_is_listed_with_what_is_not_known():
    stack = frozen_stack(modules=2)
    responder = ConsoleResponder(stack, firmware="B1.4.0.0")  # the US3000D rejects info N
    with TcpSimulator(responder, latency=0) as tcp:
        found = scanned(tcp.url)
    assert found == [
        Battery(1, "?", "?", "? (return_code)"),
        Battery(2, "?", "?", "? (return_code)"),
    ]


def test_a_console_that_does_not_answer_pwr_is_an_error():
    stack = frozen_stack(modules=2)
    stack.faults.add("drop", command="pwr")
    with TcpSimulator(ConsoleResponder(stack), latency=0) as tcp, pytest.raises(PylontechError):
        scanned(tcp.url)


def test_the_scan_command_on_a_console_port():
    stack = frozen_stack(modules=3, model="US3000C")
    with TcpSimulator(ConsoleResponder(stack), latency=0) as tcp:
        result = run_cli("scan", "--serial.protocol", "console", "--serial.port", tcp.url)
    assert result.returncode == 0, result.stderr
    assert f"reading pwr on the console {tcp.url} at 115200 baud" in result.stderr
    rows = [line.split() for line in result.stdout.strip().splitlines()[1:]]
    assert rows == [
        [tcp.url, f"0x{m.address:02X}", "0", str(n), m.serial_number, "B69.16.0.0", "(US3000C)"]
        for n, m in enumerate(stack.modules, start=1)
    ]


def test_the_scan_command_says_what_to_check_when_the_console_is_silent():
    stack = frozen_stack(modules=1)
    stack.faults.add("drop")
    with TcpSimulator(ConsoleResponder(stack), latency=0) as tcp:
        result = run_cli(
            "scan", "--serial.protocol", "console", "--serial.port", tcp.url,
            "--serial.timeout", "0.2",
        )  # fmt: skip
    assert result.returncode == 1
    assert f"the console on {tcp.url} did not answer pwr" in result.stderr
    assert "--console.wakeup" in result.stderr
