"""``dump``'s renderings of a snapshot."""

from __future__ import annotations

import dataclasses
import json

from support.stacks import frozen_stack

from pylontech_exporter.dump import render_json, render_table
from pylontech_exporter.snapshot import BankReading, ModuleReading, Snapshot


def test_dump_json_has_null_not_nan_when_full_capacity_is_zero():
    values = frozen_stack(modules=1, model="US3000C").module(2).values()
    values = dataclasses.replace(values, total_capacity=0)
    bank = BankReading(name="0", group=0, port="p", modules=[ModuleReading(1, 2, values=values)])
    snapshot = Snapshot(banks=[bank], taken_at=1.0)
    text = render_json(snapshot)
    assert "NaN" not in text
    assert json.loads(text)["banks"][0]["modules"][0]["values"]["state_of_charge"] is None
    assert "nan" not in render_table(snapshot)


def test_a_down_bank_says_how_long_its_read_took_or_that_it_was_not_read():
    def line(duration: float) -> str:
        bank = BankReading(name="0", group=0, port="p", error="no answer", duration=duration)
        return render_table(Snapshot(banks=[bank], taken_at=1.0)).splitlines()[0]

    assert line(2.4).endswith("DOWN (no answer), read in 2.40 s")
    assert line(0.0001).endswith("DOWN (no answer), not read")
