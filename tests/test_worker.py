"""The line worker: scrapes before background work, a background step cut when a scrape
comes (but not forever), and a bug in a source that does not stop the line."""

from __future__ import annotations

import threading

from support.inprocess import bank
from support.waiting import wait_for

from pylontech_exporter.bank import Bank
from pylontech_exporter.deadline import Deadline
from pylontech_exporter.snapshot import BankReading
from pylontech_exporter.worker import MAX_CUTS, LineWorker


class ScriptedSource:
    """A source whose background steps wait on the bus until their deadline is cut
    (or ``hold`` is set: the step finishes); ``log`` is what the line did, in order."""

    def __init__(self) -> None:
        self.banks = [Bank(bank("test"))]
        self.log: list[str] = []
        self.in_step = threading.Event()
        self.hold = threading.Event()
        self.fail_background = False
        self.fail_scrape = False
        self.closed = False

    def scrape(self, deadline: Deadline) -> list[BankReading]:
        self.log.append("scrape")
        if self.fail_scrape:
            raise RuntimeError("bug in scrape")
        return [BankReading(name="test", group=0, port="p")]

    def background(self, deadline: Deadline) -> float:
        if self.fail_background:
            self.log.append("background failed")
            raise RuntimeError("bug in background")
        self.in_step.set()
        while not deadline.passed() and not self.hold.wait(0.005):
            pass
        self.in_step.clear()
        self.log.append("step cut" if deadline.passed() else "step done")
        return 0.0

    def close(self) -> None:
        self.closed = True


def _worker(source: ScriptedSource) -> LineWorker:
    worker = LineWorker("p", source)
    worker.start()
    return worker


def _scrape(worker: LineWorker) -> list[BankReading] | None:
    return worker.submit(Deadline())()  # no deadline: what the line does decides


def test_a_scrape_cuts_the_background_step_waiting_on_the_bus():
    source = ScriptedSource()
    worker = _worker(source)
    try:
        assert source.in_step.wait(5)
        readings = _scrape(worker)
        assert readings is not None and readings[0].name == "test"
        assert source.log[:2] == ["step cut", "scrape"]
    finally:
        worker.stop().join(5)
    assert source.closed


def test_frequent_scrapes_do_not_starve_background_work():
    """After MAX_CUTS cut steps in a row, the next step is let finish: the scrape waits."""
    source = ScriptedSource()
    worker = _worker(source)
    try:
        for _ in range(MAX_CUTS):
            assert wait_for(source.in_step.is_set)
            _scrape(worker)
        assert wait_for(source.in_step.is_set)
        pending = threading.Thread(target=_scrape, args=(worker,))
        pending.start()
        assert not wait_for(lambda: source.log.count("scrape") > MAX_CUTS, timeout=0.3)
        source.hold.set()  # the step that was not cut finishes; then the scrape
        pending.join(5)
        steps = [entry for entry in source.log if entry != "scrape"]
        assert steps[:MAX_CUTS] == ["step cut"] * MAX_CUTS
        assert steps[MAX_CUTS] == "step done"
        assert source.log[source.log.index("step done") + 1] == "scrape"
    finally:
        worker.stop().join(5)


def test_a_bug_in_the_source_reports_the_bank_unread_and_the_line_goes_on():
    source = ScriptedSource()
    source.fail_background = source.fail_scrape = True
    worker = _worker(source)
    try:
        readings = _scrape(worker)
        assert readings is not None
        assert not readings[0].complete and readings[0].error == "internal error: bug in scrape"
        source.fail_scrape = False
        assert wait_for(lambda: source.log.count("background failed") >= 1)
        readings = _scrape(worker)
        assert readings is not None and readings[0].complete
    finally:
        worker.stop().join(5)


def test_a_scrape_whose_deadline_passed_while_queued_is_not_read():
    source = ScriptedSource()
    worker = _worker(source)
    try:
        assert source.in_step.wait(5)
        passed = Deadline(0.0)  # long gone by the time the line is free
        assert worker.submit(passed)() is None
        assert "scrape" not in source.log
    finally:
        worker.stop().join(5)
