"""The poller against a simulated bus: static data kept and refreshed, a fixed module
count, a bank that cannot be reached."""

from __future__ import annotations

import time

from support.stacks import frozen_stack

from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.poller import Poller
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.serve import TcpSimulator


def test_static_data_is_read_once_then_refreshed():
    stack = frozen_stack(modules=2, model="US3000C")
    now = [time.monotonic()]  # the poller's clock: moved by hand, no sleeping
    with TcpSimulator(Rs485Responder(stack), latency=0) as tcp:
        bank = BankConfig("0", SerialSettings(tcp.url, timeout=0.1))
        poller = Poller([bank], static_refresh=0.5, clock=lambda: now[0])
        try:
            poller.read(time.monotonic() + 10)
            before = tcp.requests
            second = poller.read(time.monotonic() + 10)
            assert tcp.requests - before == 4  # FF 0x42, FF 0x44, 2 x 0x92
            assert second.banks[0].modules[0].serial_number == stack.module(2).serial_number
            assert second.banks[0].manufacturer.device_name == "US3000C"
            now[0] += 0.6
            before = tcp.requests
            poller.read(time.monotonic() + 10)
            # rediscovery (2 answers, then one silent address tried twice), the
            # readings (4), static data again: 0x51, 0x4F, and 0x93, 0x96, 0x47 per module
            assert tcp.requests - before == 4 + 4 + 2 + 6
        finally:
            poller.close()


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
