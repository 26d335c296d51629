"""The source-neutral memory of a bank: known modules, when to discover, what is kept
between scrapes (and for how long), modules that stop answering, and the reading a
scrape hands out."""

from __future__ import annotations

import logging

import pytest
from support.stacks import frozen_stack

from pylontech_exporter.bank import MANAGEMENT_MAX_AGE, Bank
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.snapshot import ModuleReading


def make_bank(**config) -> tuple[Bank, list[float]]:
    now = [1000.0]
    bank = Bank(
        BankConfig("house", SerialSettings("p"), group=1, **config),
        clock=lambda: now[0],
        wall=lambda: now[0] + 1e9,
        static_refresh=3600,
        rediscover=300,
        drop_after=1800,
    )
    return bank, now


def test_a_fixed_module_count_is_known_and_never_discovered():
    bank, _ = make_bank(modules=3)
    assert bank.known == [1, 2, 3]
    assert not bank.discovery_due() and not bank.discovering
    assert bank.address(1) == 0x12


def test_discovery_at_start_hourly_and_after_a_lost_module():
    bank, now = make_bank()
    assert bank.discovering and bank.discovery_due()
    bank.discovered({1, 2})
    assert bank.known == [1, 2] and not bank.discovering and not bank.discovery_due()
    bank.answered({1, 2})
    now[0] += 10
    bank.answered({1})  # module 2 stopped answering: a rediscovery, not too soon
    assert not bank.discovery_due()
    now[0] += 290
    assert bank.discovery_due()
    bank.discovered({1})
    assert bank.known == [1, 2], "a module once known stays known (exported as down)"
    now[0] += 3600
    assert bank.discovery_due() and bank.discovery_reason == "hourly"


def test_a_module_silent_for_long_is_dropped_by_the_next_discovery(caplog):
    bank, now = make_bank()
    bank.discovered({1, 2, 3})
    now[0] += 1799
    bank.answered_now(1)
    bank.discovered({1})
    assert bank.known == [1, 2, 3]  # silent, but not for long enough
    now[0] += 1
    with caplog.at_level(logging.WARNING, logger="pylontech_exporter.bank"):
        bank.discovered({1})
    assert bank.known == [1]
    assert "no longer answer discovery" in caplog.text


def test_a_discovery_that_found_nothing_is_retried_soon():
    bank, now = make_bank()
    bank.discovered(set())
    assert bank.known == [] and not bank.discovering
    assert not bank.discovery_due()
    now[0] += 10
    assert bank.discovery_due()


def test_more_modules_in_a_bank_answer_ask_for_a_discovery_not_for_more_modules():
    bank, _ = make_bank()
    bank.discovered({1, 2})
    bank.want_discovery("the bank-wide answer lists more modules than known")
    assert bank.discovery_due() and bank.known == [1, 2]


def test_management_info_is_exported_while_young_with_its_time():
    stack = frozen_stack(modules=1)
    bank, now = make_bank(modules=1)
    info = stack.module(2).management()
    bank.keep_management(1, info)
    read_wall = now[0] + 1e9
    now[0] += MANAGEMENT_MAX_AGE
    module = bank.reading(1)
    assert module.management == info and module.read_at["management"] == read_wall
    now[0] += 0.001
    module = bank.reading(1)
    assert module.management is None and "management" not in module.read_at


def test_settled_once_modules_and_static_data_are_known():
    bank, now = make_bank()
    assert not bank.settled
    empty, _ = make_bank()
    empty.discovered(set())
    assert empty.settled  # nothing answered: nothing more to learn until something does
    bank.discovered({1})
    assert not bank.settled
    bank.bank_static_at = now[0]
    assert not bank.settled
    bank.memory(1).static_at = now[0]
    assert bank.settled


def test_forget_starts_over():
    bank, _ = make_bank()
    bank.discovered({1, 2})
    bank.memory(1).serial_number = "A"
    bank.forget("another stack answers")
    assert bank.known == [] and bank.discovering and bank.discovery_due()


def test_finish_lists_known_modules_not_read_as_down(caplog):
    bank, _ = make_bank(modules=3)
    bank.memory(2).serial_number = "B"
    reading = bank.begin()
    module = bank.reading(2)
    module.values = frozen_stack(modules=1).module(2).values()
    reading.modules.append(module)
    with caplog.at_level(logging.INFO, logger="pylontech_exporter.bank"):
        finished = bank.finish(reading, 0.25)
    assert [(m.position, m.address, m.up) for m in finished.modules] == [
        (1, 0x12, False),
        (2, 0x13, True),
        (3, 0x14, False),
    ]
    assert finished.modules[1].serial_number == "B"
    assert finished.duration == 0.25 and finished.up
    assert not caplog.records, "a bank that is up from the start is not announced"


def test_bank_down_is_logged_once_with_the_last_error(caplog):
    bank, _ = make_bank(modules=1)
    with caplog.at_level(logging.INFO, logger="pylontech_exporter.bank"):
        for _ in range(3):
            reading = bank.begin()
            bank.last_error = "no answer from 0x12"
            finished = bank.finish(reading, 0.0)
        up = bank.begin()
        module = bank.reading(1)
        module.values = frozen_stack(modules=1).module(2).values()
        up.modules.append(module)
        bank.finish(up, 0.0)
    assert finished.error == "no module answered (last error: no answer from 0x12)"
    assert [r.getMessage() for r in caplog.records] == ["bank down", "bank answers again"]


@pytest.mark.parametrize(
    ("discovered", "error"),
    [(None, "discovering the modules"), (set(), "no module answered discovery")],
)
def test_a_bank_without_modules_says_why(discovered, error):
    bank, _ = make_bank()
    if discovered is not None:
        bank.discovered(discovered)
    reading = bank.finish(bank.begin(), 0.0)
    assert not reading.up and reading.error == error
    assert reading.discovering is (discovered is None)


def test_unread_reports_every_known_module_down_and_the_counters():
    bank, _ = make_bank(modules=2)
    bank.count(5, {"timeout": 2})
    reading = bank.unread("the port is busy")
    assert reading.modules == [ModuleReading(1, 0x12), ModuleReading(2, 0x13)]
    assert reading.requests == 5 and reading.failures["timeout"] == 2
    assert reading.failures["checksum"] == 0  # every reason from the start
    assert not reading.complete and reading.error == "the port is busy"
