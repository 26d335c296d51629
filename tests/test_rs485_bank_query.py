"""What is learnt about a firmware's bank-wide (FF) query."""

from __future__ import annotations

import pytest

from pylontech_exporter.rs485.bank_query import BankQueryPolicy


def policy(mode: str = "auto") -> tuple[BankQueryPolicy, list[float]]:
    now = [0.0]
    return BankQueryPolicy(mode, reprobe_after=300, clock=lambda: now[0]), now


def test_unknown_firmware_is_asked_and_one_that_answers_stays_asked():
    p, _ = policy()
    assert p.should_ask() and p.supported is None
    p.answered()
    assert p.supported and p.should_ask()


def test_a_hiccup_after_it_worked_is_forgiven_at_once():
    p, _ = policy()
    p.answered()
    assert p.failed() is True
    assert p.supported is None and p.should_ask()


def test_never_answered_is_left_alone_then_probed_again():
    p, now = policy()
    assert p.failed() is None
    assert not p.should_ask()
    now[0] += 299
    assert not p.should_ask()
    now[0] += 1
    assert p.should_ask() and p.supported is None


def test_forget_makes_it_probe_again():
    p, _ = policy()
    p.failed()
    p.forget()
    assert p.should_ask()


@pytest.mark.parametrize(("mode", "asked"), [("on", True), ("off", False)])
def test_fixed_modes_learn_nothing(mode, asked):
    p, _ = policy(mode)
    for _ in range(3):
        p.failed()
        p.answered()
        assert p.should_ask() is asked
    assert p.supported is None


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="auto, on, off"):
        BankQueryPolicy("sometimes")
