"""Payload declarations against INFO written by hand from the spec's tables."""

import contextlib
import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pylontech_exporter.errors import ImplausibleReading, PayloadError
from pylontech_exporter.models import (
    AlarmState,
    ManagementInfo,
    ManufacturerInfo,
    ModuleAlarms,
    ModuleSerialNumber,
    ModuleStatus,
    ModuleValues,
    Protections,
    SoftwareVersion,
    SystemParameters,
)
from pylontech_exporter.rs485 import payloads


def info(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


# 0x42, US2000B-Plus at address 3: 15 cells of 3.301..3.315 V, temperatures 25.5 (BMS),
# -12.4, 0.0, 10.0 and 15.0 C (the spec's own examples: 25.5 C = 2986, -12.4 C = 2607),
# discharging at 4.0 A (the spec: -4000 mA = FFD8), 37.5 of 50 Ah, 291 cycles.
US2000_CELLS = "".join(f"{mv:04X}" for mv in range(3301, 3316))
US2000_MODULE = "0F" + US2000_CELLS + "05" + "0BAA0A2F0AAB0B0F0B41FFD8C1D4927C02C3500123"
US2000_VALUES = ModuleValues(
    address=3,
    cell_voltages=tuple(mv / 1000 for mv in range(3301, 3316)),
    temperatures=(25.5, -12.4, 0.0, 10.0, 15.0),
    current=-4.0,
    voltage=49.62,
    remaining_capacity=37.5,
    total_capacity=50.0,
    cycle_number=291,
    extended_capacity=False,
)


def test_two_item_module_with_negative_current_and_temperature():
    values = payloads.ANALOG_VALUES.parse(info("11", "03", US2000_MODULE))
    assert values == US2000_VALUES
    assert values.power == pytest.approx(-198.48)
    assert values.state_of_charge == pytest.approx(0.75)


def test_eight_cell_up2500_charging():
    cells = "0D05" * 8  # 3.333 V
    raw = info(
        "11", "02", "08", cells, "05", "0BAA" * 5, "00FD", "6829", "4E20", "02", "C350", "0007"
    )
    values = payloads.ANALOG_VALUES.parse(raw)
    assert values.cell_voltages == (3.333,) * 8
    assert values.current == pytest.approx(25.3)
    assert values.voltage == pytest.approx(26.665)
    assert (values.remaining_capacity, values.total_capacity) == (20.0, 50.0)


def test_sixteen_cells_six_temperatures_four_item_capacity():
    raw = info(
        "11",
        "12",
        "10",
        "0CE4" * 16,
        "06",
        "0BAA" * 5 + "0C0E",
        "0000",
        "CE40",
        "FFFF",
        "04",
        "FFFF",
        "0010",
        "012345",
        "0186A0",
    )
    values = payloads.ANALOG_VALUES.parse(raw)
    assert values.address == 0x12
    assert len(values.cell_voltages) == 16
    assert values.temperatures[-1] == pytest.approx(35.5)  # MOSFET
    assert values.remaining_capacity == pytest.approx(74.565)
    assert values.total_capacity == pytest.approx(100.0)
    assert values.cycle_number == 16
    assert values.extended_capacity


def test_bank_wide_response_assigns_addresses_from_the_group_master():
    raw = info("11", "02", US2000_MODULE, US2000_MODULE)
    group0 = payloads.ANALOG_VALUES_BANK.parse(raw, group=0)
    group2 = payloads.ANALOG_VALUES_BANK.parse(raw, group=2)
    assert [m.address for m in group0] == [0x02, 0x03]
    assert [m.address for m in group2] == [0x22, 0x23]
    assert group0[1] == US2000_VALUES


def test_single_module_answer_to_a_bank_query_is_rejected():
    # Firmware that ignores FF answers with the master's own data: command value 02 then
    # one module, which cannot be two modules.
    with pytest.raises(PayloadError):
        payloads.ANALOG_VALUES_BANK.parse(info("11", "02", US2000_MODULE), group=0)


def test_truncated_analog_info_is_a_payload_error():
    with pytest.raises(PayloadError, match="cannot decode"):
        payloads.ANALOG_VALUES.parse(info("11", "03", US2000_MODULE)[:-3])


# 0x44 at address 4: cell 5 high, cell 9 low, cell 15 "other error"; temperature 3 high;
# module voltage low, discharge current high; Status1 = module under voltage + cell under
# voltage; Status2 = battery power, both MOSFETs; Status3 = charging, full, buzzer;
# Status4/5 = cells 1, 5 and 15 in error; one trailing 00 as some firmwares send.
ALARM_MODULE = "0F0000000002000000010000000000F0050000020000000102820E891140"


def test_alarm_info_with_every_kind_of_state():
    alarms = payloads.ALARM_INFO.parse(info("00", "04", ALARM_MODULE, "00"))
    cells = [AlarmState.NORMAL] * 15
    cells[4], cells[8], cells[14] = AlarmState.HIGH, AlarmState.LOW, AlarmState.FAULT
    assert alarms == ModuleAlarms(
        address=4,
        cell_states=tuple(cells),
        temperature_states=(AlarmState.NORMAL,) * 2 + (AlarmState.HIGH,) + (AlarmState.NORMAL,) * 2,
        charge_current_state=AlarmState.NORMAL,
        voltage_state=AlarmState.LOW,
        discharge_current_state=AlarmState.HIGH,
        protections=Protections(module_under_voltage=True, cell_under_voltage=True),
        status=ModuleStatus(
            using_battery_power=True,
            discharge_mosfet_on=True,
            charge_mosfet_on=True,
            effective_charge_current=True,
            fully_charged=True,
            buzzer_on=True,
        ),
        cell_voltage_errors=tuple(i in (0, 4, 14) for i in range(15)),
    )
    assert alarms.protections.active() == ["module_under_voltage", "cell_under_voltage"]


def test_each_status1_bit_maps_to_its_protection():
    names = {
        0x80: "module_under_voltage",
        0x40: "charge_over_temperature",
        0x20: "discharge_over_temperature",
        0x10: "discharge_over_current",
        0x04: "charge_over_current",
        0x02: "cell_under_voltage",
        0x01: "module_over_voltage",
    }
    for bit, name in names.items():
        raw = info("00", "02", "01", "00", "01", "00", "000000", f"{bit:02X}", "00", "00", "0000")
        assert payloads.ALARM_INFO.parse(raw).protections.active() == [name]


def test_unknown_state_byte_reads_as_fault():
    raw = info("00", "02", "01", "07", "01", "00", "000000", "00", "00", "00", "0000")
    assert payloads.ALARM_INFO.parse(raw).cell_states == (AlarmState.FAULT,)


def test_bank_wide_alarm_info():
    raw = info("00", "02", ALARM_MODULE, ALARM_MODULE, "00")
    modules = payloads.ALARM_INFO_BANK.parse(raw, group=1)
    assert [m.address for m in modules] == [0x12, 0x13]
    assert modules[1].voltage_state is AlarmState.LOW


def test_system_parameters():
    raw = info(
        "11",
        "0E74",
        "0BEA",
        "0B54",
        "0D03",
        "0AAB",
        "0172",
        "D2F0",
        "B5A4",
        "ADD4",
        "0D03",
        "0A47",
        "FE8E",
    )
    assert payloads.SYSTEM_PARAMETERS_INFO.parse(raw) == SystemParameters(
        cell_high_voltage_limit=3.7,
        cell_low_voltage_limit=3.05,
        cell_under_voltage_limit=2.9,
        charge_high_temperature_limit=60.0,
        charge_low_temperature_limit=0.0,
        charge_current_limit=37.0,
        module_high_voltage_limit=54.0,
        module_low_voltage_limit=46.5,
        module_under_voltage_limit=44.5,
        discharge_high_temperature_limit=60.0,
        discharge_low_temperature_limit=-10.0,
        discharge_current_limit=-37.0,
    )


@pytest.mark.parametrize(
    ("status", "flags"),
    [
        ("C8", (True, True, False, False, True)),
        ("30", (False, False, True, True, False)),
        ("20", (False, False, True, False, False)),
        ("10", (False, False, False, True, False)),
    ],
)
def test_management_info(status, flags):
    raw = info("02", "CFD0", "ADD4", "0172", "FE8E", status)
    assert payloads.MANAGEMENT.parse(raw) == ManagementInfo(
        address=2,
        charge_voltage_limit=53.2,
        discharge_voltage_limit=44.5,
        charge_current_limit=37.0,
        discharge_current_limit=-37.0,
        charge_enable=flags[0],
        discharge_enable=flags[1],
        charge_immediately_1=flags[2],
        charge_immediately_2=flags[3],
        full_charge_request=flags[4],
    )


def test_serial_number_strips_padding():
    assert payloads.SERIAL.parse(info("05", b"PPTAP0210045678\x00".hex())) == (
        ModuleSerialNumber(5, "PPTAP0210045678")
    )
    assert payloads.SERIAL.parse(info("02", b"K221207C30211045".hex())).serial_number == (
        "K221207C30211045"
    )


def test_software_version():
    assert payloads.SOFTWARE.parse(info("02", "0104", "020704")) == SoftwareVersion(
        2, "1.4", "2.7.4"
    )


def test_manufacturer_info():
    raw = info(b"US3000C\x00\x00\x00".hex(), "0102", b"PYLON".ljust(20).hex())
    assert payloads.MANUFACTURER.parse(raw) == ManufacturerInfo("US3000C", "1.2", "PYLON")


def test_text_padded_with_ff_or_holding_odd_bytes_still_reads():
    assert payloads.SERIAL.parse(info("02", b"PPTAP021".hex(), "FF" * 8)).serial_number == (
        "PPTAP021"
    )
    assert payloads.SERIAL.parse(info("02", "E9" * 16)).serial_number == "\xe9" * 16


def test_a_late_analog_answer_does_not_pass_for_alarm_info():
    # Both carry the address at offset 1. An 8-cell 0x42 INFO even fits the 0x44 layout
    # (every cell "fault", random protections): only its length gives it away.
    up2500 = info(
        "11", "02", "08", "0D05" * 8, "05", "0BAA" * 5, "00FD", "6829", "4E20", "02", "C350", "0007"
    )
    with pytest.raises(PayloadError, match="left over"):
        payloads.ALARM_INFO.parse(up2500)


def test_up_to_two_trailing_bytes_are_tolerated():
    single = info("11", "03", US2000_MODULE)
    assert payloads.ANALOG_VALUES.parse(single + b"\x00\x00") == US2000_VALUES
    with pytest.raises(PayloadError, match="3 bytes left over"):
        payloads.ANALOG_VALUES.parse(single + b"\x00\x00\x00")


# -- build-then-parse is the identity -------------------------------------------------

# Every value a module can report (what the wire can carry beyond that is refused).
millivolts = st.integers(-32768, 32767).map(lambda mv: mv / 1000)
cell_millivolts = st.integers(0, 5000).map(lambda mv: mv / 1000)
module_millivolts = st.integers(0, 65000).map(lambda mv: mv / 1000)
deci = st.integers(-32768, 32767).map(lambda d: d / 10)
deciamperes = st.integers(-5000, 5000).map(lambda d: d / 10)
celsius = st.integers(-32768, 32767).map(lambda raw: (raw - 2731) / 10)
module_celsius = st.integers(-600, 1500).map(lambda tenths: tenths / 10)
ANY_ADDRESS = st.integers(1, 254)


@st.composite
def module_values(draw, address=ANY_ADDRESS):
    extended = draw(st.booleans())
    total = draw(st.integers(0, 0xFFFFFF if extended else 0xFFFF))
    remaining = draw(st.integers(0, min(total, 0xFFFFFF if extended else 0xFFFF)))
    return ModuleValues(
        address=draw(address),
        cell_voltages=tuple(draw(st.lists(cell_millivolts, max_size=24))),
        temperatures=tuple(draw(st.lists(module_celsius, max_size=8))),
        current=draw(deciamperes),
        voltage=draw(module_millivolts),
        remaining_capacity=remaining / 1000,
        total_capacity=total / 1000,
        cycle_number=draw(st.integers(0, 65535)),
        extended_capacity=extended,
    )


IMPLAUSIBLE = {
    "a cell of 0xFFFF (-0.001 V)": {"cell_voltages": (3.3, -0.001)},
    "a cell over 5 V": {"cell_voltages": (5.001,)},
    "raw temperature 0x8000 (-3549.9 degrees)": {"temperatures": (-3549.9,)},
    "150.1 degrees": {"temperatures": (25.0, 150.1)},
    "current 0x8000 (-3276.8 A)": {"current": -3276.8},
    "module voltage 0xFFFF (65.535 V)": {"voltage": 65.535},
    "remaining 65.535 Ah of 0.001 Ah (a state of charge of 65535)": {
        "remaining_capacity": 65.535,
        "total_capacity": 0.001,
    },
}


@pytest.mark.parametrize("changes", IMPLAUSIBLE.values(), ids=IMPLAUSIBLE.keys())
def test_values_no_module_reports_are_refused(changes):
    built = payloads.ANALOG_VALUES.build(dataclasses.replace(US2000_VALUES, **changes))
    with pytest.raises(ImplausibleReading, match="not a value a module reports"):
        payloads.ANALOG_VALUES.parse(built)
    bank = payloads.ANALOG_VALUES_BANK.build(
        [US2000_VALUES, dataclasses.replace(US2000_VALUES, **changes)]
    )
    with pytest.raises(ImplausibleReading):
        payloads.ANALOG_VALUES_BANK.parse(bank, 0)


def test_management_limits_no_module_reports_are_refused():
    raw = info("02", "FFFF", "ADD4", "0172", "FE8E", "C8")  # 65.535 V charge limit
    with pytest.raises(ImplausibleReading, match="charge voltage limit"):
        payloads.MANAGEMENT.parse(raw)
    raw = info("02", "CFD0", "ADD4", "8000", "FE8E", "C8")  # -3276.8 A
    with pytest.raises(ImplausibleReading, match="charge current limit"):
        payloads.MANAGEMENT.parse(raw)


@given(module_values())
def test_analog_values_round_trip(values):
    assert payloads.ANALOG_VALUES.parse(payloads.ANALOG_VALUES.build(values)) == values


@given(st.lists(module_values(address=st.just(0)), min_size=1, max_size=16))
def test_bank_analog_values_round_trip(modules):
    parsed = payloads.ANALOG_VALUES_BANK.parse(payloads.ANALOG_VALUES_BANK.build(modules), 0)
    assert parsed == [
        dataclasses.replace(m, address=address) for address, m in enumerate(modules, start=2)
    ]


states = st.sampled_from(list(AlarmState))
flags = st.booleans()


@st.composite
def module_alarms(draw):
    cells = draw(st.integers(0, 16))
    return ModuleAlarms(
        address=draw(st.integers(1, 254)),
        cell_states=tuple(draw(st.lists(states, min_size=cells, max_size=cells))),
        temperature_states=tuple(draw(st.lists(states, max_size=8))),
        charge_current_state=draw(states),
        voltage_state=draw(states),
        discharge_current_state=draw(states),
        protections=draw(st.builds(Protections, *[flags] * 7)),
        status=draw(st.builds(ModuleStatus, *[flags] * 9)),
        cell_voltage_errors=tuple(draw(st.lists(flags, min_size=cells, max_size=cells))),
    )


@given(module_alarms())
def test_alarm_info_round_trip(alarms):
    assert payloads.ALARM_INFO.parse(payloads.ALARM_INFO.build(alarms)) == alarms


@given(
    st.builds(
        ManagementInfo,
        st.integers(1, 254),
        module_millivolts,
        module_millivolts,
        deciamperes,
        deciamperes,
        flags,
        flags,
        flags,
        flags,
        flags,
    )
)
def test_management_info_round_trip(management):
    assert payloads.MANAGEMENT.parse(payloads.MANAGEMENT.build(management)) == management


@given(
    st.builds(
        SystemParameters,
        millivolts,
        millivolts,
        millivolts,
        celsius,
        celsius,
        deci,
        module_millivolts,
        module_millivolts,
        module_millivolts,
        celsius,
        celsius,
        deci,
    )
)
def test_system_parameters_round_trip(parameters):
    built = payloads.SYSTEM_PARAMETERS_INFO.build(parameters)
    assert payloads.SYSTEM_PARAMETERS_INFO.parse(built) == parameters


#: Printable text that does not end in a padding character (space, NUL, 0xFF or "-":
#: real 0x51 answers pad the manufacturer with dashes).
text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=16).filter(
    lambda t: not t.endswith("-")
)


def test_dash_padding_is_not_part_of_the_name():
    real = b"US2KBPL\x00\x00\x00" + b"\x01\x02" + b"Pylon".ljust(20, b"-")
    assert payloads.MANUFACTURER.parse(real) == ManufacturerInfo("US2KBPL", "1.2", "Pylon")


@given(st.integers(1, 254), text)
def test_serial_number_round_trip(address, serial):
    reading = ModuleSerialNumber(address, serial)
    assert payloads.SERIAL.parse(payloads.SERIAL.build(reading)) == reading


version = st.integers(0, 255).map(str)


@given(st.integers(1, 254), version, version, version, version, version)
def test_software_version_round_trip(address, a, b, c, d, e):
    reading = SoftwareVersion(address, f"{a}.{b}", f"{c}.{d}.{e}")
    assert payloads.SOFTWARE.parse(payloads.SOFTWARE.build(reading)) == reading


@given(text.map(lambda t: t[:10]), version, version, text)
def test_manufacturer_info_round_trip(name, major, minor, manufacturer):
    reading = ManufacturerInfo(name, f"{major}.{minor}", manufacturer)
    assert payloads.MANUFACTURER.parse(payloads.MANUFACTURER.build(reading)) == reading


ALL_PAYLOADS = {
    "values": payloads.ANALOG_VALUES,
    "alarms": payloads.ALARM_INFO,
    "parameters": payloads.SYSTEM_PARAMETERS_INFO,
    "management": payloads.MANAGEMENT,
    "serial": payloads.SERIAL,
    "software": payloads.SOFTWARE,
    "manufacturer": payloads.MANUFACTURER,
}


@pytest.mark.parametrize("payload", ALL_PAYLOADS.values(), ids=ALL_PAYLOADS)
@given(raw=st.binary(max_size=120))
def test_arbitrary_info_gives_a_reading_or_a_payload_error(payload, raw):
    with contextlib.suppress(PayloadError):
        payload.parse(raw)


@given(raw=st.binary(max_size=200), group=st.integers(0, 7))
def test_arbitrary_bank_info_gives_readings_or_a_payload_error(raw, group):
    for bank in (payloads.ANALOG_VALUES_BANK, payloads.ALARM_INFO_BANK):
        with contextlib.suppress(PayloadError):
            bank.parse(raw, group)


def test_state_of_charge_without_capacity_is_nan():
    empty = ModuleValues(2, (), (), 0.0, 0.0, 0.0, 0.0, 0)
    assert math.isnan(empty.state_of_charge)
