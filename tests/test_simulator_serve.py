"""The simulator on a real pty and a real TCP socket, through pyserial, and its CLI."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

from pylontech_exporter.rs485.client import Pylontech
from pylontech_exporter.rs485.frame import decode_frame, encode_request
from pylontech_exporter.rs485.payloads import ANALOG_VALUES, ANALOG_VALUES_BANK, SERIAL
from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator, serve_tcp

pytestmark = pytest.mark.timeout(30)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def exchange(port: serial.SerialBase, request: bytes) -> bytes:
    port.write(request)
    answer = port.read_until(b"\r")
    assert answer.endswith(b"\r"), f"incomplete answer {answer!r}"
    return answer


def test_pty_serves_pyserial(pty_simulator: PtySimulator, stack: BatteryStack) -> None:
    link = pty_simulator.link
    assert os.path.realpath(link) == pty_simulator.device
    for _ in range(2):  # the client closes and reopens the device
        with serial.Serial(link, 115200, timeout=2) as port:
            frame = decode_frame(exchange(port, encode_request(3, 0x42, b"\x03")))
            assert ANALOG_VALUES.parse(frame.info) == stack.module(3).values()
            # Noise before a request and two requests in one write.
            port.write(b"\x00\xff" + encode_request(2, 0x93, b"\x02") + encode_request(4, 0x4F))
            first = decode_frame(port.read_until(b"\r"))
            second = decode_frame(port.read_until(b"\r"))
            assert SERIAL.parse(first.info).serial_number == stack.module(2).serial_number
            assert (second.address, second.cid2) == (4, 0)


def test_pty_silence_for_missing_module(pty_simulator: PtySimulator) -> None:
    with serial.Serial(pty_simulator.link, timeout=0.3) as port:
        port.write(encode_request(9, 0x42, b"\x09"))
        assert port.read_until(b"\r") == b""


def test_tcp_serves_pyserial(tcp_simulator: TcpSimulator, stack: BatteryStack) -> None:
    assert re.fullmatch(r"socket://127\.0\.0\.1:\d+", tcp_simulator.url)
    for _ in range(2):  # sequential connections
        port = serial.serial_for_url(tcp_simulator.url, timeout=2)
        try:
            info = decode_frame(exchange(port, encode_request(2, 0x42, b"\xff"))).info
            values = ANALOG_VALUES_BANK.parse(info, 0)
            assert values == [m.values() for m in stack.modules]
        finally:
            port.close()


def test_tcp_private_gateway_clients_get_their_own_answers(stack: BatteryStack) -> None:
    with TcpSimulator(Rs485Responder(stack), latency=0, gateway="private") as server:
        a = serial.serial_for_url(server.url, timeout=2)
        b = serial.serial_for_url(server.url, timeout=2)
        try:
            assert decode_frame(exchange(a, encode_request(3, 0x4F))).address == 3
            assert decode_frame(exchange(b, encode_request(4, 0x4F))).address == 4
            assert decode_frame(exchange(a, encode_request(2, 0x4F))).address == 2
            assert a.in_waiting == b.in_waiting == 0
        finally:
            a.close()
            b.close()


def test_tcp_broadcast_gateway_shows_every_client_all_bus_traffic(
    tcp_simulator: TcpSimulator,
) -> None:
    """Like an RS485-to-Ethernet converter: another client hears the request and its answer."""
    assert tcp_simulator.gateway == "broadcast"
    asker = serial.serial_for_url(tcp_simulator.url, timeout=2)
    listener = serial.serial_for_url(tcp_simulator.url, timeout=2)
    try:
        time.sleep(0.1)  # both connected before the first byte
        request = encode_request(3, 0x93, b"\x03")
        answer = exchange(asker, request)
        heard = listener.read_until(b"\r") + listener.read_until(b"\r")
        assert heard == request + answer
        assert tcp_simulator.received == len(request)
    finally:
        asker.close()
        listener.close()


def test_our_client_reads_right_beside_another_master(
    stack: BatteryStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a broadcast gateway our client sees another master's requests and the
    answers to them; it takes only the answers to its own requests. The reads go on until
    the client has skipped both a foreign request and a foreign answer (the proof that
    the traffic did interleave), every one of them right."""
    caplog.set_level(logging.DEBUG, logger="pylontech_exporter.rs485.client")
    stack.freeze()
    with TcpSimulator(Rs485Responder(stack), latency=0.01) as server:
        stop = threading.Event()

        def other_master() -> None:
            with serial.serial_for_url(server.url, timeout=0.5) as port:
                while not stop.wait(0.02):  # an inverter polls every second; this is busier
                    port.write(encode_request(2, 0x42, b"\xff"))
                    port.read_until(b"\r")

        thread = threading.Thread(target=other_master, daemon=True)
        thread.start()
        try:
            skipped: set[str] = set()
            with Pylontech(server.url, timeout=1.0, retries=3) as bus:
                for _ in range(500):
                    assert bus.get_module_serial_number(3) == stack.module(3).serial()
                    assert bus.get_management_info(4) == stack.module(4).management()
                    skipped |= {
                        r.getMessage().split(" 0x")[0]
                        for r in caplog.records
                        if r.getMessage().startswith("ignoring a")
                    }
                    if len(skipped) >= 2:
                        break
            assert skipped == {"ignoring a request frame to", "ignoring a frame from"}
        finally:
            stop.set()
            thread.join(5)


def test_a_client_with_250_ms_windows_3_tries_and_1_s_gaps_reads_every_module(
    stack: BatteryStack, tmp_path: Path
) -> None:
    """Published clients read with a 250 ms window, try 3 times and leave 1 s between
    commands: at 9600 Bd with the 70 ms latency of real modules, the longest answer fits
    one window, and a line left quiet for a second still answers."""
    stack.freeze()
    with PtySimulator(Rs485Responder(stack), tmp_path / "bus", baudrate=9600) as pty:
        port = serial.Serial(pty.link, 9600, timeout=0.25)
        try:
            answers = []
            for module in stack.modules[:2]:
                request = encode_request(module.address, 0x42, bytes([module.address]))
                for _ in range(3):
                    port.reset_input_buffer()
                    port.write(request)
                    answer = port.read_until(b"\r")
                    if answer.endswith(b"\r"):
                        break
                answers.append(decode_frame(answer))
                time.sleep(1.0)
        finally:
            port.close()
    assert [ANALOG_VALUES.parse(a.info) for a in answers] == [m.values() for m in stack.modules[:2]]


def test_wire_speed_latency_and_fault_delay(stack: BatteryStack) -> None:
    request = encode_request(2, 0x42, b"\x02")
    size = len(Rs485Responder(stack).respond(request))
    assert 120 <= size <= 160
    with TcpSimulator(Rs485Responder(stack), baudrate=9600, latency=0) as server:
        port = serial.serial_for_url(server.url, timeout=2)
        try:
            started = time.monotonic()
            exchange(port, request)
            paced = time.monotonic() - started
            assert size * 10 / 9600 <= paced < 0.5
        finally:
            port.close()
    stack.faults.add("delay", seconds=0.3, count=1)
    with serve_tcp(Rs485Responder(stack), latency=0.1) as server:
        port = serial.serial_for_url(server.url, timeout=2)
        try:
            started = time.monotonic()
            exchange(port, request)
            assert time.monotonic() - started >= 0.4  # latency + fault delay
            started = time.monotonic()
            exchange(port, request)
            assert 0.1 <= time.monotonic() - started < 0.35
        finally:
            port.close()


def test_stop_leaks_no_thread_or_fd(stack: BatteryStack, tmp_path: Path) -> None:
    threads, fds = threading.active_count(), _fds()
    for _ in range(3):
        with (
            PtySimulator(Rs485Responder(stack), tmp_path / "bat", latency=0) as pty,
            TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        ):
            assert threading.active_count() == threads + 2
            port = serial.serial_for_url(tcp.url, timeout=2)
            exchange(port, encode_request(2, 0x4F))  # a connected client when we stop
            with serial.Serial(pty.link, timeout=2) as device:
                exchange(device, encode_request(2, 0x4F))
        port.close()
    assert threading.active_count() == threads
    assert _fds() == fds
    assert not os.path.lexists(tmp_path / "bat")


def test_pty_refuses_to_replace_a_regular_file(stack: BatteryStack, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        PtySimulator(Rs485Responder(stack), path).start()
    assert path.read_text() == "keep me"


# --- the CLI -------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pylontech_exporter.simulator.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_cli_pty(tmp_path: Path) -> None:
    link = tmp_path / "battery"
    process = _cli("--pty", str(link), "--modules", "2", "--model", "US5000", "--latency", "0")
    try:
        line = process.stdout.readline()
        assert re.fullmatch(rf"listening on {re.escape(str(link))} -> /dev/pts/\d+\n", line)
        with serial.Serial(str(link), timeout=2) as port:
            values = ANALOG_VALUES.parse(
                decode_frame(exchange(port, encode_request(3, 0x42, b"\x03"))).info
            )
            assert values.total_capacity == 100.0 and values.address == 3
    finally:
        _stop(process)
    assert not link.exists()


def test_cli_tcp_with_fault() -> None:
    process = _cli("--tcp", "127.0.0.1:0", "--latency", "0", "--fault", "rtn:code=0x90,address=4")
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"listening on (socket://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        port = serial.serial_for_url(match.group(1), timeout=2)
        try:
            assert decode_frame(exchange(port, encode_request(4, 0x4F))).cid2 == 0x90
            assert decode_frame(exchange(port, encode_request(3, 0x4F))).cid2 == 0
        finally:
            port.close()
    finally:
        _stop(process)


def test_cli_mixed_stack_with_16_cells_on_a_private_gateway() -> None:
    process = _cli(
        "--tcp", "127.0.0.1:0", "--latency", "0", "--gateway", "private",
        "--model", "US3000C,US2000B-Plus", "--cells", "16",
    )  # fmt: skip
    try:
        url = re.fullmatch(r"listening on (\S+)\n", process.stdout.readline()).group(1)
        with Pylontech(url, timeout=1) as bus:
            values = bus.get_values_bank(0).modules
            assert [len(v.cell_voltages) for v in values] == [16, 16]
            assert [v.total_capacity for v in values] == [74.0, 50.0]
            assert all(v.extended_capacity for v in values)  # the master's form
    finally:
        _stop(process)
    assert "US3000C,US2000B-Plus modules at 0x02 0x03" in process.stderr.read()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--modules", "3"], "one of the arguments --pty --tcp is required"),
        (["--tcp", "nowhere"], "expected HOST:PORT"),
        (["--tcp", ":0", "--model", "US9000"], "known: US2000B-Plus"),
        (["--tcp", ":0", "--fault", "explode"], "unknown fault kind"),
        (["--tcp", ":0", "--modules", "17"], "--modules must be 1..16"),
        (["--pty", "/nonexistent/dir/bat"], "cannot listen"),
        (["--tcp", ":0", "--model", "US3000C,US2000C", "--modules", "3"], "lists 2 models"),
        (["--tcp", ":0", "--cells", "17"], "expected a cell count 8..16"),
        (["--tcp", ":0", "--gateway", "smart"], "invalid choice: 'smart'"),
        (["--tcp", ":0", "--fault", "trickle"], "--fault trickle: a console fault"),
        (["--tcp", ":0", "--console", "--fault", "chksum"], "--fault chksum: an RS485 fault"),
    ],
)
def test_cli_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pylontech_exporter.simulator.cli", *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
