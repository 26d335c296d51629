"""The library API against the virtual stack over a real pseudo-terminal and TCP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from support.waiting import wait_for

from pylontech_exporter import (
    ProtocolVersion,
    Pylontech,
    ResponseError,
    ResponseTimeout,
)
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.errors import ANOTHER_MASTER, ConsoleAnswer, DeadlinePassed, PylontechError
from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.inverter import Inverter, get_profile
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator


@pytest.fixture(params=["pty", "tcp"])
def bus(request, stack, tmp_path):
    """A client on ``stack``, once over a pty and once over TCP."""
    stack.freeze()
    if request.param == "pty":
        server = PtySimulator(Rs485Responder(stack), tmp_path / "battery", latency=0)
        port = lambda: str(server.link)  # noqa: E731
    else:
        server = TcpSimulator(Rs485Responder(stack), latency=0)
        port = lambda: server.url  # noqa: E731
    with server, Pylontech(port(), timeout=0.3) as client:
        yield client


def test_every_read_command_returns_what_the_stack_holds(bus, stack):
    for module in stack.modules:
        address = module.address
        assert bus.get_values_single(address) == module.values()
        assert bus.get_alarm_info(address) == module.alarms()
        assert bus.get_management_info(address) == module.management()
        assert bus.get_module_serial_number(address) == module.serial()
        assert bus.get_software_version(address) == module.software()
        assert bus.get_system_parameters(address) == module.model.parameters
    # 0x51 answers with the master's data at every address.
    assert bus.get_manufacturer_info(0x03) == stack.master(0).manufacturer()
    assert bus.get_manufacturer_info(0x03).device_name == "US3000C"
    assert bus.get_protocol_version(0x02) == ProtocolVersion(2, 0)


def test_values_have_sensible_units(bus, stack):
    values = bus.get_values_single(0x02)
    assert 40.0 < values.voltage < 58.0
    assert values.voltage == pytest.approx(sum(values.cell_voltages), abs=0.02)
    assert values.total_capacity == pytest.approx(74.0)
    assert 0.0 <= values.state_of_charge <= 1.0
    assert values.power == pytest.approx(values.voltage * values.current)


def test_group_values_bank_wide(bus, stack):
    group = bus.get_values(0)
    assert [m.address for m in group.modules] == [0x02, 0x03, 0x04]
    assert list(group.modules) == [m.values() for m in stack.modules]
    assert group.total_power == pytest.approx(sum(m.power for m in group.modules))
    remaining = sum(m.remaining_capacity for m in group.modules)
    assert group.state_of_charge == pytest.approx(remaining / (3 * 74.0))
    assert bus.stats.requests == 1  # one bank-wide query
    assert bus.get_alarm_info_bank(0) == [m.alarms() for m in stack.modules]


def test_second_group_on_a_shared_bus(tmp_path):
    stack = BatteryStack(modules=2, groups=[0, 2], seed=3)
    stack.freeze()
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as server,
        Pylontech(server.url, timeout=0.3) as bus,
    ):
        assert [m.address for m in bus.get_values(2).modules] == [0x22, 0x23]
        assert bus.get_values(2).modules[1] == stack.module(0x23).values()
        assert bus.discover(2) == [0x22, 0x23]
        assert [m.address for m in bus.get_values(0).modules] == [0x02, 0x03]


def test_a_long_bank_answer_at_9600_baud_outlasts_the_timeout(tmp_path):
    # 8 modules of 16 cells: about 1,100 bytes, 1.2 s on the wire at 9600 baud, while
    # the first byte comes within the 0.3 s timeout.
    stack = BatteryStack(modules=8, model="US5000-16S", seed=2)
    stack.freeze()
    link = tmp_path / "battery"
    with (
        PtySimulator(Rs485Responder(stack), link, baudrate=9600, latency=0),
        Pylontech(str(link), 9600, timeout=0.3, retries=0) as bus,
    ):
        started = time.monotonic()
        group = bus.get_values_bank(0)
        assert time.monotonic() - started > 1.0
    assert list(group.modules) == [m.values() for m in stack.modules]


def test_firmware_ignoring_the_bank_query_falls_back_to_module_reads():
    stack = BatteryStack(modules=3, seed=5, bank_query_supported=False)
    stack.freeze()
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as server,
        Pylontech(server.url, timeout=0.2) as bus,
    ):
        with pytest.raises(ResponseTimeout):  # the firmware stays silent, as a US2000C does
            bus.get_values_bank(0)
        group = bus.get_values(0)
        assert list(group.modules) == [m.values() for m in stack.modules]
        before = bus.stats.requests
        bus.get_values(0)  # remembered: no second bank-wide attempt
        assert bus.stats.requests - before == 3


def test_silent_address_times_out_after_retries(bus):
    started = time.monotonic()
    with pytest.raises(ResponseTimeout):
        bus.get_values_single(0x09)
    assert time.monotonic() - started >= 0.6  # first try and one retry
    assert bus.stats.failures["timeout"] == 2


@pytest.mark.parametrize("code", [0x01, 0x04, 0x05, 0x06, 0x90, 0x91])
def test_return_codes_raise_without_retry(bus, stack, code):
    stack.faults.add("rtn", code=code, address=0x03)
    with pytest.raises(ResponseError) as raised:
        bus.get_management_info(0x03)
    assert raised.value.code == code
    assert f"(0x{code:02X})" in str(raised.value)
    assert bus.stats.requests == 1
    assert bus.stats.failures["return_code"] == 1


def test_a_garbled_answer_is_retried(bus, stack):
    stack.faults.add("chksum", count=1)
    assert bus.get_values_single(0x02) == stack.module(0x02).values()
    assert bus.stats.requests == 2
    assert bus.stats.failures["checksum"] == 1


def test_junk_and_a_stale_frame_do_not_confuse_the_client(bus, stack):
    stack.faults.add("junk", size=12)
    stack.faults.add("nul", size=4)
    assert bus.get_values_single(0x03) == stack.module(0x03).values()
    stack.faults.clear()
    stack.faults.add("stale")  # the previous answer (from 0x03) arrives first
    assert bus.get_values_single(0x02) == stack.module(0x02).values()
    assert bus.stats.requests == 2
    assert not bus.stats.failures


def test_scan_reports_progress_for_every_address(bus, stack):
    seen = []
    found = bus.scan_for_batteries(2, 8, timeout=0.2, progress=lambda a, s: seen.append((a, s)))
    serials = {m.address: m.serial_number for m in stack.modules}
    assert found == serials
    assert [a for a, _ in seen] == list(range(2, 8))
    assert dict((a, s) for a, s in seen if s) == serials


def test_deadline_stops_requests_without_touching_the_bus(bus):
    with bus.deadline(time.monotonic() - 1), pytest.raises(DeadlinePassed):
        bus.get_values_single(0x02)
    assert bus.stats.requests == 0


def test_deadline_caps_the_wait_and_is_not_a_failure_of_the_bus(bus):
    with bus.deadline(time.monotonic() + 0.1), pytest.raises(DeadlinePassed):
        bus.get_values_single(0x09)  # nobody there: the wait would be 0.3 s, twice
    assert bus.stats.requests == 1  # no retry after the deadline
    assert sum(bus.stats.failures.values()) == 0  # the bus did nothing wrong


def test_a_deadline_moved_while_waiting_lets_the_answer_in(stack):
    """A scrape that joins a read in flight moves its deadline: the request waiting for a
    slow answer keeps waiting. The deadline moves when the simulator has the request, so
    the client is certainly waiting by then."""
    stack.freeze()
    stack.faults.add("delay", seconds=1.0, count=1)
    slave = Rs485Responder(stack)
    deadline = Deadline(time.monotonic() + 0.5)
    handle = slave.handle

    def extend_on_arrival(request: bytes):
        deadline.extend(time.monotonic() + 10)
        return handle(request)

    slave.handle = extend_on_arrival  # type: ignore[method-assign]
    with (
        TcpSimulator(slave, latency=0) as server,
        Pylontech(server.url, timeout=2) as bus,
        bus.deadline(deadline),
    ):
        assert bus.get_values_single(0x03) == stack.module(3).values()
    assert bus.stats.requests == 1


@pytest.mark.parametrize("latency", [0, 0.6], ids=["cut-mid-answer", "all-of-it-late"])
def test_a_bank_answer_cut_by_the_deadline_does_not_poison_the_next_read(latency):
    """A long bank-wide 0x44 still comes after its deadline passed, its rest or all of it:
    the next request (a bank-wide 0x42 from the same address) skips it and gets its own
    answer."""
    stack = BatteryStack(modules=16, model="US3000C", seed=4)
    stack.freeze()
    with (
        TcpSimulator(Rs485Responder(stack), latency=latency, baudrate=9600) as server,
        Pylontech(server.url, 9600, timeout=2) as bus,
    ):
        with bus.deadline(time.monotonic() + 0.3), pytest.raises(DeadlinePassed):
            bus.get_alarm_info_bank()  # about 1.5 s of answer at 9600 Bd
        values = bus.get_values_bank()
        assert [m.address for m in values.modules] == [m.address for m in stack.modules]
        assert list(values.modules) == [m.values() for m in stack.modules]
        assert bus.stats.requests == 2 and sum(bus.stats.failures.values()) == 0


def test_a_failed_bank_query_that_worked_before_is_tried_again(bus, stack):
    bus.get_values(0)
    stack.faults.add("drop", command=0x42, address=0x02, count=2)  # both tries
    assert list(bus.get_values(0).modules) == [m.values() for m in stack.modules]
    before = bus.stats.requests
    bus.get_values(0)
    assert bus.stats.requests - before == 1  # bank-wide again, not module by module


def test_a_bank_answer_missing_a_module_is_not_mislabelled(bus, stack):
    assert bus.discover(0) == [0x02, 0x03, 0x04]
    stack.remove_module(0x03)  # the bank answer now lists 0x02 and 0x04 as 2 modules
    with pytest.raises(ResponseTimeout):
        bus.get_values(0)  # read one by one: 0x03 is silent
    stack.restore_module(0x03)
    assert [m.address for m in bus.get_values(0).modules] == [0x02, 0x03, 0x04]


def test_discovery_counts_a_module_that_answers_with_an_error(bus, stack):
    stack.faults.add("rtn", code=0x91, address=0x03, command=0x93)
    assert bus.discover(0) == [0x02, 0x03, 0x04]


def test_one_request_in_flight_from_many_threads(bus, stack):
    errors = []

    def read(address: int) -> None:
        try:
            for _ in range(5):
                assert bus.get_values_single(address) == stack.module(address).values()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=read, args=(a,)) for a in (2, 3, 4) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert bus.stats.requests == 30
    assert not bus.stats.failures


class EchoingLine:
    """A line whose adapter echoes every request back before the battery's answer,
    as 2-wire RS485 adapters with the receiver always enabled do."""

    def __init__(self, stack: BatteryStack) -> None:
        self.slave = Rs485Responder(stack)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data + (self.slave.respond(data) or b""))

    def close(self) -> None:
        self.server.close()


def test_an_echoed_request_is_not_taken_for_the_answer(stack):
    stack.freeze()
    line = EchoingLine(stack)
    with Pylontech(line.url, timeout=0.3) as bus:
        assert bus.get_values_single(0x03) == stack.module(0x03).values()
        assert bus.get_management_info(0x02) == stack.module(0x02).management()
        assert bus.stats.requests == 2
        assert not bus.stats.failures
    line.close()


def test_invalid_client_settings():
    with pytest.raises(ValueError, match="timeout"):
        Pylontech("/dev/null", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        Pylontech("/dev/null", retries=-1)


def test_another_masters_requests_are_counted_and_the_echo_is_not(stack):
    stack.freeze()
    inverter = Inverter(stack, get_profile("full"), period=0.05)
    with (
        TcpSimulator(Rs485Responder(stack), latency=0.01, inverter=inverter) as server,
        Pylontech(server.url, timeout=0.3) as bus,
    ):
        assert wait_for(lambda: _read_quietly(bus) and bus.stats.failures[ANOTHER_MASTER], 10)
        assert bus.stats.foreign_request_address in {m.address for m in stack.modules}


def _read_quietly(bus: Pylontech) -> bool:
    with contextlib.suppress(PylontechError):
        bus.get_management_info(0x03)
    return True


def test_the_console_shell_is_no_module_and_says_so(stack):
    stack.freeze()
    with (
        TcpSimulator(ConsoleResponder(stack), latency=0) as server,
        Pylontech(server.url, timeout=0.3) as bus,
    ):
        with pytest.raises(ConsoleAnswer, match=r"use --serial\.protocol console"):
            bus.probe(0x02)
        assert bus.stats.requests == 1, "not retried: the console will say it again"
        assert bus.discover(0) == []


def test_discovery_waits_the_configured_timeout_on_a_slow_gateway(stack):
    stack.freeze()
    with (
        TcpSimulator(Rs485Responder(stack), latency=0.6) as server,
        Pylontech(server.url, timeout=2.0) as bus,
    ):
        assert bus.discover(0) == [0x02, 0x03, 0x04]
        assert bus.stats.failures["timeout"] == 0, "the silent address ends it, no failure"


def test_a_silent_master_is_a_timeout_and_a_silent_address_beyond_is_not(bus):
    assert bus.probe(0x09, ending=True) is None
    assert bus.stats.failures["timeout"] == 0
    assert bus.probe(0x09) is None
    assert bus.stats.failures["timeout"] == 2  # the client's retry
