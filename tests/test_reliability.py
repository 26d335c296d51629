"""A misbehaving bus: every fault the simulator can inject, the whole bus going away and
coming back, and no leaks. The bulk runs the exporter in-process (same wiring as the
program, ``cli.build_server``); a representative subset runs it as a real process.

For each fault: HTTP keeps being served, the affected module or bank reports up 0, the
failure counter of the right reason increases, no reading of a module that was not read
is exported (and every reading that is exported is the simulator's current value, which
changes between scrapes so that a stale value would show), and the first scrape after
the fault clears is complete and correct again, without a restart.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from support.inprocess import InProcessExporter, bank, handler_threads, resources
from support.metrics import Key, assert_readings_equal, expected_readings, key, readings, select
from support.net import black_hole
from support.processes import Exporter
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator

RETURN_CODES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x90, 0x91)

#: (fault kind, options, reason counted or None, module 1 (the master, address 2) up?)
FAULTS = [
    ("junk", {"size": 40}, None, True),
    ("nul", {"size": 8}, None, True),
    ("stale", {}, None, True),
    ("nobank", {}, "timeout", True),  # the FF query goes unanswered, as on a US2000C
    ("truncate", {}, "timeout", False),
    ("chksum", {}, "checksum", False),
    ("lchksum", {}, "checksum", False),
    ("lenid", {}, "frame", False),
    ("wrong_address", {}, "timeout", False),
    ("drop", {}, "timeout", False),
    ("delay", {"seconds": 0.3}, "timeout", False),  # longer than both tries
    *[("rtn", {"code": code}, "return_code", False) for code in RETURN_CODES],
]


def failures(samples: dict[Key, float], bank_name: str = "0") -> dict[str, float]:
    return {
        dict(k[1])["reason"]: v
        for k, v in select(
            samples, "pylontech_serial_request_failures_total", bank=bank_name
        ).items()
    }


def module_up(samples: dict[Key, float], bank_name: str = "0") -> dict[int, float]:
    return {
        int(dict(k[1])["module"]): v
        for k, v in select(samples, "pylontech_module_up", bank=bank_name).items()
    }


def assert_no_stale_or_wrong(samples: dict[Key, float], expected: dict[Key, float]) -> None:
    """Every exported reading is the simulator's value now; down modules export none."""
    actual = readings(samples)
    wrong = {k: (v, expected.get(k)) for k, v in actual.items() if k not in expected}
    wrong.update(
        {
            k: (v, expected[k])
            for k, v in actual.items()
            if k in expected and abs(v - expected[k]) > 1e-9 * max(1.0, abs(expected[k]))
        }
    )
    assert not wrong, f"stale or wrong readings exported: {list(wrong.items())[:3]}"
    for position, up in module_up(samples).items():
        if not up:
            assert not readings(select(samples, module=str(position))), (
                f"module {position} is down but exports readings"
            )


@pytest.fixture
def stack():
    return frozen_stack(modules=3, model="US3000C")


@pytest.mark.parametrize(
    ("kind", "options", "reason", "master_up"),
    FAULTS,
    ids=[f"{k}-{o['code']:02X}" if "code" in o else k for k, o, *_ in FAULTS],
)
def test_fault_on_the_master(stack, kind, options, reason, master_up):
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url, timeout=0.08)) as exporter,
    ):
        before = exporter.scrape()
        assert_readings_equal(readings(before), expected_readings(stack, "0", 0))
        stack.set_current(7.5)  # every value read from now on differs from the last scrape
        stack.faults.add(kind, address=0x02, **options)
        samples = exporter.scrape()
        assert exporter.get("/")[0] == 200  # still serving
        stack.faults.clear()
        expected = expected_readings(stack, "0", 0)
        assert_no_stale_or_wrong(samples, expected)
        up = module_up(samples)
        assert up[1] == (1.0 if master_up else 0.0), up
        if kind != "delay":  # a late master jams the whole bus (one request at a time)
            assert up[2] == up[3] == 1.0
            assert samples[key("pylontech_up", bank="0")] == 1.0
        grew = {r for r, v in failures(samples).items() if v > failures(before)[r]}
        assert grew == ({reason} if reason else set()), failures(samples)
        if master_up:
            assert_readings_equal(readings(samples), expected)
        # The fault is gone: the next scrape is complete and correct again.
        after = exporter.scrape()
        assert_readings_equal(readings(after), expected)
        assert set(module_up(after).values()) == {1.0}


def test_module_disappears_and_comes_back(stack):
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url)) as exporter,
    ):
        first = exporter.scrape()
        stack.set_current(-3.0)
        vanish = stack.faults.add("vanish", module=0x03)  # module 2 unplugged
        samples = exporter.scrape()
        assert module_up(samples) == {1: 1.0, 2: 0.0, 3: 1.0}
        assert failures(samples)["timeout"] > failures(first)["timeout"]
        assert_no_stale_or_wrong(samples, expected_readings(stack, "0", 0))
        stack.faults.remove(vanish)
        samples = exporter.scrape()
        assert module_up(samples) == {1: 1.0, 2: 1.0, 3: 1.0}
        assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))


def test_bank_query_unsupported_falls_back_without_losing_data(stack):
    """``nobank``: the master ignores the FF query (silence), every time."""
    stack.faults.add("nobank")
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url)) as exporter,
    ):
        for _ in range(2):
            samples = exporter.scrape()
            assert module_up(samples) == {1: 1.0, 2: 1.0, 3: 1.0}
            assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))
            stack.set_current(4.0)
        before = tcp.requests
        exporter.scrape()
        # Decided: module by module (0x42, 0x44, 0x92 per module), no FF probe any more.
        assert tcp.requests - before == 9


def _assert_bus_down(samples: dict[Key, float], before: dict[Key, float]) -> None:
    assert samples[key("pylontech_up", bank="0")] == 0.0
    assert set(module_up(samples).values()) == {0.0}
    assert not readings(samples), "readings exported while the bus is gone"
    assert failures(samples)["transport"] > failures(before).get("transport", 0)


def test_tcp_gateway_refuses_then_comes_back(stack):
    tcp = TcpSimulator(Rs485Responder(stack), latency=0).start()
    port = tcp.port
    with InProcessExporter(bank(tcp.url)) as exporter:
        good = exporter.scrape()
        tcp.stop()  # connection reset, then refused
        for _ in range(2):
            samples = exporter.scrape()
            _assert_bus_down(samples, good)
            assert exporter.get("/")[0] == 200
        with TcpSimulator(Rs485Responder(stack), port=port, latency=0):
            stack.set_current(2.0)
            samples = exporter.scrape()
            assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))
            assert samples[key("pylontech_up", bank="0")] == 1.0


def test_tcp_gateway_reset_between_scrapes_costs_one_request(stack):
    tcp = TcpSimulator(Rs485Responder(stack), latency=0).start()
    with InProcessExporter(bank(tcp.url)) as exporter:
        good = exporter.scrape()
        tcp.stop()
        tcp = TcpSimulator(
            Rs485Responder(stack), port=tcp.port, latency=0
        ).start()  # a gateway reboot
        try:
            samples = exporter.scrape()
        finally:
            tcp.stop()
    # The old connection fails once (transport), the retry reconnects: nothing is lost.
    assert failures(samples)["transport"] == failures(good).get("transport", 0) + 1
    assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))


def test_pty_closed_and_device_removed_then_back(stack, tmp_path: Path):
    link = tmp_path / "ttyUSB0"
    pty = PtySimulator(Rs485Responder(stack), link, latency=0).start()
    with InProcessExporter(bank(str(link))) as exporter:
        good = exporter.scrape()
        pty.stop()  # the adapter is unplugged: the pty closes, the device node goes away
        assert not os.path.lexists(link)
        for _ in range(2):
            samples = exporter.scrape()
            _assert_bus_down(samples, good)
        with PtySimulator(
            Rs485Responder(stack), link, latency=0
        ):  # plugged in again (a new pts device)
            stack.set_current(1.0)
            samples = exporter.scrape()
            assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))


def _fault_cycles(stack, exporter, url_port: int, cycles: int) -> None:
    """Gateway gone and back, plus a timeout fault and a checksum fault, ``cycles`` times."""
    for cycle in range(cycles):
        tcp = TcpSimulator(Rs485Responder(stack), port=url_port, latency=0).start()
        try:
            # Discovered in the background, retried while the gateway was gone.
            assert wait_for(
                lambda: exporter.poller.banks[0].settled and exporter.poller.banks[0].known
            )
            stack.faults.add("drop", address=0x03, count=1)
            stack.faults.add("chksum", address=0x04, count=2)
            stack.faults.add("junk", probability=0.5)
            exporter.scrape()
            stack.faults.clear()
            samples = exporter.scrape()
            assert set(module_up(samples).values()) == {1.0}, cycle
        finally:
            tcp.stop()
        samples = exporter.scrape()
        assert samples[key("pylontech_up", bank="0")] == 0.0


def test_no_thread_or_fd_leak_over_many_fault_cycles(stack):
    tcp = TcpSimulator(Rs485Responder(stack), latency=0).start()
    port = tcp.port
    tcp.stop()
    with InProcessExporter(bank(tcp.url), ready=False) as exporter:
        _fault_cycles(stack, exporter, port, 2)  # warm up
        wait_for(lambda: handler_threads() == 0, 5)
        start = resources()
        _fault_cycles(stack, exporter, port, 8)

        def back() -> bool:
            end = resources()
            return end["threads"] <= start["threads"] and end["fds"] <= start["fds"]

        assert wait_for(back, 5), (start, resources())


# --- a real exporter process ---------------------------------------------------------------


def test_real_process_survives_faults_and_gateway_loss_without_leaks():
    stack = frozen_stack(modules=3, model="US3000C")
    tcp = TcpSimulator(Rs485Responder(stack), latency=0).start()
    port = tcp.port
    try:
        with Exporter(
            "--serial.port", tcp.url, "--serial.timeout", "0.1", "--cache.ttl", "0"
        ) as exporter:
            exporter.scrape()
            tcp.stop()
            pid = exporter.process.pid

            def cycle(scrapes: int) -> None:
                with TcpSimulator(Rs485Responder(stack), port=port, latency=0):
                    for kind, options in (
                        ("chksum", {"address": 2}),
                        ("rtn", {"code": 0x90, "address": 2}),
                        ("lenid", {"address": 2}),
                    ):
                        fault = stack.faults.add(kind, **options)
                        samples = exporter.scrape()
                        assert 0.0 in module_up(samples).values()
                        assert_no_stale_or_wrong(samples, expected_readings(stack, "0", 0))
                        stack.faults.remove(fault)
                    for _ in range(scrapes):
                        samples = exporter.scrape()
                        assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))
                samples = exporter.scrape()  # gateway gone
                assert samples[key("pylontech_up", bank="0")] == 0.0
                assert not readings(samples)

            for _ in range(2):
                cycle(2)
            start = resources(pid)
            for _ in range(10):
                cycle(3)
            wait_for(
                lambda: (
                    resources(pid)["threads"] <= start["threads"]
                    and resources(pid)["fds"] <= start["fds"]
                ),
                5,
            )
            end = resources(pid)
            assert exporter.process.poll() is None
            assert end["threads"] <= start["threads"], (start, end)
            assert end["fds"] <= start["fds"], (start, end)
            assert end["rss_kb"] - start["rss_kb"] < 4096, (start, end)
    finally:
        with contextlib.suppress(Exception):
            tcp.stop()


def test_real_process_pty_unplugged_and_replugged(tmp_path: Path):
    stack = frozen_stack(modules=2, model="US2000C")
    link = tmp_path / "ttyUSB0"
    pty = PtySimulator(Rs485Responder(stack), link, latency=0).start()
    try:
        with Exporter(
            "--serial.port", str(link), "--serial.timeout", "0.1", "--cache.ttl", "0"
        ) as exporter:
            assert_readings_equal(readings(exporter.scrape()), expected_readings(stack, "0", 0))
            pty.stop()
            samples = exporter.scrape()
            assert samples[key("pylontech_up", bank="0")] == 0.0
            assert not readings(samples)
            assert failures(samples)["transport"] >= 1
            pty = PtySimulator(Rs485Responder(stack), link, latency=0).start()
            stack.set_current(3.3)
            assert_readings_equal(readings(exporter.scrape()), expected_readings(stack, "0", 0))
            assert any("bank answers again" in line for line in exporter.lines)
    finally:
        pty.stop()


# --- hostile clients, gateways and stacks ---------------------------------------------------


def test_a_client_with_a_tiny_scrape_timeout_does_not_decide_what_prometheus_gets(stack):
    """One request a second with a timeout header of 0.000001 s, and Prometheus with 10 s:
    Prometheus gets complete readings every time (TTL 5 s and TTL 0)."""
    for ttl in (5.0, 0.0):
        with (
            TcpSimulator(Rs485Responder(stack), latency=0.02) as tcp,
            InProcessExporter(bank(tcp.url), cache_ttl=ttl) as exporter,
        ):
            for _ in range(3):
                tiny = {"X-Prometheus-Scrape-Timeout-Seconds": "0.000001"}
                assert exporter.get("/metrics", tiny)[0] == 200
                samples = exporter.scrape(headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
                assert set(module_up(samples).values()) == {1.0}, ttl
                assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))
            bank_reading = exporter.poller.banks[0]
            assert bank_reading.failures["timeout"] == 0  # no deadline counted as a fault


def test_an_unreachable_gateway_costs_the_other_line_nothing(stack):
    """A gateway whose TCP connect hangs (SYNs dropped) next to a healthy one that is reset
    before every scrape, so that both lines connect during each scrape: every scrape ends
    by its deadline with the healthy bank complete (the healthy line's connect never waits
    for the dead one's)."""
    tcp = TcpSimulator(Rs485Responder(stack), latency=0).start()
    try:
        with (
            black_hole() as dead,
            InProcessExporter(
                bank(tcp.url, name="ok"),
                bank(f"socket://127.0.0.1:{dead}", name="gone", timeout=1, modules=1),
                ready=False,
            ) as exporter,
        ):
            assert wait_for(lambda: exporter.poller.banks[0].settled)
            for scrape in range(6):
                tcp.stop()  # the healthy gateway reboots: its line reconnects in the scrape
                tcp = TcpSimulator(Rs485Responder(stack), port=tcp.port, latency=0).start()
                stack.set_current(float(scrape))
                samples = exporter.scrape(headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
                assert samples[key("pylontech_up", bank="ok")] == 1.0, scrape
                assert module_up(samples, "ok") == {1: 1.0, 2: 1.0, 3: 1.0}, scrape
                assert_readings_equal(
                    readings(select(samples, bank="ok")), expected_readings(stack, "ok", 0)
                )
                assert samples[key("pylontech_up", bank="gone")] == 0.0
    finally:
        tcp.stop()


def test_a_different_stack_behind_the_same_gateway_is_not_served_under_this_ones_name():
    first = frozen_stack(modules=2, model="US3000C", seed=1)
    second = frozen_stack(modules=3, model="US2000C", seed=2)
    tcp = TcpSimulator(Rs485Responder(first), latency=0).start()
    port = tcp.port
    try:
        with InProcessExporter(bank(tcp.url)) as exporter:
            exporter.scrape()
            tcp.stop()
            # The gateway is swapped for one with another stack behind it.
            tcp = TcpSimulator(Rs485Responder(second), port=port, latency=0).start()
            samples = exporter.scrape()
            for module in first.modules:  # no reading under the old stack's identity
                assert not [k for k in samples if ("serial_number", module.serial_number) in k[1]]
            assert wait_for(
                lambda: (
                    exporter.poller.banks[0].settled and len(exporter.poller.banks[0].known) == 3
                )
            )
            samples = exporter.scrape()
            assert_readings_equal(readings(samples), expected_readings(second, "0", 0))
    finally:
        tcp.stop()


def test_an_inflated_bank_answer_adds_no_phantom_module(stack):
    """One bank-wide 0x42 listing 20 modules (checksum right), and one listing 5: no
    module beyond the three is ever exported, and nothing stays down afterwards."""
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url)) as exporter,
    ):
        stack.faults.add("inflate", command=0x42, count=1)
        samples = exporter.scrape()
        assert (
            samples[key("pylontech_serial_request_failures_total", bank="0", reason="implausible")]
            == 1
        )
        stack.faults.add("inflate", command=0x42, size=5, count=1)
        exporter.scrape()
        for _ in range(3):
            samples = exporter.scrape()
            assert module_up(samples) == {1: 1.0, 2: 1.0, 3: 1.0}


def test_values_no_module_reports_are_not_exported(stack):
    stack.faults.add("implausible", address=0x02)
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        InProcessExporter(bank(tcp.url)) as exporter,
    ):
        samples = exporter.scrape()
    assert module_up(samples) == {1: 0.0, 2: 1.0, 3: 1.0}
    assert not [
        k for k in samples if k[0] == "pylontech_cell_voltage_volts" and ("module", "1") in k[1]
    ]
    assert (
        samples[key("pylontech_serial_request_failures_total", bank="0", reason="implausible")] >= 1
    )
