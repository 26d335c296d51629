"""The command table: every read command once, request forms, and the answer checks the
client relies on to tell an answer from a late answer to something else."""

from __future__ import annotations

import pytest

from pylontech_exporter.errors import WriteCommandRefused
from pylontech_exporter.rs485 import commands
from pylontech_exporter.rs485.frame import Command, Frame


def test_every_read_command_has_one_entry():
    assert set(commands.COMMANDS) == set(Command)
    assert len({c.name for c in commands.COMMANDS.values()}) == len(Command)


def test_request_info_forms():
    assert commands.VALUES.info(0x12) == b"\x12"
    assert commands.SERIAL_NUMBER.info(0x03) == b"\x03"
    assert commands.PARAMETERS.info(0x03) == b""
    assert commands.MANUFACTURER.info(0x02) == b""
    assert commands.PROTOCOL_VERSION.info(0x02) == b""


def test_only_values_and_alarms_have_a_bank_form():
    banked = {c.code for c in commands.COMMANDS.values() if c.bank_answer is not None}
    assert banked == {Command.ANALOG_VALUES, Command.ALARM_INFO}


def test_fixed_sizes_come_from_the_payload_declarations():
    assert commands.SERIAL_NUMBER.fixed_size == 17
    assert commands.SOFTWARE_VERSION.fixed_size == 6
    assert commands.MANAGEMENT.fixed_size == 10
    assert commands.MANUFACTURER.fixed_size == 32
    assert commands.PARAMETERS.fixed_size == 25
    assert commands.VALUES.fixed_size is None  # cell and temperature counts vary
    assert commands.PROTOCOL_VERSION.fixed_size is None


def answer(address: int, info: bytes, rtn: int = 0) -> Frame:
    return Frame(0x20, address, 0x46, rtn, info)


def test_answers_checks_the_echoed_address_and_the_size():
    serial = commands.SERIAL_NUMBER
    good = b"\x03" + b"PPTCH00000000001"
    assert serial.answers(b"\x03", 0x03, answer(0x03, good))
    assert not serial.answers(b"\x03", 0x03, answer(0x03, b"\x04" + good[1:]))  # another's
    assert not serial.answers(b"\x03", 0x03, answer(0x03, good[:10]))  # too short
    assert serial.answers(b"\x03", 0x03, answer(0x03, good + b"\x00\x00"))  # padding
    assert not serial.answers(b"\x03", 0x03, answer(0x03, good + bytes(3)))
    # An error answer has no INFO to check.
    assert serial.answers(b"\x03", 0x03, answer(0x03, b"", rtn=0x90))
    values = commands.VALUES
    assert values.answers(b"\x02", 0x02, answer(0x02, b"\x11\x02\x0f"))
    assert not values.answers(b"\x02", 0x02, answer(0x02, b"\x11\x03\x0f"))


def test_lookup_refuses_write_and_unknown_commands():
    assert commands.lookup(0x42) is commands.VALUES
    for write in (0x94, 0x95):
        with pytest.raises(WriteCommandRefused):
            commands.lookup(write)
    with pytest.raises(ValueError, match="not a read command"):
        commands.lookup(0x43)
