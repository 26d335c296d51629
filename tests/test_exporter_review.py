"""Regression tests for the exporter-side review findings: each failed before its fix."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import math
import threading
import time
from types import SimpleNamespace

import pytest
from prometheus_client.registry import CollectorRegistry
from test_exporter_support import frozen_stack

from pylontech_exporter.cache import SnapshotCache
from pylontech_exporter.client import RequestStats
from pylontech_exporter.collector import DEFAULT_SCRAPE_TIMEOUT, active_alarms
from pylontech_exporter.config import BankConfig, ConfigError, SerialSettings
from pylontech_exporter.dump import render_json, render_table
from pylontech_exporter.errors import ResponseTimeout
from pylontech_exporter.poller import (
    REDISCOVER_SECONDS,
    BankPoller,
    BankReading,
    ModuleReading,
    Snapshot,
)
from pylontech_exporter.server import MAX_SCRAPE_TIMEOUT, ExporterServer, scrape_budget
from pylontech_exporter.webconfig import parse_web_config

# --- server.py ---------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["inf", "-inf", "nan", "1e12", "1e400", "0", "-3", "x"])
def test_scrape_budget_refuses_non_finite_and_huge_timeouts(header):
    budget = scrape_budget(header, 0.5)
    assert math.isfinite(budget) and 0 < budget <= 300
    if header in ("inf", "-inf", "nan", "0", "-3", "x", "1e400"):
        assert budget == DEFAULT_SCRAPE_TIMEOUT - 0.5
    if header == "1e12":
        assert budget == MAX_SCRAPE_TIMEOUT - 0.5


def test_scrape_budget_keeps_sane_values():
    assert scrape_budget("15", 0.5) == 14.5
    assert scrape_budget("0.4", 0.5) == 0.2
    assert scrape_budget(None, 0.5) == DEFAULT_SCRAPE_TIMEOUT - 0.5


class _Broken:
    def collect(self):
        raise RuntimeError("collector bug")


def _serve(registry: CollectorRegistry, landing=lambda: "<html></html>"):
    server = ExporterServer(("127.0.0.1", 0), registry=registry, landing=landing)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread


def _get(server: ExporterServer, path: str, headers: dict[str, str] | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_internal_errors_answer_500_and_are_logged(caplog):
    registry = CollectorRegistry()
    registry.register(_Broken())

    def landing() -> str:
        raise ValueError("landing bug")

    server, thread = _serve(registry, landing)
    try:
        with caplog.at_level(logging.ERROR, logger="pylontech_exporter.server"):
            status, _, body = _get(server, "/metrics")
            assert status == 500 and b"internal" in body
            status, _, _ = _get(server, "/")
            assert status == 500
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 2 and all(r.exc_info for r in errors)
        # The server still answers afterwards.
        assert _get(server, "/nothing")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- webconfig.py ------------------------------------------------------------------------


def test_web_config_header_values_must_be_latin1():
    document = {
        "http_server_config": {
            "headers": {"Content-Security-Policy": "default-src \u2019self\u2019"}
        }
    }
    with pytest.raises(ConfigError, match=r"Content-Security-Policy.*latin-1") as error:
        parse_web_config(document, "web.yml")
    assert "\n" not in str(error.value)
    ok = {"http_server_config": {"headers": {"Content-Security-Policy": "default-src 'self'"}}}
    assert parse_web_config(ok, "web.yml").headers


# --- cache.py ----------------------------------------------------------------------------


def test_cache_clears_the_flight_when_read_and_unread_both_fail():
    def read(deadline: float) -> Snapshot:
        raise RuntimeError("read bug")

    def unread(error: str) -> Snapshot:
        raise RuntimeError("unread bug")

    cache = SnapshotCache(read, unread, ttl=0)
    with pytest.raises(RuntimeError):
        cache.get(time.monotonic() + 5)
    # A later scrape starts its own read instead of waiting out its deadline.
    started = time.monotonic()
    with pytest.raises(RuntimeError):
        cache.get(time.monotonic() + 5)
    assert time.monotonic() - started < 1 and cache.reads == 2


def test_cache_waiters_are_woken_when_the_leader_fails():
    entered = threading.Event()
    release = threading.Event()

    def read(deadline: float) -> Snapshot:
        entered.set()
        release.wait(5)
        raise RuntimeError("read bug")

    def unread(error: str) -> Snapshot:
        if error.startswith("internal error"):
            raise RuntimeError("unread bug")
        return Snapshot(banks=[], finished=time.monotonic())

    cache = SnapshotCache(read, unread, ttl=0)
    failures, waited = [], []

    def lead() -> None:
        try:
            cache.get(time.monotonic() + 5)
        except RuntimeError as error:
            failures.append(error)

    def wait() -> None:
        start = time.monotonic()
        cache.get(start + 5)
        waited.append(time.monotonic() - start)

    leader = threading.Thread(target=lead)
    leader.start()
    assert entered.wait(5)
    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    release.set()
    leader.join(5)
    waiter.join(6)
    assert failures and waited and waited[0] < 1


# --- poller.py ---------------------------------------------------------------------------


class FakeClient:
    """The poller's view of a client, over a frozen simulated stack, with a clock the
    test controls (every request takes ``step`` seconds) and scripted failures."""

    def __init__(self, stack, clock: list[float], *, step: float = 0.01) -> None:
        self.stack = stack
        self.clock = clock
        self.step = step
        self.stats = RequestStats()
        self.calls: list[str] = []
        #: Command names that fail (ResponseTimeout) the next ``n`` times: name -> n.
        self.fail: dict[str, int] = {}
        self.bank_supported = True

    def _call(self, name: str) -> None:
        self.calls.append(name)
        self.stats.requests += 1
        self.clock[0] += self.step
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            self.stats.failures["timeout"] += 1
            raise ResponseTimeout(f"{name}: no answer")

    @contextlib.contextmanager
    def deadline(self, when: float):
        yield

    def discover(self, group: int = 0, *, timeout: float | None = None) -> list[int]:
        self._call("discover")
        return [m.address for m in self.stack.modules]

    def get_values_bank(self, group: int = 0):
        self._call("values_bank")
        if not self.bank_supported:
            raise ResponseTimeout("FF ignored")
        return SimpleNamespace(modules=[m.values() for m in self.stack.modules])

    def get_values_single(self, address: int):
        self._call("values")
        return self.stack.module(address).values()

    def get_alarm_info_bank(self, group: int = 0):
        self._call("alarms_bank")
        if not self.bank_supported:
            raise ResponseTimeout("FF ignored")
        return [m.alarms() for m in self.stack.modules]

    def get_alarm_info(self, address: int):
        self._call("alarms")
        return self.stack.module(address).alarms()

    def get_management_info(self, address: int):
        self._call("management")
        return self.stack.module(address).management()

    def get_system_parameters(self, address: int):
        self._call("parameters")
        return self.stack.module(address).model.parameters

    def get_module_serial_number(self, address: int):
        self._call("serial")
        return self.stack.module(address).serial()

    def get_software_version(self, address: int):
        self._call("software")
        return self.stack.module(address).software()

    def get_manufacturer_info(self, address: int):
        self._call("manufacturer")
        return self.stack.master(0).manufacturer()

    def get_protocol_version(self, address: int):
        self._call("protocol")
        return None

    def close(self) -> None:
        pass


def _bank_poller(stack_modules: int = 2, **config):
    clock = [1000.0]
    client = FakeClient(frozen_stack(modules=stack_modules, model="US3000C"), clock)
    bank_config = BankConfig("0", SerialSettings("fake"), **config)
    return BankPoller(bank_config, client, clock=lambda: clock[0]), client, clock


def test_deadline_in_the_per_module_path_keeps_static_data_of_read_modules():
    poller, client, clock = _bank_poller(3, bank_query="off")
    first = poller.read(clock[0] + 100)
    assert all(m.serial_number and m.parameters for m in first.modules)
    # The deadline passes while module 2 is read: module 1 was read, with its static data.
    second = poller.read(clock[0] + 1.5 * client.step)
    assert not second.complete
    assert [m.up for m in second.modules] == [True, True, False]
    for module in second.modules[:2]:
        assert module.serial_number == client.stack.module(module.address).serial_number
        assert module.software_version and module.parameters is not None


def test_bank_query_lost_probe_is_retried_later_with_a_fixed_module_count():
    poller, client, clock = _bank_poller(2, bank_query="auto", modules=2)
    client.fail = {"values_bank": 1, "alarms_bank": 1}
    first = poller.read(clock[0] + 100)
    assert first.up and not first.bank_query  # fell back to per-module reads
    client.calls.clear()
    clock[0] += 10
    assert not poller.read(clock[0] + 100).bank_query
    assert "values_bank" not in client.calls  # not probed on every scrape
    clock[0] += REDISCOVER_SECONDS
    client.calls.clear()
    third = poller.read(clock[0] + 100)
    assert third.bank_query and "alarms_bank" in client.calls
    assert "values" not in client.calls and "alarms" not in client.calls


def test_bank_query_that_worked_is_skipped_for_one_scrape_only():
    poller, client, clock = _bank_poller(2, bank_query="auto")
    assert poller.read(clock[0] + 100).bank_query
    client.fail = {"values_bank": 1}
    assert not poller.read(clock[0] + 100).bank_query
    assert poller.read(clock[0] + 100).bank_query


def test_bank_query_the_firmware_ignores_is_not_probed_every_scrape():
    poller, client, clock = _bank_poller(2, bank_query="auto")
    client.bank_supported = False
    for _ in range(5):
        clock[0] += 15
        assert poller.read(clock[0] + 100).up
    assert client.calls.count("values_bank") == 1


# --- dump.py -----------------------------------------------------------------------------


def test_dump_json_has_null_not_nan_when_full_capacity_is_zero():
    values = frozen_stack(modules=1, model="US3000C").module(2).values()
    values = dataclasses.replace(values, total_capacity=0)
    bank = BankReading(name="0", group=0, port="p", modules=[ModuleReading(1, 2, values=values)])
    snapshot = Snapshot(banks=[bank], taken_at=1.0)
    text = render_json(snapshot)
    assert "NaN" not in text
    assert json.loads(text)["banks"][0]["modules"][0]["values"]["state_of_charge"] is None
    assert "nan" not in render_table(snapshot)


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity, gzip;q=0.0", False),
        ("gzip;q=x", False),
        ("", False),
    ],
)
def test_gzip_only_when_accepted_with_a_positive_quality(accept_encoding, gzipped):
    server, thread = _serve(CollectorRegistry())
    try:
        status, headers, _ = _get(server, "/metrics", {"Accept-Encoding": accept_encoding})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert status == 200
    assert (headers.get("Content-Encoding") == "gzip") is gzipped


# --- one summary of active alarms --------------------------------------------------------


def test_landing_page_and_dump_list_the_same_active_alarms():
    from pylontech_exporter.landing import render
    from pylontech_exporter.models import AlarmState, Protections

    module = frozen_stack(modules=1, model="US3000C").module(2)
    alarms = dataclasses.replace(
        module.alarms(),
        cell_states=(AlarmState.NORMAL, AlarmState.HIGH),
        temperature_states=(AlarmState.NORMAL, AlarmState.LOW),
        voltage_state=AlarmState.HIGH,
        protections=Protections(module_over_voltage=True),
        cell_voltage_errors=(False, False, True),
    )
    assert active_alarms(alarms) == [
        "protection module_over_voltage",
        "cell 2 high",
        "temperature cells_1 low",
        "module voltage high",
        "cell 3 voltage error",
    ]
    bank = BankReading(
        name="0",
        group=0,
        port="p",
        modules=[ModuleReading(1, 2, values=module.values(), alarms=alarms)],
    )
    snapshot = Snapshot(banks=[bank], taken_at=1.0)
    page = render([BankConfig("0", SerialSettings("p"))], snapshot, now=2.0)
    table = render_table(snapshot)
    for text in active_alarms(alarms):
        assert text in page and text in table
