"""The poller against simulated buses: lines read in parallel by their own workers, the
background work that starts at once, a fixed module count, a line that cannot be
reached, and a line that does not finish by the deadline."""

from __future__ import annotations

import threading
import time

from support.inprocess import settled
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.poller import Poller
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.serve import TcpSimulator


def test_discovery_and_static_data_start_with_the_poller_not_the_first_scrape():
    stack = frozen_stack(modules=2, model="US3000C")
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        poller = settled(Poller([BankConfig("0", SerialSettings(tcp.url, timeout=0.1))]))
        try:
            before = tcp.requests
            snapshot = poller.read(time.monotonic() + 10)
            assert tcp.requests - before == 2 + 2  # FF 0x42, FF 0x44, two 0x92 when due
        finally:
            poller.close()
    bank = snapshot.banks[0]
    assert bank.up and bank.complete and not bank.discovering
    assert [m.serial_number for m in bank.modules] == [m.serial_number for m in stack.modules]
    assert bank.manufacturer is not None and bank.manufacturer.device_name == "US3000C"


def test_fixed_module_count_skips_discovery_and_reports_missing_module():
    stack = frozen_stack(modules=2, model="US3000C")
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        bank = BankConfig("0", SerialSettings(tcp.url, timeout=0.1), modules=3, bank_query="off")
        poller = Poller([bank])
        try:
            snapshot = poller.read(time.monotonic() + 10)
        finally:
            poller.close()
    modules = snapshot.banks[0].modules
    assert [(m.position, m.up) for m in modules] == [(1, True), (2, True), (3, False)]
    assert snapshot.banks[0].up


def test_bank_down_reports_the_reason():
    bank = BankConfig("x", SerialSettings("socket://127.0.0.1:1", timeout=0.1), modules=1)
    poller = Poller([bank])
    try:
        reading = poller.read(time.monotonic() + 5).banks[0]
    finally:
        poller.close()
    assert not reading.up
    assert "cannot open socket://127.0.0.1:1" in (reading.error or "")
    assert reading.failures.get("transport", 0) >= 1


def test_a_line_that_hangs_costs_the_other_lines_nothing():
    """One gateway never answers within the scrape (its answers are held back); the other
    line's bank is read all the same, and the snapshot comes at the deadline."""
    quick, stuck = frozen_stack(modules=2, seed=1), frozen_stack(modules=2, seed=2)
    held = Rs485Responder(stuck)
    release = threading.Event()
    handle = held.handle

    def hold(request: bytes):
        release.wait(30)
        return handle(request)

    with (
        TcpSimulator(Rs485Responder(quick), latency=0) as a,
        TcpSimulator(held, latency=0) as b,
    ):
        banks = [
            BankConfig("quick", SerialSettings(a.url, timeout=0.1), modules=2),
            BankConfig("stuck", SerialSettings(b.url, timeout=5), modules=2),
        ]
        poller = Poller(banks)
        try:
            held.handle = hold  # type: ignore[method-assign]
            snapshot = poller.read(Deadline(time.monotonic() + 1.0))
        finally:
            release.set()
            poller.close()
    readings = {bank.name: bank for bank in snapshot.banks}
    assert readings["quick"].up and readings["quick"].complete
    assert not readings["stuck"].up and not readings["stuck"].complete


def test_closing_does_not_wait_for_a_read_in_progress():
    stack = frozen_stack(modules=1)
    slave = Rs485Responder(stack)
    gate = threading.Event()
    answered = threading.Event()
    handle = slave.handle

    def held(request: bytes):
        gate.wait(60)  # a close() that waited for the read would return after this
        answered.set()
        return handle(request)

    slave.handle = held  # type: ignore[method-assign]
    with TcpSimulator(slave, latency=0) as tcp:
        poller = Poller([BankConfig("0", SerialSettings(tcp.url, timeout=120), modules=1)])
        poller.start()
        assert wait_for(lambda: tcp.requests >= 1)  # a background request is waiting
        poller.close()
        assert not answered.is_set()  # close() returned with the request still unanswered
        gate.set()
    assert all(line._thread.daemon for line in poller.lines)
