"""Log lines: one record per line in logfmt or JSON, tracebacks kept, junk escaped."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pylontech_exporter.logging_setup import kv, setup_logging


def _log(fmt: str, emit) -> str:
    stream = io.StringIO()
    setup_logging("debug", fmt, stream)
    try:
        emit(logging.getLogger("pylontech_exporter.test"))
    finally:
        logging.getLogger().handlers.clear()
    return stream.getvalue()


def _fail_inside(log: logging.Logger) -> None:
    try:
        {}["missing"]
    except KeyError:
        log.exception("reading the line failed", extra=kv(line="/dev/ttyUSB0"))


def test_logfmt_keeps_the_traceback_on_the_one_line():
    out = _log("logfmt", _fail_inside)
    assert out.count("\n") == 1  # one record, one line
    assert 'msg="reading the line failed" line=/dev/ttyUSB0' in out
    assert "err=\"KeyError: 'missing'\"" in out
    assert 'stack="Traceback (most recent call last):\\n' in out
    assert "in _fail_inside\\n" in out and "KeyError: 'missing'\"" in out


def test_json_keeps_the_traceback():
    record = json.loads(_log("json", _fail_inside))
    assert record["level"] == "error" and record["line"] == "/dev/ttyUSB0"
    assert record["stack"].startswith("Traceback") and "_fail_inside" in record["stack"]


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\\b", '"a\\\\b"'),
        ("forged\nts=1 level=error msg=fake", '"forged\\nts=1 level=error msg=fake"'),
        ("carriage\rreturn", '"carriage\\rreturn"'),
        ("tab\there", '"tab\\there"'),
        ("\x1b[2Jcleared", '"\\x1b[2Jcleared"'),  # a terminal escape from a serial port
        ("nul\x00byte", '"nul\\x00byte"'),
        ("del\x7f", '"del\\x7f"'),
        ("line\u2028sep", '"line\\u2028sep"'),
        ("bidi\u202eflip", '"bidi\\u202eflip"'),
        ("", '""'),
        ("Pylon-°C", "Pylon-°C"),  # printable non-ASCII stays readable
    ],
)
def test_logfmt_values_escape_every_control_character(value, logged):
    out = _log("logfmt", lambda log: log.info("x", extra=kv(value=value)))
    assert out.endswith(f" value={logged}\n")
    assert out.count("\n") == 1


def test_level_filters_and_names():
    stream = io.StringIO()
    setup_logging("warn", "logfmt", stream)
    try:
        log = logging.getLogger("pylontech_exporter.test")
        log.info("hidden")
        log.warning("shown")
    finally:
        logging.getLogger().handlers.clear()
    assert "hidden" not in stream.getvalue()
    assert " level=warn " in stream.getvalue()
