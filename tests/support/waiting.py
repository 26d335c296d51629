"""Polling for something to happen, instead of sleeping for a fixed time."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns something true or ``timeout`` passes; returns
    its last result (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    return condition()


def wait_until(
    condition: Callable[[], Any],
    what: str,
    timeout: float,
    *,
    interval: float = 0.2,
    alive: Callable[[], str | None] = lambda: None,
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition()`` until it returns something true; fail the test after
    ``timeout`` with ``what`` and ``details()``. OSError, ValueError and KeyError count as
    "not yet". ``alive()`` returns a message when something waited on has died (fails
    at once)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        dead = alive()
        if dead:
            pytest.fail(f"{dead} while waiting for {what}")
        try:
            result = condition()
            if result:
                return result
        except (OSError, ValueError, KeyError) as error:  # not up yet, bad answer
            last_error = error
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if details is not None:
                message += "\n" + details()
            pytest.fail(message)
        time.sleep(interval)
