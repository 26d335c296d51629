"""Deadlines that scrapes move later, background work has cut, and earlier views of."""

from __future__ import annotations

from pylontech_exporter.deadline import Deadline


def test_extend_only_moves_later_and_cut_ends_it_now():
    now = [100.0]
    deadline = Deadline(105.0, clock=lambda: now[0])
    deadline.extend(103.0)
    assert deadline.when == 105.0
    deadline.extend(110.0)
    assert deadline.remaining() == 10.0 and not deadline.passed()
    now[0] = 101.0
    deadline.cut()
    assert deadline.when == 101.0 and deadline.passed()


def test_an_earlier_deadline_moves_and_is_cut_with_its_base():
    now = [100.0]
    base = Deadline(110.0, clock=lambda: now[0])
    earlier = base.before(0.5)
    assert earlier.when == 109.5
    base.extend(120.0)  # a scraper joined with more time
    assert earlier.when == 119.5
    earlier.extend(130.0)  # extending the earlier one extends the base
    assert base.when == 130.5
    now[0] = 130.2
    assert earlier.passed() and not base.passed()
    earlier.cut()
    assert base.passed()


def test_no_deadline_never_passes():
    assert not Deadline().passed() and Deadline().remaining() == float("inf")
