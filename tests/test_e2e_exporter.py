"""End to end: the exporter as a real process against the simulator (TCP and pty),
scraped over HTTP; every value must equal what the (frozen) simulator holds."""

from __future__ import annotations

import gzip
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from support.inprocess import resources
from support.metrics import assert_readings_equal, expected_readings, key, parse, readings, select
from support.net import free_port
from support.processes import Exporter
from support.rules import require_binary
from support.stacks import frozen_stack
from support.waiting import wait_for

from pylontech_exporter import __version__
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.inverter import Inverter, get_profile
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator

FAST = ("--serial.timeout", "0.2", "--cache.ttl", "0")


@pytest.fixture
def stack():
    return frozen_stack(modules=3, model="US3000C")


@pytest.fixture
def tcp(stack):
    with TcpSimulator(Rs485Responder(stack), latency=0) as server:
        yield server


def test_tcp_scrape_equals_simulator_and_health(stack, tcp):
    with Exporter("--serial.port", tcp.url, *FAST) as exporter:
        samples = exporter.scrape()
    assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))
    assert samples[key("pylontech_up", bank="0")] == 1
    for position in (1, 2, 3):
        assert samples[key("pylontech_module_up", bank="0", module=position)] == 1
    assert samples[key("pylontech_serial_requests_total", bank="0")] >= 5
    for reason in ("timeout", "checksum", "frame", "return_code", "transport"):
        assert key("pylontech_serial_request_failures_total", bank="0", reason=reason) in samples
    assert (
        samples[key("pylontech_serial_request_failures_total", bank="0", reason="transport")] == 0
    )
    assert samples[key("pylontech_scrape_duration_seconds", bank="0")] > 0
    build = select(samples, "pylontech_exporter_build_info")
    assert list(build.values()) == [1.0]


def test_pty_scrape_equals_simulator(stack, tmp_path: Path):
    with (
        PtySimulator(Rs485Responder(stack), tmp_path / "ttyBattery", latency=0) as pty,
        Exporter("--serial.port", pty.link, *FAST) as exporter,
    ):
        samples = exporter.scrape()
    assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))


def test_two_groups_on_one_bus():
    stack = frozen_stack(modules=2, groups=2, model="US3000C")  # groups 1 and 2
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        Exporter("--serial.port", tcp.url, "--group", "1", "--group", "2", *FAST) as exporter,
    ):
        samples = exporter.scrape()
    expected = {**expected_readings(stack, "1", 1), **expected_readings(stack, "2", 2)}
    assert_readings_equal(readings(samples), expected)
    assert samples[key("pylontech_up", bank="1")] == samples[key("pylontech_up", bank="2")] == 1


def test_per_module_fallback_when_firmware_ignores_bank_query():
    stack = frozen_stack(modules=3, model="US3000C", bank_query_supported=False)
    with (
        TcpSimulator(Rs485Responder(stack), latency=0) as tcp,
        Exporter("--serial.port", tcp.url, *FAST) as e,
    ):
        samples = e.scrape()
        assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))
        # Decided once: the next snapshot goes straight to per-module reads,
        # 0x42, 0x44 and 0x92 for each of the 3 modules, no FF probe.
        before = tcp.requests
        assert_readings_equal(readings(e.scrape()), expected_readings(stack, "0", 0))
        assert tcp.requests - before == 9


def test_bank_query_used_when_answered(tcp):
    with Exporter("--serial.port", tcp.url, *FAST) as exporter:
        exporter.scrape()
        before = tcp.requests
        exporter.scrape()
        # one FF 0x42, one FF 0x44, 0x92 per module; static data is not read again
        assert tcp.requests - before == 5


def test_module_vanishes_and_returns(stack, tcp):
    with Exporter("--serial.port", tcp.url, *FAST) as exporter:
        assert_readings_equal(readings(exporter.scrape()), expected_readings(stack, "0", 0))
        stack.remove_module(0x03)  # module 2
        samples = exporter.scrape()
        assert samples[key("pylontech_module_up", bank="0", module=2)] == 0
        assert samples[key("pylontech_module_up", bank="0", module=1)] == 1
        assert samples[key("pylontech_up", bank="0")] == 1
        assert not readings(select(samples, module="2")), "readings of a vanished module"
        assert_readings_equal(readings(samples), expected_readings(stack, "0", 0, modules=(1, 3)))
        stack.restore_module(0x03)
        samples = exporter.scrape()
        assert samples[key("pylontech_module_up", bank="0", module=2)] == 1
        assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))


def test_new_module_appears(stack, tcp):
    stack.remove_module(0x04)
    with Exporter("--serial.port", tcp.url, *FAST) as exporter:
        samples = exporter.scrape()
        assert key("pylontech_module_up", bank="0", module=3) not in samples
        stack.restore_module(0x04)
        # The bank-wide answer now lists 3 modules: not taken on trust, but a discovery
        # starts, finds the third and reads its static data.
        samples = exporter.scrape()
        assert key("pylontech_module_up", bank="0", module=3) not in samples
        third = key(
            "pylontech_module_info",
            bank="0",
            module=3,
            serial_number=stack.module(4).serial_number,
            software_version=stack.module(4).model.mainline_version,
        )
        samples = wait_for(lambda: s if third in (s := exporter.scrape()) else None)
        assert samples[key("pylontech_module_up", bank="0", module=3)] == 1
        assert_readings_equal(readings(samples), expected_readings(stack, "0", 0))


def test_whole_bank_down_while_other_bank_reports(tmp_path: Path):
    first = frozen_stack(modules=2, model="US3000C", seed=1)
    second = frozen_stack(modules=2, model="US2000C", seed=2)
    with (
        TcpSimulator(Rs485Responder(first), latency=0) as a,
        TcpSimulator(Rs485Responder(second), latency=0) as b,
    ):
        config = tmp_path / "banks.yml"
        config.write_text(
            f"banks:\n  - name: garage\n    port: {a.url}\n"
            f"  - name: shed\n    port: {b.url}\n    bank_query: off\n"
        )
        with Exporter("--config.file", str(config), *FAST) as exporter:
            samples = exporter.scrape()
            assert_readings_equal(
                readings(samples),
                {**expected_readings(first, "garage", 0), **expected_readings(second, "shed", 0)},
            )
            b.stop()  # the shed's gateway goes away
            samples = exporter.scrape()
    assert samples[key("pylontech_up", bank="shed")] == 0
    assert samples[key("pylontech_up", bank="garage")] == 1
    assert samples[key("pylontech_module_up", bank="shed", module=1)] == 0
    assert not readings(select(samples, bank="shed")), "stale readings of a bank that is down"
    assert_readings_equal(readings(samples), expected_readings(first, "garage", 0))


def test_fifty_concurrent_scrapes_share_one_bus_read():
    """With no TTL, scrapes that arrive while a read is in flight wait for it. The bus is
    held until all 50 scrapes are being served (their threads exist), so none of them
    can come too late to join, however loaded the machine."""
    stack = frozen_stack(modules=3, model="US3000C")
    slave = Rs485Responder(stack)
    gate = threading.Event()
    handle = slave.handle

    def gated(request: bytes):
        gate.wait(30)
        return handle(request)

    with (
        TcpSimulator(slave, latency=0.05) as tcp,
        Exporter(
            "--serial.port", tcp.url, "--serial.timeout", "0.5", "--cache.ttl", "0"
        ) as exporter,
    ):
        exporter.scrape()  # discovery and static data
        before = tcp.requests
        idle_threads = resources(exporter.process.pid)["threads"]
        slave.handle = gated  # type: ignore[method-assign]
        results: list[dict] = []
        threads = [
            threading.Thread(target=lambda: results.append(exporter.scrape())) for _ in range(50)
        ]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: resources(exporter.process.pid)["threads"] >= idle_threads + 50)
        gate.set()
        for thread in threads:
            thread.join(30)
        assert len(results) == 50
        # exactly one snapshot: FF 0x42, FF 0x44, three 0x92
        assert tcp.requests - before == 5
        assert all(readings(r) == readings(results[0]) for r in results)
        counters = {r[key("pylontech_serial_requests_total", bank="0")] for r in results}
        assert len(counters) == 1
        # The next scrape reads again (no TTL).
        exporter.scrape()
        assert tcp.requests - before == 10


class Recorder:
    """The commands (CID2) the simulator is asked, in order."""

    def __init__(self, slave: Rs485Responder) -> None:
        self.commands: list[int] = []
        handle = slave.handle

        def recording(request: bytes):
            self.commands.append(int(request[request.rfind(b"~") + 7 :][:2], 16))
            return handle(request)

        slave.handle = recording  # type: ignore[method-assign]


def test_scrape_timeout_header_bounds_the_read():
    stack = frozen_stack(modules=3, model="US3000C")
    slave = Rs485Responder(stack)
    bus = Recorder(slave)
    with (
        TcpSimulator(slave, latency=0) as tcp,
        Exporter(
            "--serial.port", tcp.url, "--serial.timeout", "1", "--cache.ttl", "0",
            "--scrape.timeout-offset", "0.5",
        ) as exporter,
    ):  # fmt: skip
        full = exporter.scrape(timeout_header=30)
        assert_readings_equal(readings(full), expected_readings(stack, "0", 0))
        tcp.latency = 0.3  # from now on the bus is slow
        bus.commands.clear()
        # Each answer takes 0.3 s: values (FF) and alarms (FF) fit in the 0.8 s the
        # scrape allows, the 0x92 that follows does not.
        samples = exporter.scrape(timeout_header=1.3)
    assert bus.commands[:2] == [0x42, 0x44] and bus.commands[2:] in ([], [0x92])
    assert set(module_up(samples).values()) == {1.0}
    expected = expected_readings(stack, "0", 0)
    values = {k: v for k, v in readings(samples).items() if "management" not in k[0]}
    assert_readings_equal(values, expected)
    # The management info exported is the earlier one (younger than a minute), and says
    # so: read before this scrape's values.
    at = {
        (dict(k[1])["module"], dict(k[1])["data"]): v
        for k, v in select(samples, "pylontech_module_last_read_timestamp_seconds").items()
    }
    assert all(at[(m, "management")] < at[(m, "values")] for m in ("1", "2", "3"))


def test_scrape_timeout_cuts_per_module_reads():
    stack = frozen_stack(modules=3, model="US3000C", bank_query_supported=False)
    slave = Rs485Responder(stack)
    bus = Recorder(slave)
    with (
        TcpSimulator(slave, latency=0) as tcp,
        Exporter(
            "--serial.port", tcp.url, "--serial.timeout", "1", "--cache.ttl", "0",
            "--scrape.timeout-offset", "0.1",
        ) as exporter,
    ):  # fmt: skip
        exporter.scrape(timeout_header=30)
        tcp.latency = 0.3  # from now on the bus is slow
        bus.commands.clear()
        samples = exporter.scrape(timeout_header=0.85)  # room for 2 of the 3 0x42 answers
    assert bus.commands[:2] == [0x42, 0x42] and 0x44 not in bus.commands
    assert module_up(samples) == {1: 1.0, 2: 1.0, 3: 0.0}
    assert not readings(select(samples, module="3"))
    expected = expected_readings(stack, "0", 0)
    for k, v in readings(samples).items():
        assert v == pytest.approx(expected[k], rel=1e-9, abs=1e-9), k


def module_up(samples: dict) -> dict[int, float]:
    return {int(dict(k[1])["module"]): v for k, v in select(samples, "pylontech_module_up").items()}


def test_http_negotiation_landing_page_and_404(stack, tcp):
    with Exporter("--serial.port", tcp.url, *FAST) as exporter:
        status, headers, body = exporter.get(
            "/metrics",
            {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
        )
        assert status == 200
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        text = gzip.decompress(body).decode()
        assert text.endswith("# EOF\n")
        assert "pylontech_module_cycles_total{" in text

        status, headers, body = exporter.get("/metrics", method="HEAD")
        assert status == 200 and body == b""
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert int(headers["Content-Length"]) > 1000

        status, headers, body = exporter.get("/")
        page = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "Pylontech exporter" in page and __version__ in page
        assert "href='/metrics'" in page
        assert tcp.url in page  # the configured bank
        for module in stack.group_modules(0):  # live summary: serials and cell voltages
            values = module.values()
            assert module.serial_number in page
            assert f"{min(values.cell_voltages):.3f}" in page
            assert f"{values.voltage:.2f}" in page
        assert "http://" not in page and "https://" not in page  # no external assets

        for path in ("/nope", "/metrics/x", "/favicon.ico"):
            assert exporter.get(path)[0] == 404


def test_landing_page_before_any_scrape_does_not_touch_the_bus(tcp):
    with Exporter("--serial.port", tcp.url, *FAST) as exporter:
        before = tcp.requests  # discovery and static data: done in the background
        for path in ("/", "/-/healthy", "/-/ready"):
            status, _, _ = exporter.get(path)
            assert status == 200, path
        assert "No scrape yet" in exporter.get("/")[2].decode()
        assert tcp.requests == before


def test_simulate_mode_serves_three_modules():
    with Exporter("--simulate", "--cache.ttl", "0", "--serial.timeout", "0.3") as exporter:
        samples = exporter.scrape()
        _, _, page = exporter.get("/")
    assert samples[key("pylontech_up", bank="0")] == 1
    assert sorted(select(samples, "pylontech_module_up").values()) == [1, 1, 1]
    cells = select(samples, "pylontech_cell_voltage_volts")
    assert len(cells) == 3 * 15 and all(2.5 < v < 3.7 for v in cells.values())
    assert "Simulated battery stack" in page.decode()


@pytest.mark.prometheus
def test_promtool_check_metrics_on_a_real_scrape(tcp):
    promtool = require_binary("promtool")
    with Exporter("--serial.port", tcp.url, *FAST) as exporter:
        _, _, body = exporter.get("/metrics")
    text = body.decode()
    parse(text)  # well-formed
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # The contract names capacities in ampere-hours (docs/metrics.md); promtool would have
    # coulombs. Those two names are the only findings allowed.
    allowed = {
        'pylontech_module_full_capacity_ampere_hours use base unit "seconds" instead of "hours"',
        'pylontech_module_remaining_capacity_ampere_hours use base unit "seconds" instead of '
        '"hours"',
    }
    assert set(problems) <= allowed, problems
    assert "# TYPE" in text and " # " not in text.split("\n")[2]  # no sample timestamps
    for line in text.splitlines():
        if line.startswith("pylontech_"):
            assert len(line.rsplit("} ", 1)[-1].split()) == 1, f"timestamp in {line!r}"


def test_sigterm_ends_the_process_at_once_during_a_long_read():
    """A scrape with a 60 s timeout waits on an answer that does not come; SIGTERM (what
    systemd and docker send) ends the process without waiting for the read."""
    stack = frozen_stack(modules=2, model="US3000C")
    slave = Rs485Responder(stack)
    held = threading.Event()
    release = threading.Event()
    handle = slave.handle

    def hold(request: bytes):
        held.set()
        release.wait(120)
        return handle(request)

    with TcpSimulator(slave, latency=0) as tcp:
        exporter = Exporter("--serial.port", tcp.url, "--serial.timeout", "30", "--cache.ttl", "0")
        try:
            slave.handle = hold  # type: ignore[method-assign]
            threading.Thread(
                target=lambda: exporter.get(
                    "/metrics", {"X-Prometheus-Scrape-Timeout-Seconds": "60"}
                ),
                daemon=True,
            ).start()
            assert held.wait(10)
            exporter.process.send_signal(signal.SIGTERM)
            exporter.process.wait(10)  # the request in flight holds the line for 30 s
        finally:
            release.set()
            exporter.stop()
    assert exporter.process.returncode == 0


def _warnings(exporter: Exporter, text: str) -> int:
    """Warnings whose message starts with ``text``."""
    return sum(
        "level=warn" in line and re.search(r"msg=\"?" + re.escape(text), line) is not None
        for line in exporter.lines
    )


@pytest.mark.parametrize("protocol", ["rs485", "console"])
def test_a_gateway_that_refuses_the_connection_says_so_once(protocol):
    port = free_port()  # nothing listens there
    with Exporter(
        "--serial.port",
        f"socket://127.0.0.1:{port}",
        "--serial.protocol",
        protocol,
        "--log.level",
        "debug",
        *FAST,
        ready=False,
    ) as exporter:
        assert wait_for(lambda: sum("background work paused" in x for x in exporter.lines) >= 2)
        status, _, body = exporter.get("/-/ready")
        assert status == 503
        assert b"connection refused (is the gateway's TCP port right?)" in body
        exporter.scrape()
        page = exporter.get("/")[2].decode()
        assert "discovering the modules: cannot open socket://127.0.0.1:" in page
        assert _warnings(exporter, "cannot open socket://") == 1, exporter.describe()


def test_another_master_on_the_bus_is_named_once(stack):
    inverter = Inverter(stack, get_profile("full"), period=0.2)
    with (
        TcpSimulator(Rs485Responder(stack), latency=0.01, inverter=inverter) as server,
        Exporter("--serial.port", server.url, *FAST, ready=False) as exporter,
    ):

        def named() -> bool:
            exporter.scrape()
            return b"another master is polling this bus" in exporter.get("/")[2]

        assert wait_for(named, 20), exporter.describe()
        samples = exporter.scrape()
        failures = key("pylontech_serial_request_failures_total", bank="0", reason="another_master")
        assert samples[failures] > 0
        assert b"use --serial.listen-only" in exporter.get("/")[2]
        assert _warnings(exporter, "another master is polling this bus") == 1, exporter.describe()


def test_the_console_jack_read_as_rs485_has_no_modules_and_says_what_to_use(stack):
    with (
        TcpSimulator(ConsoleResponder(stack), latency=0) as server,
        Exporter("--serial.port", server.url, *FAST) as exporter,
    ):
        samples = exporter.scrape()
        page = exporter.get("/")[2].decode()
    assert select(samples, "pylontech_module_up") == {}
    assert samples[key("pylontech_up", bank="0")] == 0
    assert "answers like the RS232 console: use --serial.protocol console" in page


def test_a_slow_gateway_comes_up_with_a_raised_serial_timeout(stack):
    with (
        TcpSimulator(Rs485Responder(stack), latency=0.6) as server,
        Exporter("--serial.port", server.url, "--serial.timeout", "2", "--cache.ttl", "0") as exp,
    ):
        samples = exp.scrape()
    assert samples[key("pylontech_up", bank="0")] == 1
    assert len(select(samples, "pylontech_module_up")) == 3
