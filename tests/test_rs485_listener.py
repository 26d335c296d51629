"""The listen-only source: bus traffic replayed through a TCP gateway that pushes it
unasked; what a scrape exports is what was heard, while younger than max-age. Not one
byte goes back on the line in any test."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from support.inprocess import bank as bank_config
from support.replay import ReplayGateway, capture
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.bank import Bank
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.rs485.commands import COMMANDS
from pylontech_exporter.rs485.frame import encode_request
from pylontech_exporter.rs485.listener import ListenSource
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.inverter import PROFILES, Inverter
from pylontech_exporter.simulator.serve import TcpSimulator

MAX_AGE = 30.0
CAPTURED_BANK_REQUEST = b"~20024642E002FFFD09\r"


class Listening:
    """A ListenSource on ``gateway`` whose banks run on a clock the test moves."""

    def __init__(self, gateway: ReplayGateway, *, groups=(0,), modules: int | None = None):
        self.gateway = gateway
        self.now = [1000.0]
        self.banks = []
        for group in groups:
            config = bank_config(gateway.url, name=str(group), group=group, modules=modules)
            config = dataclasses.replace(
                config,
                serial=dataclasses.replace(config.serial, listen_only=True, listen_max_age=MAX_AGE),
            )
            self.banks.append(Bank(config, clock=lambda: self.now[0], wall=lambda: self.now[0]))
        self.source = ListenSource(self.banks)

    def hear(self, data: bytes, answers: int) -> None:
        """Push ``data`` and listen until the decoder has counted ``answers`` more answers
        (of any kind) or decode failures."""
        before = self._counted()
        if self.gateway.connections == 0:
            self.source.background(Deadline())  # connects
            self.gateway.wait_connected()
        self.gateway.push(data)
        assert wait_for(
            lambda: (
                self.source.background(Deadline()) == 0.0 and self._counted() >= before + answers
            ),
            timeout=10,
            interval=0,
        ), f"heard {self._counted() - before} of {answers}"

    def _counted(self) -> int:
        return sum(
            t.frames["answer"] + t.frames["error_answer"] + sum(t.failures.values())
            for t in self.source.decoder.traffic.values()
        )

    def scrape(self):
        return self.source.scrape(Deadline())

    def close(self) -> None:
        self.source.close()


@pytest.fixture
def gateway():
    with ReplayGateway() as gateway:
        yield gateway
        assert gateway.received == 0  # nothing was ever sent


@pytest.fixture
def stack():
    return frozen_stack(modules=3, model="US3000C")


def _answer(stack, request: bytes) -> bytes:
    data = Rs485Responder(stack).handle(request).data
    assert data is not None
    return data


def test_the_captured_bank_poll_exports_every_module(gateway, stack):
    listening = Listening(gateway)
    try:
        traffic = (
            b"\x00\x00" + CAPTURED_BANK_REQUEST + b"\xff" + _answer(stack, CAPTURED_BANK_REQUEST)
        )
        listening.hear(traffic, answers=1)
        (reading,) = listening.scrape()
    finally:
        listening.close()
    assert reading.up and reading.complete and reading.listen is not None
    assert [m.position for m in reading.modules] == [1, 2, 3]
    for module, virtual in zip(reading.modules, stack.modules):
        assert module.values == virtual.values()
        assert module.alarms is None  # never polled: not made up
        assert module.read_at == {"values": 1000.0}
    assert reading.requests == 0  # this exporter sent nothing
    assert reading.listen.frames == {"request": 1, "answer": 1, "error_answer": 0}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_capture_of_each_virtual_inverter_replays_to_the_stacks_values(gateway, profile):
    stack = frozen_stack(modules=3, model="US2000B-Plus")
    inverter = Inverter(stack, PROFILES[profile], period=0.2)
    with TcpSimulator(Rs485Responder(stack), latency=0, inverter=inverter) as live:
        recorded = capture(live.url, 0.7)  # two cycles at least, one of them whole
        assert live.received == 0
    listening = Listening(gateway)
    try:
        listening.hear(recorded, answers=recorded.count(b"\r") // 2 - 1)
        (reading,) = listening.scrape()
    finally:
        listening.close()
    polled = {COMMANDS[poll.command].name for poll in PROFILES[profile].polls}
    assert reading.up and [m.position for m in reading.modules] == [1, 2, 3]
    for module, virtual in zip(reading.modules, stack.modules):
        assert module.values == virtual.values()
        assert (module.alarms == virtual.alarms()) == ("alarms" in polled)
        assert (module.management == virtual.management()) == ("management" in polled)
        if "serial" in polled:
            assert module.serial_number == virtual.serial().serial_number
        if "software" in polled:
            assert module.software_version == virtual.software().mainline_version
        if "parameters" in polled:
            assert module.parameters == virtual.model.parameters
    if "manufacturer" in polled:
        assert reading.manufacturer == stack.master(0).manufacturer()
    assert reading.protocol_version is not None and str(reading.protocol_version) == "2.0"
    assert reading.listen is not None and reading.listen.unanswered == 0
    assert sum(reading.listen.decode_failures.values()) == 0


def test_modules_not_heard_within_max_age_are_down_with_no_readings(gateway, stack):
    listening = Listening(gateway)
    try:
        request = encode_request(0x02, 0x42, b"\xff")
        listening.hear(request + _answer(stack, request), answers=1)
        listening.now[0] += MAX_AGE  # exactly max-age old: still exported
        assert listening.scrape()[0].up
        listening.now[0] += 0.5
        (reading,) = listening.scrape()
    finally:
        listening.close()
    assert not reading.up and [m.position for m in reading.modules] == [1, 2, 3]
    assert all(m.values is None and m.read_at == {} for m in reading.modules)
    assert "no module heard within the last 30 s" in (reading.error or "")


def test_a_corrupt_answer_leaves_the_last_good_reading(gateway, stack):
    listening = Listening(gateway)
    try:
        request = encode_request(0x03, 0x42, b"\x03")
        good = stack.module(3).values()
        listening.hear(request + _answer(stack, request), answers=1)
        stack.unfreeze()
        stack.set_current(50.0)  # the stack moves on; the next answers are garbled
        stack.faults.add("chksum", count=1)
        listening.now[0] += 10
        listening.hear(request + _answer(stack, request), answers=1)
        stack.faults.add("truncate", count=1)
        master = encode_request(0x02, 0x42, b"\x02")
        # A truncated answer is dropped at the next "~"; the master's answer proves that
        # the bytes before it were listened to.
        listening.hear(request + _answer(stack, request) + master + _answer(stack, master), 1)
        (reading,) = listening.scrape()
    finally:
        listening.close()
    module = next(m for m in reading.modules if m.position == 2)
    assert module.values == good and module.read_at["values"] == 1000.0
    assert stack.module(3).values() != good  # what was garbled was news
    assert reading.listen is not None and reading.listen.decode_failures["checksum"] == 1


def test_a_configured_module_count_fixes_the_set(gateway, stack):
    """Module 3 is not polled: it shows down; nothing beyond the count is exported."""
    big = frozen_stack(modules=4, model="US3000C")
    listening = Listening(gateway, modules=3)
    try:
        for address in (0x02, 0x03, 0x05):
            request = encode_request(address, 0x42, bytes([address]))
            listening.hear(request + _answer(big, request), answers=1)
        (reading,) = listening.scrape()
    finally:
        listening.close()
    assert [(m.position, m.up) for m in reading.modules] == [(1, True), (2, True), (3, False)]
    assert not reading.discovering


def test_discovery_ends_when_the_poll_cycle_goes_round(gateway, stack):
    listening = Listening(gateway)
    try:
        cycle = b"".join(
            request + _answer(stack, request)
            for request in (encode_request(a, 0x42, bytes([a])) for a in (0x02, 0x03))
        )
        listening.hear(cycle, answers=2)
        assert listening.banks[0].discovering  # module 3 might come next
        listening.hear(cycle, answers=2)  # the cycle repeats: that is every module
        assert not listening.banks[0].discovering and listening.banks[0].known == [1, 2]
        assert listening.banks[0].settled  # nothing more to wait for: no static reads
    finally:
        listening.close()


def test_a_silent_line_ends_discovery_after_max_age_and_says_why(gateway):
    listening = Listening(gateway)
    try:
        listening.source.background(Deadline())
        assert listening.banks[0].discovering
        listening.now[0] += MAX_AGE
        listening.source.background(Deadline())
        (reading,) = listening.scrape()
    finally:
        listening.close()
    assert not reading.discovering and not reading.up
    assert "nothing heard for this group in 30 s: is the inverter polling" in (reading.error or "")


def test_groups_are_told_apart_and_an_unconfigured_one_is_logged_once(gateway, caplog):
    stack = frozen_stack(modules=2, groups=[1, 2], model="US3000C")
    listening = Listening(gateway, groups=(1,))
    caplog.set_level(logging.INFO, "pylontech_exporter.rs485.listener")
    try:
        for address in (0x12, 0x22, 0x23, 0x13):
            request = encode_request(address, 0x42, bytes([address]))
            listening.hear(request + _answer(stack, request), answers=1)
        (reading,) = listening.scrape()
    finally:
        listening.close()
    assert [m.values for m in reading.modules] == [
        stack.module(0x12).values(),
        stack.module(0x13).values(),
    ]
    heard = [r for r in caplog.records if "no bank is configured" in r.getMessage()]
    assert len(heard) == 1 and heard[0].fields["group"] == 2


def test_the_line_going_away_is_reported_and_listening_resumes(gateway, stack):
    listening = Listening(gateway)
    try:
        request = encode_request(0x02, 0x42, b"\xff")
        listening.hear(request + _answer(stack, request), answers=1)
        gateway.drop_client()
        assert wait_for(lambda: listening.source.background(Deadline()) > 0)  # line lost
        listening.source.background(Deadline())  # the next step opens it again
        gateway.wait_connected(2)
        listening.hear(request + _answer(stack, request), answers=1)
        (reading,) = listening.scrape()
    finally:
        listening.close()
    assert reading.up and reading.listen is not None
    assert reading.listen.frames["answer"] == 2
