"""The published python-pylontech library, written by others against the same spec,
reads the virtual stack (including its ADR-0 requests for 0x4F and 0x51) and gets the
values our client gets."""

from __future__ import annotations

import contextlib

import pytest

from pylontech_exporter import Pylontech
from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.serve import PtySimulator

peer = pytest.importorskip("pylontech")


@pytest.fixture
def link(tmp_path):
    """A frozen stack of three US3000C on a pty. Both libraries open the device
    exclusively, so each test reads with ours first, closes, then with theirs."""
    stack = BatteryStack(modules=3, model="US3000C", seed=11)
    stack.freeze()
    with PtySimulator(Rs485Responder(stack), tmp_path / "battery", latency=0) as server:
        yield str(server.link)


@contextlib.contextmanager
def open_theirs(link: str):
    theirs = peer.Pylontech(link, 115200)
    theirs.s.timeout = 0.3  # it reads with readline(), which waits for a LF that never comes
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


def test_python_pylontech_reads_the_same_module_details(link):
    with Pylontech(link) as ours:
        single = ours.get_values_single(0x03)
        serial = ours.get_module_serial_number(0x03)
        management = ours.get_management_info(0x02)
        parameters = ours.get_system_parameters(0x02)
        manufacturer = ours.get_manufacturer_info(0x02)
    with open_theirs(link) as theirs:
        assert list(theirs.get_values_single(0x03).CellVoltages) == list(single.cell_voltages)
        assert theirs.get_module_serial_number(0x03).ModuleSerialNumber.decode() == (
            serial.serial_number
        )
        theirs_management = theirs.get_management_info(0x02)  # prints its frames
        theirs_parameters = theirs.get_system_parameters(0x02)
        # It asks for these at ADR 0, which the group-0 master answers (not a US5000).
        theirs_manufacturer = theirs.get_manufacturer_info()
        theirs_version = theirs.get_protocol_version()
    assert theirs_management.ChargeVoltageLimit == management.charge_voltage_limit
    assert theirs_management.DischargeCurrentLimit == management.discharge_current_limit
    assert theirs_management.status.ChargeEnable == management.charge_enable
    assert theirs_parameters.CellHighVoltageLimit == parameters.cell_high_voltage_limit
    assert theirs_parameters.ModuleUnderVoltageLimit == parameters.module_under_voltage_limit
    assert theirs_parameters.ChargeCurrentLimit == parameters.charge_current_limit
    assert theirs_manufacturer.DeviceName.decode().rstrip("\x00") == manufacturer.device_name
    assert theirs_manufacturer.ManufacturerName.decode().rstrip("\x00 ") == (
        manufacturer.manufacturer_name
    )
    assert theirs_version.ver == b"\x20"
