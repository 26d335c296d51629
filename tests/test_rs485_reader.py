"""The RS485 read plan over a fake client with a clock the test moves: discovery and
static data between scrapes, what a scrape reads and in which order, what a deadline
keeps, and what is learnt about the firmware and the stack on the line."""

from __future__ import annotations

import pytest
from support.fakes import FakeClient
from support.stacks import frozen_stack

from pylontech_exporter.bank import MANAGEMENT_MAX_AGE, REDISCOVER_SECONDS, Bank
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.rs485.reader import MANAGEMENT_REFRESH, BankReader


def make(stack_modules: int = 2, **config) -> tuple[BankReader, FakeClient, list[float]]:
    clock = [1000.0]
    client = FakeClient(frozen_stack(modules=stack_modules, model="US3000C"), clock)
    bank = Bank(
        BankConfig("0", SerialSettings("fake"), **config),
        clock=lambda: clock[0],
        wall=lambda: clock[0] + 1.7e9,
    )
    return BankReader(bank, client), client, clock


def background(reader: BankReader, client: FakeClient, steps: int = 100) -> int:
    """Run background steps until nothing is due now; returns how many ran."""
    for done in range(steps):
        with client.deadline(Deadline()):
            if reader.background() != 0.0:
                return done
    raise AssertionError("background work never ends")


def scrape(reader: BankReader, clock: list[float], seconds: float = 100.0):
    return reader.read(Deadline(clock[0] + seconds, lambda: clock[0]))


def test_discovery_and_static_data_run_between_scrapes_each_read_once():
    reader, client, clock = make(3)
    background(reader, client)
    # 0x93 from the master up to one silent address, then 0x51, 0x96 and 0x47 per
    # module, then 0x92 per module; no 0x4F (the version is in every answer's VER).
    assert client.calls == (
        ["probe"] * 4 + ["manufacturer"] + ["software", "parameters"] * 3 + ["management"] * 3
    )
    assert client.stats.failures["timeout"] == 0, "the silent address is an answer"
    assert reader.bank.settled
    client.calls.clear()
    reading = scrape(reader, clock)
    assert client.calls[:2] == ["values_bank", "alarms_bank"]
    assert "probe" not in client.calls and "serial" not in client.calls
    assert [m.serial_number for m in reading.modules] == [
        m.serial_number for m in client.stack.modules
    ]
    assert str(reading.protocol_version) == "2.0"


def test_a_scrape_during_discovery_reads_the_modules_found_so_far():
    reader, client, clock = make(3)
    with client.deadline(Deadline()):
        reader.background()  # the master answered discovery
    reading = scrape(reader, clock)
    assert [m.position for m in reading.modules] == [1] and reading.up
    assert reading.discovering


def test_an_inflated_bank_answer_adds_no_module_and_asks_for_a_discovery():
    reader, client, clock = make(3)
    background(reader, client)
    client.phantoms = 17  # 20 modules listed once
    reading = scrape(reader, clock)
    assert [m.position for m in reading.modules] == [1, 2, 3]
    client.phantoms = 0
    assert reader.bank.discovery_due()
    client.calls.clear()
    background(reader, client)
    assert client.calls.count("probe") == 4 and reader.bank.known == [1, 2, 3]


def test_the_deadline_keeps_the_alarms_already_read():
    reader, client, clock = make(3, bank_query="off")
    background(reader, client)
    # 3 x 0x42 and 2 x 0x44 fit, the third 0x44 does not.
    reading = scrape(reader, clock, seconds=5.5 * client.step)
    assert not reading.complete
    assert [m.up for m in reading.modules] == [True, True, True]
    assert [m.alarms is not None for m in reading.modules] == [True, True, False]


def test_a_bank_answer_that_does_not_fit_gives_way_to_as_many_modules_as_fit():
    """8 modules at 9600 Bd under a 1 s scrape timeout: the bank-wide 0x42 never fits.
    After it was cut once, the modules are read one by one within the budget (some data,
    not none, every scrape); a scrape with more time asks bank-wide again."""
    reader, client, clock = make(8)
    background(reader, client)
    client.steps["values_bank"] = 8 * client.step  # longer than the budget below
    budget = 5.5 * client.step
    client.calls.clear()
    cut = scrape(reader, clock, seconds=budget)
    assert client.calls == ["values_bank"] and not cut.up and cut.hint
    for _ in range(2):
        client.calls.clear()
        partial = scrape(reader, clock, seconds=budget)
        assert client.calls == ["values"] * 6  # the sixth is cut by the deadline
        assert [m.address for m in partial.modules if m.up] == [2, 3, 4, 5, 6]
    client.calls.clear()
    full = scrape(reader, clock)
    assert client.calls[0] == "values_bank" and len(full.modules) == 8
    assert all(m.up for m in full.modules)


def test_a_deadline_is_no_evidence_about_the_bank_wide_query():
    reader, client, clock = make(2)
    background(reader, client)
    for _ in range(3):  # a scraper with almost no time, three times over
        assert not scrape(reader, clock, seconds=0.5 * client.step).complete
    client.calls.clear()
    assert scrape(reader, clock).bank_query
    assert client.calls[:2] == ["values_bank", "alarms_bank"]
    assert sum(client.stats.failures.values()) == 0


def test_management_info_under_a_short_budget_oldest_first_and_with_its_age():
    reader, client, clock = make(3)
    background(reader, client)
    clock[0] += MANAGEMENT_REFRESH  # every 0x92 is due again
    # values, alarms and one 0x92 fit
    scrapes = []
    for _ in range(3):
        scrapes.append(scrape(reader, clock, seconds=3.9 * client.step))
        clock[0] += 1  # the scrape interval
    first, second, third = scrapes
    # One 0x92 fits and is read; the second is not started (not cut by the deadline).
    assert first.complete and second.complete and third.complete
    fresh = [
        [m.read_at.get("management", 0) >= m.read_at["values"] for m in r.modules]
        for r in (first, second, third)
    ]
    assert fresh == [[True, False, False], [False, True, False], [False, False, True]]
    assert all(m.management is not None for m in third.modules)  # all young enough
    clock[0] += MANAGEMENT_MAX_AGE
    late = scrape(reader, clock, seconds=2.9 * client.step)
    assert [m.management is None for m in late.modules] == [True, True, True]


def test_a_failed_bank_wide_alarm_read_with_bank_query_on_is_no_success():
    reader, client, clock = make(2, bank_query="on")
    background(reader, client)
    assert all(m.success["alarms"] for m in scrape(reader, clock).modules)
    client.fail["alarms_bank"] = 1
    second = scrape(reader, clock)
    assert [(m.up, m.alarms, m.success["alarms"]) for m in second.modules] == [
        (True, None, False),
        (True, None, False),
    ]


def test_the_hourly_static_refresh_keeps_the_old_values_until_re_read():
    reader, client, clock = make(2)
    background(reader, client)
    clock[0] += 3600
    with client.deadline(Deadline()):
        reader.background()  # the refresh has begun
    reading = scrape(reader, clock)
    assert all(m.serial_number and m.software_version and m.parameters for m in reading.modules)


def test_another_stack_after_a_reconnect_is_not_served_as_this_one():
    reader, client, clock = make(2)
    background(reader, client)
    other = frozen_stack(modules=3, model="US2000C", seed=99)
    client.stack = other  # a gateway swapped between scrapes
    client.transport.generation += 1
    reading = scrape(reader, clock)
    assert not reading.up and reader.bank.discovering
    background(reader, client)
    reading = scrape(reader, clock)
    assert [m.serial_number for m in reading.modules] == [m.serial_number for m in other.modules]


def test_the_same_stack_after_a_reconnect_costs_one_request():
    reader, client, clock = make(2)
    background(reader, client)
    client.transport.generation += 1
    client.calls.clear()
    assert scrape(reader, clock).up
    assert client.calls[0] == "probe" and client.calls.count("probe") == 1


def test_bank_query_lost_probe_is_retried_later_with_a_fixed_module_count():
    reader, client, clock = make(2, bank_query="auto", modules=2)
    background(reader, client)
    client.fail = {"values_bank": 1, "alarms_bank": 1}
    first = scrape(reader, clock)
    assert first.up and not first.bank_query  # fell back to per-module reads
    client.calls.clear()
    clock[0] += 10
    assert not scrape(reader, clock).bank_query
    assert "values_bank" not in client.calls  # not probed on every scrape
    clock[0] += REDISCOVER_SECONDS
    client.calls.clear()
    third = scrape(reader, clock)
    assert third.bank_query and "alarms_bank" in client.calls
    assert "values" not in client.calls and "alarms" not in client.calls


def test_bank_query_that_worked_is_skipped_for_one_scrape_only():
    reader, client, clock = make(2)
    background(reader, client)
    assert scrape(reader, clock).bank_query
    client.fail = {"values_bank": 1}
    assert not scrape(reader, clock).bank_query
    assert scrape(reader, clock).bank_query


def test_bank_query_the_firmware_ignores_is_not_probed_every_scrape():
    reader, client, clock = make(2)
    background(reader, client)
    client.bank_supported = False
    for _ in range(5):
        clock[0] += 15
        assert scrape(reader, clock).up
    assert client.calls.count("values_bank") == 1  # then marked ignored, for a while


@pytest.mark.parametrize(("baud", "hinted"), [(115200, False), (9600, True)])
def test_a_budget_too_short_for_the_bus_gets_a_hint(baud, hinted):
    reader, client, clock = make(8)
    background(reader, client)
    client.transport.baudrate = baud
    client.step = 0.3  # the values fit in the 0.5 s allowed, the alarms do not
    reader.needed = None  # what the wire needs, estimated: 0.3 s at 115200, 1.7 s at 9600
    reading = scrape(reader, clock, seconds=0.5)
    assert not reading.complete
    assert (reading.hint is not None) is hinted
    if hinted:
        assert "8 modules at 9600 Bd" in reading.hint and "scrape_timeout" in reading.hint
