"""Fault specifications as written on the command line."""

from __future__ import annotations

import pytest

from pylontech_exporter.simulator import (
    Fault,
    FaultKind,
    parse_fault,
)


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
