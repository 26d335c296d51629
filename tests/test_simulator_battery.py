"""The virtual stack's physics: state of charge, cells, temperatures, cycles, and the
alarm, protection and management flags derived from them."""

from __future__ import annotations

import pytest

from pylontech_exporter.models import AlarmState
from pylontech_exporter.simulator import (
    BatteryStack,
    SineLoad,
    ocv,
)


def test_soc_follows_current_and_voltage_is_sum_of_cells(stack: BatteryStack) -> None:
    module = stack.module(2)
    module.soc = 0.8
    stack.set_current(-37.0)
    stack.advance(1800)
    assert module.soc == pytest.approx(0.8 - 18.5 / 74, abs=1e-9)
    assert module.current == -37.0
    values = module.values()
    assert values.voltage == pytest.approx(sum(values.cell_voltages), abs=1e-9)
    assert max(values.cell_voltages) < ocv(module.soc) + 0.02  # sagging under load
    stack.set_current(+20.0)
    soc = module.soc
    stack.advance(600)
    assert module.soc > soc


def test_sine_load_charges_and_discharges() -> None:
    stack = BatteryStack(modules=1, seed=1, soc=0.5, load=SineLoad(amplitude=0.5, period=3600))
    socs = []
    for _ in range(4):
        stack.advance(900)
        socs.append(stack.module(2).soc)
    assert socs[1] > 0.5 and socs[3] < socs[1]  # up in the first half period, then down


def test_cycle_count_increments_per_capacity_discharged(stack: BatteryStack) -> None:
    module = stack.module(2)
    cycles = module.cycle_number
    module.throughput = 73.5
    stack.set_current(-37.0)
    stack.advance(60)  # 0.617 Ah more: one full capacity discharged
    assert module.cycle_number == cycles + 1
    stack.advance(60)
    assert module.cycle_number == cycles + 1


def test_cells_drift_apart_and_drift_cell() -> None:
    stack = BatteryStack(modules=1, seed=9, load=SineLoad(amplitude=0.0, noise=0.0))
    module = stack.module(2)
    spread = max(module.cell_offsets) - min(module.cell_offsets)
    stack.advance(20 * 86400)
    assert max(module.cell_offsets) - min(module.cell_offsets) > spread
    module.drift_cell(cell=5, volts=+0.2)
    others = [v for i, v in enumerate(module.cell_voltages) if i != 4]
    assert module.cell_voltages[4] - max(others) > 0.15
    stack.advance(600)
    others = [v for i, v in enumerate(module.cell_voltages) if i != 4]
    assert module.cell_voltages[4] - max(others) > 0.15


def test_temperatures_rise_with_current() -> None:
    stack = BatteryStack(modules=1, model="US5000", seed=7)  # with a MOSFET sensor
    module = stack.module(2)
    before = list(module.temperatures)
    stack.set_current(-37.0)
    stack.advance(3600)
    assert all(after > b + 3 for after, b in zip(module.temperatures, before))
    assert module.temperatures[5] > module.temperatures[1]  # the MOSFET runs hottest


def test_cell_thresholds_trigger_protections(stack: BatteryStack) -> None:
    stack.freeze()
    module = stack.module(2)
    module.cell_voltages = [3.3] * 15
    module.current = 0.0
    assert not stack.module(2).alarms().protections.active()
    module.cell_voltages[2] = 3.75
    alarms = stack.module(2).alarms()
    assert alarms.cell_states[2] == AlarmState.HIGH and alarms.cell_states[1] == AlarmState.NORMAL
    assert not alarms.status.charge_mosfet_on and alarms.status.discharge_mosfet_on
    assert not stack.module(2).management().charge_enable
    module.cell_voltages[2] = 3.0
    alarms = stack.module(2).alarms()
    assert alarms.cell_states[2] == AlarmState.LOW and not alarms.protections.active()
    module.cell_voltages[2] = 2.85
    alarms = stack.module(2).alarms()
    assert alarms.protections.active() == ["cell_under_voltage"]
    assert not alarms.status.discharge_mosfet_on
    assert not stack.module(2).management().discharge_enable
    module.cell_voltages = [3.65] * 15
    assert stack.module(2).alarms().protections.module_over_voltage  # 54.75 V > 54.0 V
    module.cell_voltages = [3.3] * 15
    module.cell_voltages[0], module.cell_voltages[9] = 4.3, 0.5
    errors = stack.module(2).alarms().cell_voltage_errors
    assert [i for i, e in enumerate(errors) if e] == [0, 9]


def test_sixteenth_cell_error_and_temperature_protections() -> None:
    stack = BatteryStack(modules=1, model="US5000-16S", seed=1)
    stack.freeze()
    module = stack.module(2)
    module.cell_voltages[15] = 4.25
    assert stack.module(2).alarms().cell_voltage_errors[15]
    module.cell_voltages[15] = 3.3
    module.temperatures[3] = 65.0
    alarms = stack.module(2).alarms()
    assert alarms.protections.charge_over_temperature
    assert alarms.protections.discharge_over_temperature
    assert alarms.temperature_states[3] == AlarmState.HIGH
    module.temperatures[3] = -12.0
    module.current = -5.0
    alarms = stack.module(2).alarms()
    assert alarms.temperature_states[3] == AlarmState.LOW
    assert not alarms.status.discharge_mosfet_on and not alarms.status.charge_mosfet_on
    assert alarms.status.effective_discharge_current and alarms.status.using_battery_power


def test_charging_stops_when_full_and_discharging_when_empty(stack: BatteryStack) -> None:
    module = stack.module(2)
    module.soc = 0.995
    stack.set_current(+30.0)
    stack.advance(600)
    assert module.soc == 1.0 and module.current == 0.0
    alarms, management = module.alarms(), module.management()
    assert alarms.status.fully_charged and not alarms.status.effective_charge_current
    assert not management.charge_enable and management.discharge_enable
    module.soc = 0.03
    stack.set_current(-30.0)
    stack.advance(600)
    assert 0 < module.soc < 0.025 and module.current == 0.0
    assert min(module.cell_voltages) < 2.92  # the cell under voltage protection tripped
    management = module.management()
    assert not management.discharge_enable and management.charge_enable
    assert management.charge_immediately_1 and management.charge_immediately_2
    assert not module.alarms().status.discharge_mosfet_on
    stack.set_current(+30.0)  # charging clears the latched protection
    stack.advance(1200)
    assert module.soc > 0.1 and module.management().discharge_enable


def test_management_flags_follow_soc() -> None:
    stack = BatteryStack(modules=1, seed=1)
    stack.freeze()
    module = stack.module(2)
    for soc, flags in ((0.5, (False, False)), (0.11, (False, True)), (0.07, (True, True))):
        module.soc = soc
        m = stack.module(2).management()
        assert (m.charge_immediately_1, m.charge_immediately_2) == flags
    module.seconds_since_full = 31 * 86400
    assert stack.module(2).management().full_charge_request
    stack.unfreeze()
    module.soc = 0.98
    stack.advance(10)
    assert not module.management().full_charge_request


def test_follow_clock() -> None:
    now = [100.0]
    stack = BatteryStack(modules=1, seed=1)
    stack.set_current(-10.0)
    stack.follow_clock(speed=60.0, clock=lambda: now[0])
    now[0] += 10.0
    stack.sync()
    assert stack.time == pytest.approx(600.0)
