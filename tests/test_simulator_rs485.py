"""The virtual stack as RS485 slaves: every read command, bank-wide answers, return
codes, silence, and every injected fault, through the responder and the codec."""

from __future__ import annotations

import weakref

import pytest

from pylontech_exporter.errors import ChecksumError, FrameError
from pylontech_exporter.rs485.frame import (
    Frame,
    ReturnCode,
    decode_frame,
    encode_frame,
    encode_request,
)
from pylontech_exporter.rs485.payloads import (
    ALARM_INFO,
    ALARM_INFO_BANK,
    ANALOG_VALUES,
    ANALOG_VALUES_BANK,
    MANAGEMENT,
    MANUFACTURER,
    SERIAL,
    SOFTWARE,
    SYSTEM_PARAMETERS_INFO,
)
from pylontech_exporter.simulator import (
    MODELS,
    BatteryStack,
    Rs485Responder,
    get_model,
    with_cells,
)

_SLAVES: weakref.WeakKeyDictionary[BatteryStack, Rs485Responder] = weakref.WeakKeyDictionary()


def slave(stack: BatteryStack) -> Rs485Responder:
    """The stack's RS485 responder (one per stack: a ``stale`` fault repeats its last answer)."""
    return _SLAVES.setdefault(stack, Rs485Responder(stack))


def ask(stack: BatteryStack, address: int, command: int, info: bytes = b"") -> Frame:
    raw = slave(stack).respond(encode_request(address, command, info))
    assert raw is not None, "no answer"
    frame = decode_frame(raw)
    assert (frame.version, frame.address, frame.cid1) == (0x20, address, 0x46)
    return frame


def ok(stack: BatteryStack, address: int, command: int, info: bytes = b"") -> bytes:
    frame = ask(stack, address, command, info)
    assert frame.cid2 == ReturnCode.NORMAL
    return frame.info


def rtn(stack: BatteryStack, request: bytes) -> int:
    raw = slave(stack).respond(request)
    assert raw is not None
    frame = decode_frame(raw)
    assert frame.info == b""
    return frame.cid2


def raw_request(address: int, cid2: int, info: bytes = b"", version: int = 0x20) -> bytes:
    return encode_frame(Frame(version, address, 0x46, cid2, info))


@pytest.mark.parametrize("name", list(MODELS))
def test_analog_values_per_model(name: str) -> None:
    stack = BatteryStack(modules=2, model=name, seed=3)
    model = get_model(name)
    for module in stack.modules:
        info = ok(stack, module.address, 0x42, bytes([module.address]))
        values = ANALOG_VALUES.parse(info)
        assert values == module.values()
        assert len(values.cell_voltages) == model.cells
        assert len(values.temperatures) == model.temperatures
        assert values.extended_capacity == model.extended_capacity
        assert values.total_capacity == model.capacity
        assert values.voltage == pytest.approx(sum(values.cell_voltages), abs=1e-9)
        assert info[1] == module.address  # command value = the address
        # The wire form: item count 4 with FFFF short capacities, or 2 with real ones.
        tail = info[-13:] if model.extended_capacity else info[-7:]
        if model.extended_capacity:
            assert tail[:2] == b"\xff\xff" and tail[2] == 4 and tail[3:5] == b"\xff\xff"
            assert int.from_bytes(tail[-3:], "big") == round(model.capacity * 1000)
        else:
            assert tail[2] == 2
            assert int.from_bytes(tail[3:5], "big") == round(model.capacity * 1000)


def test_cell_and_temperature_counts() -> None:
    counts = {name: (m.cells, m.temperatures, m.extended_capacity) for name, m in MODELS.items()}
    # 5 temperatures (BMS board, cell groups 1-4) in every recorded US2000(B-Plus),
    # US2000C, US3000 and US3000C frame; a MOSFET sensor only on the US5000.
    assert counts["US2000B-Plus"] == (15, 5, False)
    assert counts["US2000C"] == (15, 5, False)
    assert counts["US3000"] == (15, 5, True)
    assert counts["US3000C"] == (15, 5, True)
    assert counts["US5000"] == (15, 6, True)
    assert counts["UP2500"] == (8, 5, True)
    assert counts["US5000-16S"] == (16, 6, True)
    assert MODELS["US3000C"].capacity == 74.0 and MODELS["UP2500"].capacity == 111.0
    up2500 = MODELS["UP2500"]
    assert (up2500.charge_voltage, up2500.discharge_voltage) == (28.4, 23.2)
    assert (up2500.charge_current, up2500.discharge_current) == (55.5, -55.5)


@pytest.mark.parametrize(
    ("model", "length"),
    # Recorded: 33 bytes, the last one an extra 00 (US2000C, US3000C, newer US2000B-Plus).
    # Not recorded: the layout without that byte (US3000: 5 temperatures; US5000: 6).
    [("US2000B-Plus", 33), ("US2000C", 33), ("US3000C", 33), ("US3000", 32), ("US5000", 33)],
)
def test_single_module_alarm_info_has_the_recorded_length(model: str, length: int) -> None:
    """Clients that check the recorded length refuse any other: pinned by the recordings,
    not computed from the model's own flags."""
    stack = BatteryStack(modules=2, model=model, seed=1)
    info = ok(stack, 2, 0x44, b"\x02")
    assert len(info) == length
    if model in ("US2000B-Plus", "US2000C", "US3000C"):
        assert info[-1] == 0


def test_alarm_info_matches_module(stack: BatteryStack) -> None:
    for module in stack.modules:
        info = ok(stack, module.address, 0x44, bytes([module.address]))
        assert ALARM_INFO.parse(info) == module.alarms()


def test_system_parameters_empty_or_address_info(stack: BatteryStack) -> None:
    model = get_model("US3000C")
    for info in (b"", b"\x03"):
        parsed = SYSTEM_PARAMETERS_INFO.parse(ok(stack, 3, 0x47, info))
        assert parsed == model.parameters
    raw = ok(stack, 2, 0x47)
    assert raw[0] == 0x11 and len(raw) == 25
    assert raw[11:13] == (370).to_bytes(2, "big")  # charge current limit 37.0 A in 0.1 A
    p = model.parameters
    assert (p.cell_high_voltage_limit, p.cell_low_voltage_limit) == (3.7, 3.05)
    assert (p.cell_under_voltage_limit, p.module_high_voltage_limit) == (2.9, 54.0)
    assert (p.charge_high_temperature_limit, p.charge_low_temperature_limit) == (60.0, 0.0)
    assert (p.discharge_high_temperature_limit, p.discharge_low_temperature_limit) == (60, -10)


def test_protocol_version_in_ver(stack: BatteryStack) -> None:
    frame = ask(stack, 2, 0x4F)
    assert (frame.cid2, frame.info, frame.version) == (0, b"", 0x20)
    # 4F ignores the request's VER (spec 3.1); other commands do not.
    assert decode_frame(slave(stack).respond(raw_request(2, 0x4F, version=0x33))).cid2 == 0
    assert rtn(stack, raw_request(2, 0x42, b"\x02", version=0x33)) == ReturnCode.VER_ERROR


def test_manufacturer_info_is_the_masters_everywhere() -> None:
    stack = BatteryStack(modules=["US3000C", "US2000B-Plus"], seed=1)
    for address in (2, 3):
        info = MANUFACTURER.parse(ok(stack, address, 0x51))
        assert (info.device_name, info.manufacturer_name) == ("US3000C", "Pylon")
        assert info.software_version == MODELS["US3000C"].software_version
    assert slave(stack).respond(encode_request(4, 0x51)) is None


def test_manufacturer_info_on_the_wire_is_dash_padded_us2kbpl() -> None:
    stack = BatteryStack(modules=1, model="US2000B-Plus", seed=1)
    info = ok(stack, 2, 0x51)
    assert info[:10] == b"US2KBPL\x00\x00\x00"
    assert info[12:] == b"Pylon" + b"-" * 15


def test_management_serial_software(stack: BatteryStack) -> None:
    for module in stack.modules:
        a = bytes([module.address])
        assert MANAGEMENT.parse(ok(stack, module.address, 0x92, a)) == module.management()
        serial = SERIAL.parse(ok(stack, module.address, 0x93, a))
        assert serial.serial_number == module.serial_number and len(serial.serial_number) == 16
        assert SOFTWARE.parse(ok(stack, module.address, 0x96, a)) == module.software()
    management = stack.module(2).management()
    assert (management.charge_voltage_limit, management.discharge_voltage_limit) == (53.2, 44.5)
    assert (management.charge_current_limit, management.discharge_current_limit) == (37.0, -37.0)
    serials = {m.serial_number for m in stack.modules}
    assert len(serials) == 3


@pytest.mark.parametrize("group", [0, 2])
def test_bank_wide_queries(group: int) -> None:
    stack = BatteryStack(modules=4, groups=[0, 2], seed=5)
    master = 0x02 + 0x10 * group
    members = [m for m in stack.modules if m.group == group]
    assert [m.address for m in members] == [master + i for i in range(4)]
    values = ANALOG_VALUES_BANK.parse(ok(stack, master, 0x42, b"\xff"), group)
    assert values == [m.values() for m in members]
    alarms = ALARM_INFO_BANK.parse(ok(stack, master, 0x44, b"\xff"), group)
    assert alarms == [m.alarms() for m in members]
    assert ok(stack, master, 0x42, b"\xff")[1] == 4  # module count
    # Only the master answers FF, only for 42/44.
    assert rtn(stack, encode_request(master + 1, 0x42, b"\xff")) == ReturnCode.ADR_ERROR
    assert rtn(stack, encode_request(master, 0x92, b"\xff")) == ReturnCode.ADR_ERROR


def test_groups_count_and_removed_module_skipped_in_bank() -> None:
    assert BatteryStack(groups=1).groups == (0,)
    stack = BatteryStack(modules=3, groups=2, seed=1)
    assert stack.groups == (1, 2)
    assert [m.address for m in stack.modules] == [0x12, 0x13, 0x14, 0x22, 0x23, 0x24]
    stack.remove_module(0x13)
    values = ANALOG_VALUES_BANK.parse(ok(stack, 0x12, 0x42, b"\xff"), 1)
    assert [v.cell_voltages for v in values] == [
        m.values().cell_voltages for m in (stack.module(0x12), stack.module(0x14))
    ]


def test_four_item_master_makes_every_module_answer_four_items() -> None:
    mixed = BatteryStack(modules=["US3000C", "US2000B-Plus"], seed=2)
    slave = ANALOG_VALUES.parse(ok(mixed, 3, 0x42, b"\x03"))
    assert slave.extended_capacity and slave.total_capacity == 50.0
    small = BatteryStack(modules=["US2000B-Plus", "US2000B-Plus"], seed=2)
    assert not ANALOG_VALUES.parse(ok(small, 3, 0x42, b"\x03")).extended_capacity


@pytest.mark.parametrize(
    ("options", "name"), [({"bank_query_supported": False}, "US3000C"), ({}, "US2000C")]
)
def test_firmware_ignoring_ff_stays_silent(options: dict, name: str) -> None:
    stack = BatteryStack(modules=3, model=name, seed=1, **options)
    for command in (0x42, 0x44):
        assert slave(stack).respond(encode_request(2, command, b"\xff")) is None
        assert ok(stack, 2, command, b"\x02")  # module by module still works


def test_negative_current_and_subzero_temperature_encode() -> None:
    stack = BatteryStack(modules=1, model="US2000B-Plus", seed=1)
    stack.freeze()
    module = stack.module(2)
    module.current = -12.3
    module.temperatures[1] = -5.4
    module.cell_voltages = [3.301 + i / 1000 for i in range(15)]
    module.remaining_capacity = 12.345
    module.cycle_number = 321
    stack.advance(3600)  # frozen: nothing moves
    info = ok(stack, 2, 0x42, b"\x02")
    values = ANALOG_VALUES.parse(info)
    assert values.current == -12.3 and values.temperatures[1] == -5.4
    assert values.cell_voltages[14] == 3.315 and values.remaining_capacity == 12.345
    assert values.voltage == round(sum(3301 + i for i in range(15))) / 1000
    assert values.cycle_number == 321
    assert (-123).to_bytes(2, "big", signed=True) in info
    assert (2731 - 54).to_bytes(2, "big") == info[2 + 1 + 30 + 1 + 2 : 2 + 1 + 30 + 1 + 4]


def test_return_codes(stack: BatteryStack) -> None:
    good = encode_request(3, 0x42, b"\x03")
    bad_checksum = good[:-5] + b"%04X\r" % ((int(good[-5:-1], 16) + 1) & 0xFFFF)
    assert rtn(stack, bad_checksum) == ReturnCode.CHKSUM_ERROR
    body = bytearray(good[1:-5])
    body[8] = ord("0")  # LCHKSUM nibble of LENGTH E002 -> 0002
    resealed = b"~" + bytes(body) + b"%04X\r" % (-sum(body) & 0xFFFF)
    assert rtn(stack, resealed) == ReturnCode.LCHKSUM_ERROR
    assert rtn(stack, raw_request(3, 0x43, b"\x03")) == ReturnCode.CID2_INVALID
    assert rtn(stack, raw_request(3, 0x42, b"\x04")) == ReturnCode.ADR_ERROR  # another module
    assert rtn(stack, raw_request(3, 0x92, b"\xff")) == ReturnCode.ADR_ERROR  # no bank form
    assert rtn(stack, raw_request(3, 0x42, b"\xff")) == ReturnCode.ADR_ERROR  # not the master
    assert rtn(stack, raw_request(3, 0x42, b"\x03", version=0x21)) == ReturnCode.VER_ERROR
    assert rtn(stack, encode_frame(Frame(0x20, 3, 0x4A, 0x42, b"\x03"))) == 0x04


def test_write_commands_refused_and_change_nothing(stack: BatteryStack) -> None:
    before = [ok(stack, m.address, 0x92, bytes([m.address])) for m in stack.modules]
    assert rtn(stack, raw_request(3, 0x94, b"\x03" + bytes(8))) == ReturnCode.CID2_INVALID
    assert rtn(stack, raw_request(3, 0x95, b"\x03")) == ReturnCode.CID2_INVALID
    assert stack.module(3).present
    after = [ok(stack, m.address, 0x92, bytes([m.address])) for m in stack.modules]
    assert before == after


@pytest.mark.parametrize(
    "request_bytes",
    [
        encode_request(5, 0x42, b"\x05"),  # no module there
        raw_request(0xFF, 0x4F),
        b"hello\r",
        b"~20024600E002\r",  # too short
        b"~2002460XE00202FD33\r",  # not hex
        b"",
    ],
)
def test_silence(stack: BatteryStack, request_bytes: bytes) -> None:
    assert slave(stack).respond(request_bytes) is None


# --- request forms recorded on real stacks (../shared/DESIGN.md) -> answer shape ------------

#: Requests recorded from real masters and published clients, exactly as sent, and what the
#: answer is: a command whose answer shape is checked below, or None for silence.
RECORDED_FORMS = {
    "~20024642C0040202FCD1": 0x42,  # INFO address + a second byte (one published client)
    "~20024642C0040201FCD2": 0x42,  # pylontech 0.1.3: address, position
    "~20024644C0040202FCCF": 0x44,
    "~20024692C0040202FCCC": 0x92,
    "~20024696C0040202FCC8": 0x96,
    "~200246470000FDA7": 0x47,  # no INFO
    "~20024647C0040000FCD0": 0x47,  # INFO 0000
    "~200246510000FDAC": 0x51,
    "~20024651C0040000FCD5": 0x51,
    "~2003464F0000FD97": 0x4F,  # at a slave
    "~2002464FC0048520FCB2": 0x4F,  # INFO 8520
    "~200246930000FDA6": None,  # per-module command without INFO: silent on a US2000C
    "~200246920000FDA7": None,
    "~2000464F0000FD9A": None,  # ADR 0 (python-pylontech's 0x4F): silent on US2000C/US5000
    "~20004651C0040000FCD7": None,  # ADR 0 0x51
}
#: Forms other published clients send (C, C#, Perl clients send VER 00 on 0x4F; a Python
#: fork and its Rust adapter send the address as INFO on 0x4F, 0x51 and 0x47).
OTHER_CLIENT_FORMS = {
    encode_frame(Frame(0x00, 2, 0x46, 0x4F)): 0x4F,
    encode_frame(Frame(0x20, 2, 0x46, 0x4F, b"\x02")): 0x4F,
    encode_frame(Frame(0x20, 3, 0x46, 0x51, b"\x03")): 0x51,
    encode_frame(Frame(0x20, 3, 0x46, 0x47, b"\x03")): 0x47,
}


def answer_length(model, command: int) -> int:
    """INFO length of a single-module answer of ``model`` to ``command``."""
    if command == 0x42:
        capacities = 2 + 1 + 2 + 2 + (6 if model.extended_capacity else 0)
        return 2 + 1 + 2 * model.cells + 1 + 2 * model.temperatures + 4 + capacities
    if command == 0x44:
        trailing = 1 if model.alarm_trailing_byte else 0
        return 2 + 1 + model.cells + 1 + model.temperatures + 3 + 5 + trailing
    return {0x47: 25, 0x51: 32, 0x4F: 0, 0x92: 10, 0x96: 6}[command]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(
    ("request_bytes", "command"),
    [(r.encode() + b"\r", c) for r, c in RECORDED_FORMS.items()] + list(OTHER_CLIENT_FORMS.items()),
    ids=[*RECORDED_FORMS, "ver00-4f", "4f-address", "51-address", "47-address"],
)
def test_request_forms_get_the_recorded_answer_shape(name, request_bytes, command):
    stack = BatteryStack(modules=2, model=name, seed=1)
    raw = slave(stack).respond(request_bytes)
    if command is None:
        assert raw is None
        return
    assert raw is not None, "no answer"
    frame = decode_frame(raw)
    request = decode_frame(request_bytes)
    assert (frame.version, frame.address, frame.cid1, frame.cid2) == (
        0x20,
        request.address,
        0x46,
        ReturnCode.NORMAL,
    )
    assert len(frame.info) == answer_length(MODELS[name], command)
    if command in (0x42, 0x44, 0x92, 0x96):
        # The command value is the module's address, whatever came after it in the INFO.
        assert frame.info[1 if command in (0x42, 0x44) else 0] == request.address


def test_the_position_without_group_bits_names_the_module():
    """``~20124642E00202FD32`` (a client on group 1 sends 02, not 12): answered for the
    module at the ADR. Our choice where the spec says "match ADR" and no answer was
    recorded; a byte that names another module is still RTN 90."""
    stack = BatteryStack(modules=2, groups=[1, 2], seed=1)
    frame = decode_frame(slave(stack).respond(b"~20124642E00202FD32\r"))
    assert frame.cid2 == 0 and ANALOG_VALUES.parse(frame.info) == stack.module(0x12).values()
    assert rtn(stack, raw_request(0x12, 0x42, b"\x03")) == ReturnCode.ADR_ERROR


@pytest.mark.parametrize(
    ("name", "answers"), [("US2000B-Plus", True), ("US3000", True), ("US2000C", False)]
)
def test_the_recorded_bank_wide_poll(name, answers):
    stack = BatteryStack(modules=3, model=name, seed=1)
    raw = slave(stack).respond(b"~20024642E002FFFD09\r")
    if not answers:
        assert raw is None
        return
    info = decode_frame(raw).info
    assert info[:2] == b"\x11\x03"  # INFOFLAG 0x11, three modules
    assert ANALOG_VALUES_BANK.parse(info, 0) == [m.values() for m in stack.modules]


def test_bank_wide_alarm_info_has_no_trailing_byte():
    stack = BatteryStack(modules=2, model="US3000C", seed=1)
    info = ok(stack, 2, 0x44, b"\xff")
    model = MODELS["US3000C"]
    assert len(info) == 2 + 2 * (1 + model.cells + 1 + model.temperatures + 3 + 5)


def test_status2_says_using_battery_power_charging_or_not():
    stack = BatteryStack(modules=1, model="US2000C", seed=1)
    for amperes in (12.0, 0.0, -12.0):
        stack.set_current(amperes)
        info = ok(stack, 2, 0x44, b"\x02")
        status2 = info[2 + 1 + 15 + 1 + 5 + 3 + 1]
        assert status2 == 0x0E, (amperes, hex(status2))


def test_infoflag_tells_an_alarm_change_not_yet_read():
    stack = BatteryStack(modules=1, model="US3000C", seed=1)
    stack.freeze()
    assert ok(stack, 2, 0x42, b"\x02")[0] == 0x11  # nothing read yet
    assert ok(stack, 2, 0x44, b"\x02")[0] == 0x10
    assert ok(stack, 2, 0x42, b"\x02")[0] == 0x00  # read: nothing pending
    assert ok(stack, 2, 0x44, b"\x02")[0] == 0x00
    assert ok(stack, 2, 0x47)[0] == 0x10
    stack.module(2).cell_voltages[3] = 3.8  # a cell goes high: alarm, charge MOSFET opens
    assert ok(stack, 2, 0x42, b"\x02")[0] == 0x11
    assert ok(stack, 2, 0x47)[0] == 0x11
    assert ok(stack, 2, 0x44, b"\x02")[0] == 0x10
    assert ok(stack, 2, 0x42, b"\x02")[0] == 0x00
    assert ok(stack, 2, 0x42, b"\xff")[0] == 0x11  # bank-wide 0x42 always says 11


def test_mixed_stack_answers_in_the_masters_capacity_form():
    stack = BatteryStack(modules=["US3000C", "US2000B-Plus", "US2000B-Plus"], seed=1)
    for address in (2, 3, 4):
        values = ANALOG_VALUES.parse(ok(stack, address, 0x42, bytes([address])))
        assert values.extended_capacity
    assert [m.total_capacity for m in ANALOG_VALUES_BANK.parse(ok(stack, 2, 0x42, b"\xff"), 0)] == [
        74.0,
        50.0,
        50.0,
    ]


@pytest.mark.parametrize("cells", [8, 9, 12, 16])
def test_any_cell_count(cells):
    stack = BatteryStack(modules=1, model=with_cells(MODELS["US2000C"], cells), seed=1)
    values = ANALOG_VALUES.parse(ok(stack, 2, 0x42, b"\x02"))
    assert len(values.cell_voltages) == cells
    assert values.voltage == pytest.approx(sum(values.cell_voltages), abs=1e-9)
    assert len(ALARM_INFO.parse(ok(stack, 2, 0x44, b"\x02")).cell_states) == cells
    with pytest.raises(ValueError, match="8 to 16 cells"):
        with_cells(MODELS["US2000C"], 17)


def test_junk_before_request_and_lowercase_are_accepted(stack: BatteryStack) -> None:
    request = encode_request(2, 0x42, b"\x02")
    assert slave(stack).respond(b"\x00\xff~12" + request) == slave(stack).respond(request)
    body = request[1:-5].lower()
    lowercase = b"~" + body + b"%04x\r" % (-sum(body) & 0xFFFF)
    assert slave(stack).respond(lowercase) == slave(stack).respond(request)


def test_remove_and_restore_module(stack: BatteryStack) -> None:
    stack.remove_module(3)
    assert slave(stack).respond(encode_request(3, 0x93, b"\x03")) is None
    stack.restore_module(3)
    assert ok(stack, 3, 0x93, b"\x03")


def _poll(stack: BatteryStack) -> list[bytes | None]:
    return [
        slave(stack).respond(encode_request(2, c, b"\xff" if c != 0x92 else b"\x02"))
        for c in (
            0x42,
            0x44,
            0x92,
        )
    ]


def test_deterministic_for_a_seed() -> None:
    a, b, c = (BatteryStack(modules=3, seed=s) for s in (42, 42, 43))
    for stack in (a, b, c):
        stack.advance(1234.5)
    assert _poll(a) == _poll(b) != _poll(c)
    assert [m.serial_number for m in a.modules] == [m.serial_number for m in b.modules]


REQUEST = encode_request(3, 0x42, b"\x03")


def _answer(stack: BatteryStack) -> bytes:
    raw = slave(stack).respond(REQUEST)
    assert raw is not None
    return raw


def test_fault_junk_and_nul(stack: BatteryStack) -> None:
    clean = _answer(stack)
    stack.faults.add("junk", size=6, count=1)
    stack.faults.add("nul", count=1)
    raw = _answer(stack)
    assert raw[6:] == clean + b"\x00\x00\x00" and b"~" not in raw[:6] and b"\r" not in raw[:6]
    assert _answer(stack) == clean  # count used up


def test_fault_checksums_and_lenid(stack: BatteryStack) -> None:
    stack.faults.add("chksum", count=1)
    with pytest.raises(ChecksumError, match="CHKSUM"):
        decode_frame(_answer(stack))
    stack.faults.add("lchksum", count=1)
    with pytest.raises(ChecksumError, match="LCHKSUM"):
        decode_frame(_answer(stack))
    stack.faults.add("lenid", count=1)
    with pytest.raises(FrameError, match="LENID"):
        decode_frame(_answer(stack))
    decode_frame(_answer(stack))


def test_fault_truncate_drop_delay(stack: BatteryStack) -> None:
    clean = _answer(stack)
    stack.faults.add("truncate", count=1)
    assert _answer(stack) == clean[: len(clean) // 2]
    stack.faults.add("truncate", size=10, count=1)
    assert _answer(stack) == clean[:10]
    stack.faults.add("drop", count=2)
    assert slave(stack).respond(REQUEST) is None and slave(stack).respond(REQUEST) is None
    stack.faults.add("delay", seconds=0.4, count=1)
    reply = slave(stack).handle(REQUEST)
    assert (reply.data, reply.delay) == (clean, 0.4)
    assert slave(stack).handle(REQUEST).delay == 0


def test_fault_rtn_wrong_address_stale(stack: BatteryStack) -> None:
    stack.faults.add("rtn", code=0x90, address=3)
    frame = decode_frame(_answer(stack))
    assert (frame.cid2, frame.info) == (0x90, b"")
    assert ok(stack, 2, 0x42, b"\x02")  # other addresses unaffected
    stack.faults.clear()
    stack.faults.add("wrong_address", count=1)
    assert decode_frame(_answer(stack)).address == 4
    stack.faults.add("wrong_address", to=0x22, count=1)
    assert decode_frame(_answer(stack)).address == 0x22
    previous = slave(stack).respond(encode_request(2, 0x93, b"\x02"))
    stack.faults.add("stale", count=1)
    raw = _answer(stack)
    assert raw.startswith(previous) and decode_frame(raw[len(previous) :]).address == 3


def test_fault_vanish_and_nobank(stack: BatteryStack) -> None:
    stack.faults.add("vanish", module=3, count=2)
    assert len(ANALOG_VALUES_BANK.parse(ok(stack, 2, 0x42, b"\xff"), 0)) == 2
    assert slave(stack).respond(REQUEST) is None
    assert _answer(stack)  # back
    stack.faults.add("nobank", count=1)
    assert slave(stack).respond(encode_request(2, 0x42, b"\xff")) is None  # ignored FF
    assert ok(stack, 2, 0x42, b"\xff")[1] == 3


def test_fault_filters_command_and_probability() -> None:
    stack = BatteryStack(modules=3, seed=11)
    stack.faults.add("drop", command=0x44)
    assert slave(stack).respond(encode_request(3, 0x44, b"\x03")) is None
    assert slave(stack).respond(REQUEST) is not None
    stack.faults.clear()
    fault = stack.faults.add("drop", probability=0.25)
    dropped = sum(slave(stack).respond(REQUEST) is None for _ in range(2000))
    assert 400 < dropped < 600 and fault.fired == dropped

    # Same seed, same faults: the same requests are dropped.
    def pattern(seed: int) -> list[bool]:
        s = BatteryStack(modules=3, seed=seed)
        s.faults.add("drop", probability=0.3)
        return [slave(s).respond(REQUEST) is None for _ in range(50)]

    assert pattern(4) == pattern(4) != pattern(5)


def test_faults_never_answer_silence(stack: BatteryStack) -> None:
    stack.faults.add("junk")
    stack.faults.add("stale")
    assert slave(stack).respond(encode_request(9, 0x42, b"\x09")) is None


def test_cell_voltage_errors_on_the_wire() -> None:
    """Status 4 holds cells 1-8 (bit 0 = cell 1), Status 5 cells 9-16."""
    stack = BatteryStack(modules=1, model="US5000-16S", seed=1)
    stack.freeze()
    module = stack.module(2)
    module.cell_voltages = [3.3] * 16
    module.cell_voltages[0], module.cell_voltages[9], module.cell_voltages[15] = 4.3, 0.5, 4.25
    assert ok(stack, 2, 0x44, b"\x02")[-2:] == b"\x01\x82"
