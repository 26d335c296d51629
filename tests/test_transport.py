"""The serial line against a real pseudo-terminal and a real TCP socket.

The peer on the other end is a bare file descriptor or socket driven by the test, so
these tests see exactly which bytes cross the line.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import tty

import pytest
from support.net import black_hole

from pylontech_exporter import transport
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.errors import (
    DeadlinePassed,
    ListenOnlyError,
    ResponseTimeout,
    TransportError,
)
from pylontech_exporter.rs485.frame import Command, Frame, encode_frame, encode_request
from pylontech_exporter.rs485.stream import FrameSplitter
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.transport import SerialTransport

REQUEST = encode_request(0x02, Command.SERIAL_NUMBER, b"\x02")
ANSWER = encode_frame(Frame(0x20, 0x02, 0x46, 0x00, b"\x02" + b"A" * 16))
OTHER = encode_frame(Frame(0x20, 0x03, 0x46, 0x00, b"\x03" + b"B" * 16))


@pytest.fixture
def pty_pair():
    """(master fd, path of the slave device), both raw."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def read_request(fd: int, timeout: float = 2.0) -> bytes:
    data, end = b"", time.monotonic() + timeout
    while not data.endswith(b"\r") and time.monotonic() < end:
        data += os.read(fd, 1024)
    return data


def test_request_goes_out_and_a_noisy_answer_comes_back(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    line.send(REQUEST)
    assert read_request(master) == REQUEST
    os.write(master, b"\x00\x00noise" + ANSWER + b"\x00\x00")
    assert line.read_frame(1) == ANSWER
    line.close()


def test_second_frame_of_one_read_is_kept_for_the_next_read(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    line.send(REQUEST)
    os.write(master, ANSWER + OTHER)
    assert line.read_frame(1) == ANSWER
    assert line.read_frame(1) == OTHER
    line.close()


def test_stale_input_is_discarded_before_a_request(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    line.open()
    os.write(master, OTHER)  # a late answer to some earlier request
    time.sleep(0.05)
    line.send(REQUEST)
    os.write(master, ANSWER)
    assert line.read_frame(1) == ANSWER
    line.close()


def test_silence_times_out_on_time(pty_pair):
    _, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    line.send(REQUEST)
    started = time.monotonic()
    with pytest.raises(ResponseTimeout):
        line.read_frame(0.2)
    assert 0.2 <= time.monotonic() - started < 1.5
    line.close()


def test_a_slow_answer_is_not_late_while_its_bytes_keep_coming(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    line.send(REQUEST)

    def trickle() -> None:  # like a long answer at a low baud rate: 0.6 s in all
        for start in range(0, len(ANSWER), 8):
            time.sleep(0.6 * 8 / len(ANSWER))
            os.write(master, ANSWER[start : start + 8])

    writer = threading.Thread(target=trickle)
    writer.start()
    assert line.read_frame(0.2) == ANSWER
    writer.join()
    line.close()


def _chatter(master: int, noise: bytes) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()

    def chatter() -> None:
        while not stop.wait(0.02):
            os.write(master, noise)

    writer = threading.Thread(target=chatter)
    writer.start()
    return stop, writer


@pytest.mark.parametrize(
    ("noise", "limit"),
    [
        (b"\x00noise", 60.0),  # junk: the silence timeout ends the wait, not the limit
        (b"~20", 0.5),  # a frame that never ends: the limit does
    ],
    ids=["junk", "endless frame"],
)
def test_a_chattering_line_does_not_keep_a_request_open(pty_pair, noise, limit):
    master, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    line.send(REQUEST)
    stop, writer = _chatter(master, noise)
    started = time.monotonic()
    try:
        with pytest.raises(ResponseTimeout):
            line.read_frame(0.2, limit=started + limit)
        assert time.monotonic() - started < 10  # long before a 60 s limit
    finally:
        stop.set()
        writer.join()
        line.close()


def test_a_truncated_frame_never_comes_out(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    line.send(REQUEST)
    os.write(master, ANSWER[:30])
    with pytest.raises(ResponseTimeout):
        line.read_frame(0.2)
    line.close()


def test_command_gap_spaces_requests(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, command_gap=0.15, framer=FrameSplitter())
    line.send(REQUEST)
    read_request(master)
    line.send(REQUEST)
    first_done = time.monotonic()
    read_request(master)
    line.send(REQUEST)
    read_request(master)
    assert time.monotonic() - first_done >= 0.15
    line.close()


def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(TransportError, match="no such device"):
        SerialTransport(str(tmp_path / "ttyUSB9"), framer=FrameSplitter()).open()


def test_a_local_device_is_opened_exclusively(pty_pair):
    _, path = pty_pair
    first = SerialTransport(path, framer=FrameSplitter())
    first.open()
    with pytest.raises(TransportError, match="in use"):
        SerialTransport(path, framer=FrameSplitter()).open()
    first.close()


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="baud"):
        SerialTransport("/dev/null", 0, framer=FrameSplitter())
    with pytest.raises(ValueError, match="gap"):
        SerialTransport("/dev/null", command_gap=-1, framer=FrameSplitter())


class Gateway:
    """A TCP server like an RS485-to-Ethernet gateway: answers each request with
    ``ANSWER``, and can drop the connection."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self.hang_up = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(0.05)
                while True:
                    if self.hang_up.is_set():
                        self.hang_up.clear()
                        break
                    try:
                        data = conn.recv(1024)
                    except socket.timeout:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    conn.sendall(ANSWER)

    def close(self) -> None:
        self.server.close()


def test_tcp_gateway_reset_fails_one_request_then_reconnects():
    gateway = Gateway()
    line = SerialTransport(gateway.url, framer=FrameSplitter())
    line.send(REQUEST)
    assert line.read_frame(1) == ANSWER
    gateway.hang_up.set()
    time.sleep(0.2)
    with pytest.raises(TransportError):
        line.send(REQUEST)
        line.read_frame(1)
    assert not line.is_open
    line.send(REQUEST)
    assert line.read_frame(1) == ANSWER
    assert gateway.connections == 2
    line.close()
    gateway.close()


def test_refused_connection_is_a_clear_error():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    with pytest.raises(TransportError, match="refused"):
        SerialTransport(f"socket://127.0.0.1:{port}", framer=FrameSplitter()).open()


def _in_thread(call) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``call`` on a thread; what it raised is in the list once the thread ends."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


@pytest.fixture
def long_waits(monkeypatch):
    """pyserial-like fixed waits far longer than any test: only a deadline can end them."""
    monkeypatch.setattr(transport, "CONNECT_TIMEOUT", 600.0)
    monkeypatch.setattr(transport, "WRITE_TIMEOUT", 600.0)


def test_a_connect_that_hangs_ends_at_the_deadline(long_waits):
    with black_hole() as port:
        line = SerialTransport(f"socket://127.0.0.1:{port}", framer=FrameSplitter())
        thread, raised = _in_thread(lambda: line.open(Deadline(time.monotonic() + 0.3)))
        thread.join(30)
        assert not thread.is_alive(), "the connect outlived its deadline"
    assert [type(error) for error in raised] == [DeadlinePassed]
    assert not line.is_open


def test_a_connect_that_hangs_ends_when_its_deadline_is_cut(long_waits):
    """Background work's deadline is cut when a scrape needs the line."""
    background = Deadline()
    with black_hole() as port:
        line = SerialTransport(f"socket://127.0.0.1:{port}", framer=FrameSplitter())
        thread, raised = _in_thread(lambda: line.open(background))
        time.sleep(0.2)
        background.cut()
        thread.join(30)
        assert not thread.is_alive(), "the connect went on after its deadline was cut"
    assert [type(error) for error in raised] == [DeadlinePassed]


def test_a_hanging_connect_does_not_hold_up_another_lines_connect(long_waits):
    gateway = Gateway()
    with black_hole() as port:
        dead = SerialTransport(f"socket://127.0.0.1:{port}", framer=FrameSplitter())
        stuck = Deadline()
        thread, _ = _in_thread(lambda: dead.open(stuck))
        time.sleep(0.2)  # let it start connecting
        try:
            line = SerialTransport(gateway.url, framer=FrameSplitter())
            line.send(REQUEST, Deadline(time.monotonic() + 5))  # connects while the other hangs
            assert line.read_frame(1) == ANSWER
            assert thread.is_alive()  # the other connect is still waiting
            line.close()
        finally:
            stuck.cut()
            thread.join(30)
    gateway.close()


def test_without_a_deadline_a_hanging_connect_gives_up_after_the_connect_timeout(monkeypatch):
    monkeypatch.setattr(transport, "CONNECT_TIMEOUT", 0.3)
    with black_hole() as port:
        line = SerialTransport(f"socket://127.0.0.1:{port}", framer=FrameSplitter())
        with pytest.raises(TransportError, match="timed out"):
            line.open()


def test_a_write_that_cannot_go_out_ends_at_the_deadline(pty_pair, long_waits):
    """Nobody reads the other end: the line's buffer fills and a write blocks."""
    _, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter())
    request = b"~" + b"2" * 200 + b"\r"

    def fill() -> None:
        for _ in range(10_000):  # far more than a pty buffers
            line.send(request, Deadline(time.monotonic() + 0.3))

    thread, raised = _in_thread(fill)
    thread.join(30)
    assert not thread.is_alive(), "the write outlived its deadline"
    assert [type(error) for error in raised] == [DeadlinePassed]
    assert not line.is_open


class Rfc2217Gateway:
    """An RFC 2217 server (pyserial's own PortManager does the Telnet side) whose serial
    side is a virtual stack."""

    class _StackSide:
        """The attributes PortManager reads and sets on a serial port."""

        baudrate, bytesize, parity, stopbits = 115200, 8, "N", 1
        rtscts = xonxoff = False
        rts = dtr = True
        cts = dsr = ri = cd = False

        def reset_input_buffer(self) -> None:
            """Nothing is buffered on this side."""

        reset_output_buffer = reset_input_buffer

    def __init__(self, stack) -> None:
        self.slave = Rs485Responder(stack)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"rfc2217://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from serial.rfc2217 import PortManager

        conn, _ = self.server.accept()

        class Connection:  # PortManager writes its Telnet replies with .write()
            write = conn.sendall

        with conn:
            manager = PortManager(self._StackSide(), Connection())
            request = b""
            while data := conn.recv(1024):
                request += b"".join(manager.filter(data))
                if request.endswith(b"\r"):
                    answer = self.slave.respond(request) or b""
                    conn.sendall(b"".join(manager.escape(answer)))
                    request = b""

    def close(self) -> None:
        self.server.close()


def test_rfc2217_gateway():
    from pylontech_exporter.simulator import BatteryStack

    stack = BatteryStack(modules=2, seed=4)
    stack.freeze()
    gateway = Rfc2217Gateway(stack)
    line = SerialTransport(gateway.url, framer=FrameSplitter())
    line.send(encode_request(0x03, Command.SERIAL_NUMBER, b"\x03"))
    answer = line.read_frame(2.0)
    assert stack.module(0x03).serial().serial_number.encode() in bytes.fromhex(
        answer[13:-5].decode()
    )
    line.close()
    gateway.close()


def test_an_rfc2217_gateway_that_never_negotiates_gives_up_at_the_deadline():
    """It accepts the TCP connection and says nothing; pyserial would wait for its Telnet
    options as long as the URL's timeout (600 s here)."""
    with socket.create_server(("127.0.0.1", 0)) as mute:  # the kernel accepts, nobody talks
        url = f"rfc2217://127.0.0.1:{mute.getsockname()[1]}?timeout=600"
        line = SerialTransport(url, framer=FrameSplitter())
        thread, raised = _in_thread(lambda: line.open(Deadline(time.monotonic() + 0.5)))
        thread.join(30)
        assert not thread.is_alive(), "the negotiation outlived the deadline"
    assert [type(error) for error in raised] == [DeadlinePassed]
    assert not line.is_open


def test_listen_only_refuses_to_send_and_still_reads(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, framer=FrameSplitter(), listen_only=True)
    with pytest.raises(ListenOnlyError):
        line.send(REQUEST)
    line.open()
    os.write(master, REQUEST + ANSWER)  # another master's request and the answer to it
    assert line.read_frame(1) == REQUEST
    assert line.read_frame(1) == ANSWER
    line.close()
    os.set_blocking(master, False)
    with pytest.raises(BlockingIOError):
        os.read(master, 100)  # not one byte reached the line


class LineFramer:
    """Not RS485: text lines (as a console speaks), to show the transport cuts by any framer."""

    max_frame_bytes = 80

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        return [line + b"\n" for line in lines]

    def clear(self) -> None:
        self.buffer = b""

    @property
    def buffered(self) -> int:
        return len(self.buffer)


def test_the_framer_handed_in_decides_what_a_unit_is(pty_pair):
    master, path = pty_pair
    line = SerialTransport(path, 9600, framer=LineFramer())
    line.send(b"pwr\n")
    assert os.read(master, 100) == b"pwr\n"
    os.write(master, b"first\nsecond\npartial")
    assert line.read_frame(1) == b"first\n"
    assert line.read_frame(1) == b"second\n"
    assert line.longest_frame_seconds == pytest.approx(80 * 10 / 9600)
    line.close()
