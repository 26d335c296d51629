"""The RS485 read plan over a fake client with a clock the test moves: deadlines keep
what was read, and what is learnt about the firmware's bank-wide query."""

from __future__ import annotations

from support.fakes import FakeClient
from support.stacks import frozen_stack

from pylontech_exporter.bank import REDISCOVER_SECONDS, Bank
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.rs485.reader import BankReader


def _bank_poller(stack_modules: int = 2, **config):
    clock = [1000.0]
    client = FakeClient(frozen_stack(modules=stack_modules, model="US3000C"), clock)
    bank = Bank(BankConfig("0", SerialSettings("fake"), **config), clock=lambda: clock[0])
    return BankReader(bank, client), client, clock


def test_deadline_in_the_per_module_path_keeps_static_data_of_read_modules():
    poller, client, clock = _bank_poller(3, bank_query="off")
    first = poller.read(clock[0] + 100)
    assert all(m.serial_number and m.parameters for m in first.modules)
    # The deadline passes while module 2 is read: module 1 was read, with its static data.
    second = poller.read(clock[0] + 1.5 * client.step)
    assert not second.complete
    assert [m.up for m in second.modules] == [True, True, False]
    for module in second.modules[:2]:
        assert module.serial_number == client.stack.module(module.address).serial_number
        assert module.software_version and module.parameters is not None


def test_bank_query_lost_probe_is_retried_later_with_a_fixed_module_count():
    poller, client, clock = _bank_poller(2, bank_query="auto", modules=2)
    client.fail = {"values_bank": 1, "alarms_bank": 1}
    first = poller.read(clock[0] + 100)
    assert first.up and not first.bank_query  # fell back to per-module reads
    client.calls.clear()
    clock[0] += 10
    assert not poller.read(clock[0] + 100).bank_query
    assert "values_bank" not in client.calls  # not probed on every scrape
    clock[0] += REDISCOVER_SECONDS
    client.calls.clear()
    third = poller.read(clock[0] + 100)
    assert third.bank_query and "alarms_bank" in client.calls
    assert "values" not in client.calls and "alarms" not in client.calls


def test_bank_query_that_worked_is_skipped_for_one_scrape_only():
    poller, client, clock = _bank_poller(2, bank_query="auto")
    assert poller.read(clock[0] + 100).bank_query
    client.fail = {"values_bank": 1}
    assert not poller.read(clock[0] + 100).bank_query
    assert poller.read(clock[0] + 100).bank_query


def test_bank_query_the_firmware_ignores_is_not_probed_every_scrape():
    poller, client, clock = _bank_poller(2, bank_query="auto")
    client.bank_supported = False
    for _ in range(5):
        clock[0] += 15
        assert poller.read(clock[0] + 100).up
    assert client.calls.count("values_bank") == 1
