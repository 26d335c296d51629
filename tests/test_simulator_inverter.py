"""The virtual inverter: each profile's poll cycle, built with the real encoder, and the
servers putting its requests and the stack's answers on the line."""

from __future__ import annotations

import itertools

import pytest
from support.replay import capture
from support.stacks import frozen_stack

from pylontech_exporter.errors import WriteCommandRefused
from pylontech_exporter.rs485.frame import Command, decode_frame, encode_request
from pylontech_exporter.rs485.stream import FrameSplitter
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.inverter import PROFILES, Inverter, Poll, get_profile
from pylontech_exporter.simulator.serve import TcpSimulator


def test_the_bank_profile_sends_the_captured_request_once_a_second():
    stack = frozen_stack(modules=3)
    inverter = Inverter(stack, PROFILES["bank"])
    assert inverter.cycle() == [b"~20024642E002FFFD09\r"]  # the capture in DESIGN.md
    assert inverter.period == 1.0 and inverter.cycles == 1


def test_per_module_profiles_ask_every_present_module_of_every_group():
    stack = frozen_stack(modules=2, groups=[1, 2])
    stack.remove_module(0x23)
    requests = [decode_frame(r) for r in Inverter(stack, PROFILES["two-byte"]).cycle()]
    assert [(r.address, r.cid2) for r in requests[:4]] == [
        (0x12, 0x42),
        (0x13, 0x42),
        (0x12, 0x44),
        (0x13, 0x44),
    ]
    assert {r.address for r in requests} == {0x12, 0x13, 0x22}  # 0x23 is unplugged
    assert all(r.info == bytes([r.address, 0x01]) for r in requests)


def test_the_full_profile_reads_the_static_data_too():
    stack = frozen_stack(modules=1)
    commands = [decode_frame(r).cid2 for r in Inverter(stack, PROFILES["full"]).cycle()]
    assert commands == [0x42, 0x44, 0x92, 0x93, 0x96, 0x47, 0x51, 0x4F]


def test_a_profile_cannot_write_and_names_are_checked():
    with pytest.raises(WriteCommandRefused):
        Poll(0x94, "module").requests(frozen_stack(modules=1), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown inverter profile 'growatt'; choose one of"):
        get_profile("growatt")
    with pytest.raises(ValueError, match="positive"):
        Inverter(frozen_stack(), PROFILES["bank"], period=0)
    with pytest.raises(ValueError, match="unknown poll form 'modul'; one of bank, module"):
        Poll(Command.ANALOG_VALUES, "modul")  # a typo would poll per module


def test_the_gateway_carries_each_request_then_its_answer_and_nothing_is_asked_of_it():
    stack = frozen_stack(modules=2)
    inverter = Inverter(stack, PROFILES["per-module"], period=0.2)
    with TcpSimulator(Rs485Responder(stack), latency=0, inverter=inverter) as gateway:
        frames = [decode_frame(f) for f in FrameSplitter().feed(capture(gateway.url, 0.6))]
        assert gateway.received == 0
    requests = [f for f in frames if f.cid2 in (0x42, 0x44, 0x92)]
    answers = [f for f in frames if f.cid2 == 0x00]
    assert len(requests) >= 6 and abs(len(requests) - len(answers)) <= 1
    for first, second in itertools.pairwise(frames):
        if first.cid2 != 0x00:  # a request: the next frame is its module's answer
            assert second.cid2 == 0x00 and second.address == first.address


def test_an_inverter_needs_a_broadcast_gateway():
    stack = frozen_stack()
    with pytest.raises(ValueError, match="broadcast"):
        TcpSimulator(
            Rs485Responder(stack), gateway="private", inverter=Inverter(stack, PROFILES["bank"])
        )
    assert encode_request(0x02, 0x42, b"\xff") == Inverter(stack, PROFILES["bank"]).cycle()[0]
