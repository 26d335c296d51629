"""End to end, listen-only: the exporter as a process beside a virtual inverter that is
the bus master (a broadcast TCP gateway, or a pty), scraped over HTTP. Every value the
inverter reads is exported, and not one byte reaches the line: at start, while scraping,
through faults, a reconnect and shutdown, and from ``scan`` and ``dump``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.metrics import assert_readings_equal, expected_readings, key, readings, select
from support.processes import Exporter, run_cli
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.inverter import PROFILES, Inverter
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator

LISTEN = ("--serial.listen-only", "--cache.ttl", "0")


@pytest.fixture
def stack():
    return frozen_stack(modules=3, model="US3000C")


def _inverter(stack, profile: str = "full") -> Inverter:
    return Inverter(stack, PROFILES[profile], period=0.3)


def _all_up(exporter: Exporter, modules: int = 3):
    def check():
        samples = exporter.scrape()
        up = select(samples, "pylontech_module_up")
        return samples if len(up) == modules and set(up.values()) == {1.0} else None

    samples = wait_for(check, timeout=20)
    assert samples, exporter.describe()
    return samples


def test_every_value_the_inverter_reads_is_exported_and_nothing_is_sent(stack):
    with TcpSimulator(Rs485Responder(stack), latency=0, inverter=_inverter(stack)) as gateway:
        with Exporter("--serial.port", gateway.url, *LISTEN) as exporter:
            samples = _all_up(exporter)
            assert samples[key("pylontech_up", bank="0")] == 1.0
            assert samples[key("pylontech_bank_discovering", bank="0")] == 0.0
            assert samples[key("pylontech_serial_requests_total", bank="0")] == 0.0
            frames = select(samples, "pylontech_listen_frames_total")
            assert frames[key("pylontech_listen_frames_total", bank="0", kind="request")] > 0
            period = samples[
                key("pylontech_listen_poll_period_seconds", bank="0", command="values")
            ]
            assert period >= 0.3
        assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))
        assert gateway.received == 0


def test_a_bank_wide_poll_only_exports_the_values_it_carries(stack):
    inverter = _inverter(stack, "bank")
    with (
        TcpSimulator(Rs485Responder(stack), latency=0, inverter=inverter) as gateway,
        Exporter("--serial.port", gateway.url, *LISTEN) as exporter,
    ):
        samples = _all_up(exporter)
    expected = readings(samples)
    assert key("pylontech_cell_voltage_volts", bank="0", module=3, cell=1) in expected
    assert not select(samples, "pylontech_cell_voltage_state")  # 0x44 never polled
    assert not select(samples, "pylontech_module_charge_voltage_limit_volts")
    assert gateway.received == 0


def test_faults_on_the_line_are_counted_and_the_exporter_keeps_serving(stack):
    for kind in ("junk", "chksum", "truncate", "drop", "stale"):
        stack.faults.add(kind, probability=0.2)
    with TcpSimulator(Rs485Responder(stack), latency=0, inverter=_inverter(stack)) as gateway:
        with Exporter("--serial.port", gateway.url, *LISTEN) as exporter:
            _all_up(exporter)
            assert wait_for(
                lambda: (
                    sum(
                        select(exporter.scrape(), "pylontech_listen_decode_failures_total").values()
                    )
                    > 0
                )
            )
            samples = exporter.scrape()
            assert samples[key("pylontech_listen_unanswered_requests_total", bank="0")] > 0
        assert gateway.received == 0


def test_a_module_not_heard_within_max_age_goes_down_and_a_restarted_gateway_is_heard(stack):
    with TcpSimulator(Rs485Responder(stack), latency=0, inverter=_inverter(stack)) as gateway:
        port = gateway.port
        with Exporter("--serial.port", gateway.url, *LISTEN, "--listen.max-age", "1") as exporter:
            _all_up(exporter)
            stack.remove_module(0x04)  # unplugged: the inverter gets no answer from it
            assert wait_for(
                lambda: exporter.scrape()[key("pylontech_module_up", bank="0", module=3)] == 0
            )
            samples = exporter.scrape()
            assert not [k for k in readings(samples) if ("module", "3") in k[1]]  # not stale
            stack.restore_module(0x04)
            gateway.stop()  # the gateway reboots
            with TcpSimulator(
                Rs485Responder(stack), port=port, latency=0, inverter=_inverter(stack)
            ) as again:
                _all_up(exporter)
            assert again.received == 0
        assert gateway.received == 0


def test_listening_on_a_pty_beside_the_inverter(stack, tmp_path: Path):
    with (
        PtySimulator(
            Rs485Responder(stack), tmp_path / "ttyRS485", latency=0, inverter=_inverter(stack)
        ) as line,
        Exporter("--serial.port", str(line.link), *LISTEN) as exporter,
    ):
        samples = _all_up(exporter)
        exporter.stop()  # shutdown sends nothing either
        assert line.received == 0
    assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))


def test_dump_reports_what_the_master_polls_and_scan_what_it_heard(stack):
    with TcpSimulator(
        Rs485Responder(stack), latency=0, inverter=_inverter(stack, "per-module")
    ) as gateway:
        dumped = run_cli(
            "dump", "--serial.port", gateway.url, "--serial.listen-only", "--listen.duration", "1.5"
        )
        scanned = run_cli(
            "scan", "--serial.port", gateway.url, "--serial.listen-only", "--listen.duration", "1.5"
        )
        assert gateway.received == 0
    assert dumped.returncode == 0, dumped.stderr
    assert "nothing is sent" in dumped.stderr
    assert "level=warn" not in dumped.stderr + scanned.stderr  # a clean end, no line lost
    assert "the bus master polls:" in dumped.stdout
    for command, address in (("values", "0x02"), ("alarms", "0x03"), ("management", "0x04")):
        assert any(
            line.split()[:3] == [command, address, address[2:]]
            for line in dumped.stdout.splitlines()
        ), dumped.stdout
    assert dumped.stdout.count(" 0x0") >= 9 + 3  # nine kinds of request, three modules
    assert scanned.returncode == 0, scanned.stderr
    assert "3 module(s) found" in scanned.stderr
    assert "? (not polled by the master)" in scanned.stdout  # no 0x96 in this profile
