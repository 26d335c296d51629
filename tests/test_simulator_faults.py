"""Fault specifications as written on the command line."""

from __future__ import annotations

import re

import pytest

from pylontech_exporter.rs485.frame import Command, encode_request
from pylontech_exporter.simulator import (
    FAULT_HELP,
    BatteryStack,
    Fault,
    FaultKind,
    parse_fault,
)
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.rs485 import Rs485Responder

#: Requests that draw every fault kind a responder applies: a bank-wide 0x42, a pwr.
_BANK_VALUES = encode_request(2, Command.ANALOG_VALUES, b"\xff")


def test_parse_fault_syntax() -> None:
    assert parse_fault("junk:p=0.02") == Fault(FaultKind.JUNK, probability=0.02)
    assert parse_fault("drop:address=3,count=5") == Fault(FaultKind.DROP, address=3, count=5)
    assert parse_fault("rtn:code=0x90,address=4") == Fault(FaultKind.RTN, code=0x90, address=4)
    assert parse_fault("delay:seconds=2.5,command=0x42") == Fault(
        FaultKind.DELAY, seconds=2.5, command=0x42
    )
    for bad in ("nope", "drop:address", "drop:address=x", "drop:color=1", "junk:p=2", "vanish"):
        with pytest.raises(ValueError):
            parse_fault(bad)


@pytest.mark.parametrize("kind", list(FaultKind))
@pytest.mark.parametrize(
    ("responder", "request_"),
    [(Rs485Responder, _BANK_VALUES), (ConsoleResponder, b"pwr\n")],
    ids=["rs485", "console"],
)
def test_a_responder_draws_the_fault_kinds_it_honours_and_no_other(
    kind: FaultKind, responder: type[Rs485Responder | ConsoleResponder], request_: bytes
) -> None:
    stack = BatteryStack(modules=2, seed=3)
    stack.freeze()
    fault = stack.faults.add(kind, module=3)
    responder(stack).handle(request_)
    assert fault.fired == (kind in responder.HONOURED)


def test_the_help_marks_the_kinds_one_protocol_only_honours() -> None:
    def marked(protocol: str) -> set[FaultKind]:
        return {
            k for k in FaultKind if re.search(rf"^  {k.value} +\({protocol}\)", FAULT_HELP, re.M)
        }

    assert (
        marked("console")
        == set(FaultKind) - Rs485Responder.HONOURED
        == {
            FaultKind.PROMPT,
            FaultKind.TRICKLE,
        }
    )
    assert marked("RS485") == set(FaultKind) - ConsoleResponder.HONOURED
