"""The landing page: what it shows of the configuration and the last reading."""

from __future__ import annotations

import dataclasses

import pytest
from support.stacks import frozen_stack

from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.dump import render_table
from pylontech_exporter.landing import render
from pylontech_exporter.models import AlarmState, ModuleDetail, active_alarms
from pylontech_exporter.snapshot import BankReading, ModuleReading, Snapshot


@pytest.mark.parametrize("snapshot_given", [False, True])
def test_landing_page_render(snapshot_given):
    stack = frozen_stack(modules=1, model="US3000C")
    module = stack.module(2)
    module.cell_voltages[3] = 3.9  # above the high threshold: an alarm
    bank = BankConfig("garage", SerialSettings("/dev/ttyUSB0"))
    snapshot = Snapshot(
        banks=[
            BankReading(
                name="garage",
                group=0,
                port="/dev/ttyUSB0",
                modules=[
                    ModuleReading(1, 2, values=module.values(), alarms=module.alarms()),
                    ModuleReading(2, 3),
                ],
            )
        ],
        taken_at=1000.0,
    )
    page = render([bank], snapshot if snapshot_given else None, now=1003.0)
    assert "garage" in page and "/dev/ttyUSB0" in page and "<style>" in page
    if snapshot_given:
        assert "3 s ago" in page
        assert "cell 4 high" in page
        assert "not answering" in page
        assert f"{module.values().voltage:.2f}" in page
    else:
        assert "No scrape yet" in page


def test_landing_page_and_dump_list_the_same_active_alarms():
    from pylontech_exporter.landing import render
    from pylontech_exporter.models import AlarmState, Protections

    module = frozen_stack(modules=1, model="US3000C").module(2)
    alarms = dataclasses.replace(
        module.alarms(),
        cell_states=(AlarmState.NORMAL, AlarmState.HIGH),
        temperature_states=(AlarmState.NORMAL, AlarmState.LOW),
        voltage_state=AlarmState.HIGH,
        protections=Protections(module_over_voltage=True),
        cell_voltage_errors=(False, False, True),
    )
    assert active_alarms(alarms) == [
        "protection module_over_voltage",
        "cell 2 high",
        "temperature cells_1 low",
        "module voltage high",
        "cell 3 voltage error",
    ]
    bank = BankReading(
        name="0",
        group=0,
        port="p",
        modules=[ModuleReading(1, 2, values=module.values(), alarms=alarms)],
    )
    snapshot = Snapshot(banks=[bank], taken_at=1.0)
    page = render([BankConfig("0", SerialSettings("p"))], snapshot, now=2.0)
    table = render_table(snapshot)
    for text in active_alarms(alarms):
        assert text in page and text in table


@pytest.mark.parametrize(
    ("states", "shown"),
    [({}, "none"), ({"current": AlarmState.HIGH}, "current high")],
)
def test_console_module_alarms_are_shown_as_dump_shows_them(states, shown):
    values = frozen_stack(modules=1, model="US3000C").module(2).values()
    detail = ModuleDetail(measurement_states={"module_voltage": AlarmState.NORMAL, **states})
    bank = BankReading(
        name="0", group=0, port="p", modules=[ModuleReading(1, 2, values=values, detail=detail)]
    )
    snapshot = Snapshot(banks=[bank], taken_at=1.0)
    page = render([BankConfig("0", SerialSettings("p"))], snapshot, now=2.0)
    assert f"{shown}</" in page and "not read" not in page
    assert render_table(snapshot).splitlines()[-1].endswith(f"  {shown}")


def test_a_current_that_rounds_to_zero_has_no_minus_sign():
    values = dataclasses.replace(
        frozen_stack(modules=1, model="US3000C").module(2).values(), current=-0.01
    )
    assert -1 < values.power < 0
    bank = BankReading(name="0", group=0, port="p", modules=[ModuleReading(1, 2, values=values)])
    snapshot = Snapshot(banks=[bank], taken_at=1.0)
    page = render([BankConfig("0", SerialSettings("p"))], snapshot, now=2.0)
    assert "<td>0&nbsp;W</td>" in page and "<td>0.0&nbsp;A</td>" in page  # totals, module
    assert "<td>-0" not in page
    table = render_table(snapshot)
    assert " 0 W" in table and " 0.0 A" in table and "-0" not in table
