"""The source-neutral memory of a bank: known modules, discovery and static-data timing,
modules that stop and start answering, and the reading a scrape hands out."""

from __future__ import annotations

import logging

from pylontech_exporter.bank import Bank, ModuleStatic
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.snapshot import ModuleReading


def make_bank(**config) -> tuple[Bank, list[float]]:
    now = [1000.0]
    bank = Bank(
        BankConfig("house", SerialSettings("p"), group=1, **config),
        clock=lambda: now[0],
        static_refresh=3600,
        rediscover=300,
    )
    return bank, now


def test_a_fixed_module_count_is_known_and_never_discovered():
    bank, now = make_bank(modules=3)
    assert bank.known == [1, 2, 3]
    assert not bank.discovery_due(now[0])
    assert bank.address(1) == 0x12


def test_discovery_is_due_at_start_hourly_and_after_a_lost_module():
    bank, now = make_bank()
    assert bank.discovery_due(now[0])
    bank.discovered([1, 2], now[0])
    assert bank.known == [1, 2] and not bank.discovery_due(now[0])
    bank.answered({1, 2})
    bank.answered({1})  # module 2 stopped answering
    assert bank.rediscover_wanted
    assert not bank.discovery_due(now[0] + 299)
    assert bank.discovery_due(now[0] + 300)
    bank.discovered([1], now[0] + 300)
    assert bank.known == [1, 2], "a module once known stays known (exported as down)"
    assert not bank.discovery_due(now[0] + 301)
    assert bank.discovery_due(now[0] + 300 + 3600)


def test_a_module_that_answers_again_has_its_static_data_read_again():
    bank, _ = make_bank(modules=2)
    bank.static[1] = ModuleStatic(serial_number="A")
    bank.static[2] = ModuleStatic(serial_number="B")
    assert bank.answered({1, 2}) == {1, 2}
    bank.static[1] = ModuleStatic(serial_number="A")
    bank.static[2] = ModuleStatic(serial_number="B")
    assert bank.answered({1}) == set()
    assert bank.answered({1, 2}) == {2}
    assert 2 not in bank.static and bank.static[1].serial_number == "A"


def test_static_data_expires_hourly():
    bank, now = make_bank(modules=1)
    assert bank.static_expired(now[0])  # never read
    bank.static[1] = ModuleStatic(serial_number="A")
    assert not bank.static_expired(now[0] + 3599)
    assert bank.static == {1: ModuleStatic(serial_number="A")}
    assert bank.static_expired(now[0] + 3600)
    assert bank.static == {}


def test_finish_lists_known_modules_not_read_as_down(caplog):
    bank, _ = make_bank(modules=3)
    bank.static[2] = ModuleStatic(serial_number="B")
    reading = bank.begin()
    module = bank.reading(2)
    module.values = object()  # type: ignore[assignment]  # what a source read
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
        module.values = object()  # type: ignore[assignment]
        up.modules.append(module)
        bank.finish(up, 0.0)
    assert finished.error == "no module answered (last error: no answer from 0x12)"
    assert [r.getMessage() for r in caplog.records] == ["bank down", "bank answers again"]


def test_unread_reports_every_known_module_down_and_the_counters():
    bank, _ = make_bank(modules=2)
    bank.count(5, {"timeout": 2})
    reading = bank.unread("the port is busy")
    assert reading.modules == [ModuleReading(1, 0x12), ModuleReading(2, 0x13)]
    assert reading.requests == 5 and reading.failures["timeout"] == 2
    assert reading.failures["checksum"] == 0  # every reason from the start
    assert not reading.complete and reading.error == "the port is busy"
