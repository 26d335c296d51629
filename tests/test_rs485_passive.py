"""Decoding another master's traffic: each answer paired with the request before it and
decoded with the client's codec; lost requests, corrupt frames and error answers counted."""

from __future__ import annotations

import pytest
from support.stacks import frozen_stack

from pylontech_exporter.rs485 import commands
from pylontech_exporter.rs485.frame import (
    CID1_BATTERY,
    Frame,
    decode_frame,
    encode_frame,
    encode_request,
)
from pylontech_exporter.rs485.passive import BusDecoder, group_of
from pylontech_exporter.rs485.stream import FrameSplitter
from pylontech_exporter.simulator import Rs485Responder

#: The live capture in DESIGN.md: a master polling the bank-wide 0x42 once a second.
CAPTURED_BANK_REQUEST = b"~20024642E002FFFD09\r"


@pytest.fixture
def stack():
    return frozen_stack(modules=3, model="US3000C")


def _answer(stack, request: bytes) -> bytes:
    reply = Rs485Responder(stack).handle(request)
    assert reply.data is not None
    return reply.data


def _heard(decoder: BusDecoder, *frames: bytes, start: float = 0.0, step: float = 0.1):
    """Feed ``frames`` (each may hold junk around it) as cut by the framer."""
    answers = []
    splitter = FrameSplitter()
    at = start
    for data in frames:
        for frame in splitter.feed(data):
            answers.append(decoder.feed(frame, at))
            at += step
    return answers


def test_the_captured_bank_request_pairs_with_its_answer(stack):
    decoder = BusDecoder()
    assert encode_request(0x02, 0x42, b"\xff") == CAPTURED_BANK_REQUEST
    request, answer = _heard(decoder, CAPTURED_BANK_REQUEST, _answer(stack, CAPTURED_BANK_REQUEST))
    assert request is None and answer is not None
    assert answer.command is commands.VALUES and answer.bank and answer.group == 0
    assert answer.readings == {m.address: m.values() for m in stack.modules}
    traffic = decoder.traffic[0]
    assert traffic.frames == {"request": 1, "answer": 1, "error_answer": 0}
    assert traffic.polls()[0].info == "FF" and traffic.polls()[0].period is None


@pytest.mark.parametrize("command", sorted(commands.COMMANDS))
def test_every_read_command_of_every_module_decodes_as_the_client_would(stack, command):
    decoder = BusDecoder()
    for module in stack.modules:
        info = commands.COMMANDS[command].info(module.address)
        request = encode_request(module.address, command, info)
        answer = _heard(decoder, request, _answer(stack, request))[1]
        assert answer is not None and not answer.orphan
        assert answer.command.code == command and answer.address == module.address
        if commands.COMMANDS[command].answer is None:  # 0x4F: the VER is the answer
            assert answer.readings == {} and answer.version == 0x20
            continue
        expected = commands.COMMANDS[command].parse(decode_frame(_answer(stack, request)).info)
        assert answer.readings == {module.address: expected}


def test_a_two_byte_info_and_a_group_are_followed(stack):
    grouped = frozen_stack(modules=2, groups=[3], model="US2000B-Plus")
    decoder = BusDecoder()
    address = 0x33  # group 3, module 2
    request = encode_request(address, 0x44, bytes([address, 0x01]))
    answer = _heard(decoder, request, _answer(grouped, request))[1]
    assert answer is not None and answer.group == 3
    assert answer.readings == {address: grouped.module(address).alarms()}
    assert set(decoder.traffic) == {3}


def test_junk_and_nuls_between_frames_are_skipped(stack):
    decoder = BusDecoder()
    request = encode_request(0x03, 0x42, b"\x03")
    answers = _heard(decoder, b"\x00\xff noise", request, b"\x00\x00", _answer(stack, request))
    assert answers[-1] is not None and answers[-1].readings == {0x03: stack.module(3).values()}


def test_an_answer_whose_request_was_lost_is_decoded_from_its_shape(stack):
    decoder = BusDecoder()
    for command in (0x42, 0x44, 0x92, 0x93, 0x96):
        request = encode_request(0x04, command, b"\x04")
        (answer,) = _heard(decoder, _answer(stack, request))  # the request not heard
        assert answer is not None and answer.orphan and answer.command.code == command
    bank = _heard(decoder, _answer(stack, CAPTURED_BANK_REQUEST))[0]
    assert bank is not None and bank.bank and len(bank.readings) == 3
    assert decoder.traffic[0].failures["orphan"] == 0


def test_an_orphan_that_does_not_say_whose_it_is_is_counted_and_dropped(stack):
    """0x47, 0x4F and 0x51 answers look alike at every address (a 33-byte 0x44 answer
    even parses as 0x51 text): without their request they are not guessed at."""
    decoder = BusDecoder()
    for command in (0x47, 0x4F, 0x51):
        assert _heard(decoder, _answer(stack, encode_request(0x03, command))) == [None]
    assert decoder.traffic[0].failures["orphan"] == 3


def test_an_answer_after_a_request_to_another_address_is_not_paired(stack):
    """A request whose answer was lost, then another module's answer to a lost request:
    neither is the other's."""
    decoder = BusDecoder()
    to_three = encode_request(0x03, 0x42, b"\x03")
    to_four = encode_request(0x04, 0x44, b"\x04")
    answer = _heard(decoder, to_three, _answer(stack, to_four))[1]
    assert answer is not None and answer.orphan and answer.command is commands.ALARMS
    assert answer.readings == {0x04: stack.module(4).alarms()}


def test_unanswered_requests_error_answers_and_corrupt_frames_are_counted(stack):
    decoder = BusDecoder()
    request = encode_request(0x02, 0x42, b"\x02")
    stack.faults.add("rtn", code=0x91, count=1)
    error = _answer(stack, request)
    stack.faults.add("chksum", count=1)
    corrupt = _answer(stack, request)
    stack.faults.add("implausible", count=1)
    implausible = _answer(stack, request)
    results = _heard(
        decoder, request, request, error, request, corrupt, request, implausible, b"~20XYZ\r"
    )
    assert results == [None] * 8
    traffic = decoder.traffic[0]
    assert traffic.unanswered == 1  # the first request, followed by another
    assert traffic.frames == {"request": 4, "answer": 1, "error_answer": 1}
    assert traffic.failures["checksum"] == 1 and traffic.failures["implausible"] == 1
    assert decoder.unattributed["frame"] == 1  # no legible address


def test_a_write_command_of_the_master_is_heard_but_its_answer_not_decoded(stack):
    """An inverter may send 0x94 (set limits): this package never does, but hears it."""
    write = encode_frame(Frame(0x20, 0x02, CID1_BATTERY, 0x94, b"\x02"))
    answer = encode_frame(Frame(0x20, 0x02, CID1_BATTERY, 0x00, b""))
    decoder = BusDecoder()
    assert _heard(decoder, write, answer) == [None, None]
    traffic = decoder.traffic[0]
    assert traffic.failures["unknown_command"] == 1
    assert traffic.polls()[0].command == "0x94"


def test_poll_periods_are_the_median_interval_per_request_form(stack):
    decoder = BusDecoder()
    request = encode_request(0x02, 0x42, b"\xff")
    answer = _answer(stack, request)
    for at in (0.0, 1.0, 2.0, 3.5, 4.5):
        decoder.feed(request, at)
        decoder.feed(answer, at + 0.2)
    assert decoder.traffic[0].poll_periods() == {"values": 1.0}
    (poll,) = decoder.traffic[0].polls()
    assert (poll.command, poll.address, poll.info, poll.requests) == ("values", 2, "FF", 5)


def test_an_answer_long_after_its_request_is_not_taken_as_its_answer(stack):
    decoder = BusDecoder(window=1.0)
    request = encode_request(0x02, 0x42, b"\x02")
    decoder.feed(request, 0.0)
    late = decoder.feed(_answer(stack, request), 3.0)
    assert late is not None and late.orphan  # decoded from its shape instead


@pytest.mark.parametrize(
    ("address", "group"),
    [(0x02, 0), (0x11, 0), (0x12, 1), (0x21, 1), (0x72, 7), (0x81, 7), (0x01, None), (0x82, None)],
)
def test_group_of_an_address(address, group):
    assert group_of(address) == group
