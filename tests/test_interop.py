"""Published clients written by others read the virtual stack as they read a real one.

- python-pylontech 0.3.3 over a pty: every method. Its ADR-0 requests (0x4F, 0x51) and
  its 0x93 without INFO get no answer, as from a real US2000C/US3000C/US5000, so they fail
  the way they fail there: its ``readline()`` returns nothing and its decoder raises.
- pylontech 0.1.3 over TCP: ``PylontechStack`` (per-module requests with a 2-byte INFO,
  0x47 without INFO at ADR 2) in group 0, and in group 1 behind a hub, where its 0x47 to
  ADR 2 finds no module, as on a real hub.

Their code runs unchanged; the only setting touched is python-pylontech's serial timeout
(its reads wait for a LF that Pylontech frames never carry, so each read lasts it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from support.peers import pylontech_stack

from pylontech_exporter import Pylontech
from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator

peer = pytest.importorskip("pylontech")


@pytest.fixture
def link(tmp_path) -> Iterator[str]:
    """A frozen stack of three US3000C on a pty. Both libraries open the device
    exclusively, so each test reads with ours first, closes, then with theirs."""
    stack = BatteryStack(modules=3, model="US3000C", seed=11)
    stack.freeze()
    with PtySimulator(Rs485Responder(stack), tmp_path / "battery", latency=0) as server:
        yield str(server.link)


@contextlib.contextmanager
def open_theirs(link: str) -> Iterator[object]:
    theirs = peer.Pylontech(link, 115200)
    theirs.s.timeout = 0.3
    try:
        yield theirs
    finally:
        theirs.s.close()


def test_python_pylontech_reads_the_same_values(link):
    with Pylontech(link) as ours:
        expected = ours.get_values(0)
    with open_theirs(link) as theirs:
        got = theirs.get_values()
    assert got.NumberOfModules == 3
    for module, reference in zip(got.Module, expected.modules):
        assert list(module.CellVoltages) == list(reference.cell_voltages)
        assert module.AverageBMSTemperature == reference.temperatures[0]
        assert list(module.GroupedCellsTemperatures) == list(reference.temperatures[1:])
        assert module.Current == reference.current
        assert module.Voltage == reference.voltage
        assert module.RemainingCapacity == reference.remaining_capacity
        assert module.TotalCapacity == reference.total_capacity
        assert module.CycleNumber == reference.cycle_number
    assert got.StateOfCharge == pytest.approx(expected.state_of_charge)


def test_python_pylontech_every_other_method(link):
    with Pylontech(link) as ours:
        single = ours.get_values_single(0x03)
        serials = {a: ours.get_module_serial_number(a).serial_number for a in (2, 3, 4)}
        management = ours.get_management_info(0x02)
        parameters = ours.get_system_parameters(0x02)
    with open_theirs(link) as theirs:
        assert list(theirs.get_values_single(0x03).CellVoltages) == list(single.cell_voltages)
        assert theirs.get_module_serial_number(0x03).ModuleSerialNumber.decode() == serials[3]
        theirs_management = theirs.get_management_info(0x02)  # prints its frames
        for dev_id in (None, 0x02):  # without INFO and with the address as INFO
            theirs_parameters = theirs.get_system_parameters(dev_id)
            assert theirs_parameters.CellHighVoltageLimit == parameters.cell_high_voltage_limit
            assert theirs_parameters.ModuleUnderVoltageLimit == (
                parameters.module_under_voltage_limit
            )
            assert theirs_parameters.ChargeCurrentLimit == parameters.charge_current_limit
        found = theirs.scan_for_batteries(0, 6)
        assert {a: s for a, s in found.items()} == serials
        # What fails on a real US2000C/US3000C/US5000 fails here, the same way: nothing
        # comes back, and its decoder chokes on the empty read.
        for call in (
            theirs.get_manufacturer_info,  # ADR 0
            theirs.get_protocol_version,  # ADR 0
            theirs.get_module_serial_number,  # 0x93 without INFO
        ):
            with pytest.raises(ValueError, match="invalid literal for int"):
                call()
    assert theirs_management.ChargeVoltageLimit == management.charge_voltage_limit
    assert theirs_management.DischargeCurrentLimit == management.discharge_current_limit
    assert theirs_management.status.ChargeEnable == management.charge_enable


def _tcp_stack(groups: list[int], modules: int = 2) -> BatteryStack:
    stack = BatteryStack(modules=modules, groups=groups, model="US3000C", seed=5)
    stack.set_current(-8.0)
    stack.freeze()
    return stack


def _assert_stack_data(data: dict, stack: BatteryStack, group: int) -> None:
    members = stack.group_modules(group)
    assert [s for s in data["SerialNumbers"]] == [m.serial_number for m in members]
    for analog, module in zip(data["AnaloglList"], members, strict=True):
        values = module.values()
        assert analog["CellVoltages"] == list(values.cell_voltages)
        assert analog["Voltage"] == values.voltage and analog["Current"] == values.current
        assert analog["RemainCapacity"] == values.remaining_capacity
        assert analog["ModuleTotalCapacity"] == values.total_capacity
        assert analog["CycleNumber"] == values.cycle_number
        assert analog["CommandValue"] == module.address
    for management, module in zip(data["ChargeDischargeManagementList"], members, strict=True):
        expected = module.management()
        assert management["ChargeVoltage"] == expected.charge_voltage_limit
        assert management["DischargeCurrent"] == expected.discharge_current_limit
        assert management["StatusChargeEnable"] == expected.charge_enable
    for alarms, module in zip(data["AlarmInfoList"], members, strict=True):
        expected = module.alarms()
        assert alarms["CellCount"] == len(expected.cell_states) == 15
        assert alarms["TemperatureCount"] == len(expected.temperature_states) == 5
        assert alarms["Status2"] == 0x0E  # as in every recording


def test_pylontech_stack_update_in_group_0():
    stack = _tcp_stack([0], modules=3)
    with TcpSimulator(Rs485Responder(stack), latency=0.01) as server:
        result = pylontech_stack(server.url, group=0, modules=3)
    assert result["error"] is None
    data = result["data"]
    _assert_stack_data(data, stack, 0)
    # Its 0x47 decoder checks the recorded length (25 bytes) and then reads every field one
    # byte off (it counts the INFOFLAG as data): accepted, the values are its own.
    assert data["SystemParameter"]["UnitCellVoltage"] is not None
    total = sum(m.values().total_capacity for m in stack.modules)
    assert data["Calculated"]["TotalCapacity_Ah"] == pytest.approx(total)


def test_pylontech_stack_in_group_1_behind_a_hub():
    """Every per-module read of group 1 is right; its 0x47 goes to ADR 2, where a hub's
    bus has no module, so ``update()`` ends by its receive timeout, as on a real hub."""
    stack = _tcp_stack([1, 2])
    with TcpSimulator(Rs485Responder(stack), latency=0.01) as server:
        result = pylontech_stack(server.url, group=1, modules=2)
    assert result["error"] == ["Pylontech update error", "PylonNothingReceivedException"]
    _assert_stack_data(result["data"], stack, 1)
