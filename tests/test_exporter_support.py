"""Helpers for the exporter and CLI tests (no tests here): run the exporter as a real
process, scrape it over HTTP, and compute what every sample must be from the simulator.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pylontech_exporter.collector import sensor_name
from pylontech_exporter.simulator import BatteryStack

REPO = Path(__file__).resolve().parent.parent
Key = tuple[str, tuple[tuple[str, str], ...]]

STATES = {0x00: "normal", 0x01: "low", 0x02: "high", 0xF0: "fault"}


def exporter_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pylontech_exporter.cli", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any PYLONTECH_EXPORTER_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYLONTECH_EXPORTER_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30):
    """Run the CLI to completion; returns the CompletedProcess (text)."""
    return subprocess.run(
        exporter_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
    )


class Exporter:
    """``pylontech-exporter`` serving on 127.0.0.1 at a port the OS picks."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        #: With --web.listen-address given, startup is noticed by connecting (the log line
        #: that names the address may be filtered by --log.level).
        self.fixed = next(
            (a for i, a in enumerate(args) if args[i - 1] == "--web.listen-address"), None
        )
        listen = [] if self.fixed else ["--web.listen-address", "127.0.0.1:0"]
        self.process = subprocess.Popen(
            exporter_command(*args, *listen),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=env if env is not None else clean_env(),
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.address = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self.fixed:
            self._wait_connectable(self.fixed)
        if not self._listening.wait(20):
            self.stop()
            raise AssertionError("exporter did not start:\n" + "\n".join(self.lines))
        self.base = f"http://{self.address}"

    def _wait_connectable(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), 0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            self.address = address
            self._listening.set()
            return

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"msg=listening address=(\S+)", line) or re.search(
                r'"msg": "listening".*"address": "([^"]+)"', line
            )
            if match:
                self.address = match.group(1)
                self._listening.set()

    def get(
        self, path: str = "/metrics", headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def scrape(self, timeout_header: float | None = None) -> dict[Key, float]:
        headers = {}
        if timeout_header is not None:
            headers["X-Prometheus-Scrape-Timeout-Seconds"] = str(timeout_header)
        status, _, body = self.get("/metrics", headers)
        assert status == 200
        return parse(body.decode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse(text: str) -> dict[Key, float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def key(name: str, **labels: object) -> Key:
    return (name, tuple(sorted((k, str(v)) for k, v in labels.items())))


def select(samples: dict[Key, float], prefix: str = "pylontech_", **labels: str) -> dict:
    """Samples whose name starts with ``prefix`` and that carry ``labels``."""
    return {
        k: v
        for k, v in samples.items()
        if k[0].startswith(prefix) and all((n, str(x)) in k[1] for n, x in labels.items())
    }


#: Samples the exporter adds about itself and the bus, not readings.
HEALTH = (
    "pylontech_up",
    "pylontech_module_up",
    "pylontech_scrape_duration_seconds",
    "pylontech_serial_requests_total",
    "pylontech_serial_request_failures_total",
    "pylontech_exporter_build_info",
)


def readings(samples: dict[Key, float]) -> dict[Key, float]:
    """Every pylontech_* sample that is a reading (not health)."""
    return {k: v for k, v in select(samples).items() if k[0] not in HEALTH}


def expected_readings(
    stack: BatteryStack, bank: str, group: int, *, modules: Iterable[int] | None = None
) -> dict[Key, float]:
    """Every reading sample the exporter must serve for ``group`` of ``stack`` (present
    modules only, or the ``modules`` positions given)."""
    out: dict[Key, float] = {}
    members = [m for m in stack.group_modules(group)]
    master = stack.master(group)
    maker = master.manufacturer()
    out[
        key(
            "pylontech_bank_info",
            bank=bank,
            device_name=maker.device_name,
            manufacturer=maker.manufacturer_name,
            software_version=maker.software_version,
            protocol_version="{}.{}".format(*divmod(master.model.protocol_version, 16)),
        )
    ] = 1.0
    for m in members:
        position = m.address - 0x10 * group - 1
        if modules is not None and position not in modules:
            continue
        b = {"bank": bank, "module": position}
        v = m.values()
        for i, cell in enumerate(v.cell_voltages, 1):
            out[key("pylontech_cell_voltage_volts", **b, cell=i)] = cell
        out[key("pylontech_module_voltage_volts", **b)] = v.voltage
        out[key("pylontech_module_current_amperes", **b)] = v.current
        out[key("pylontech_module_power_watts", **b)] = v.voltage * v.current
        for i, t in enumerate(v.temperatures):
            out[key("pylontech_module_temperature_celsius", **b, sensor=sensor_name(i))] = t
        out[key("pylontech_module_remaining_capacity_ampere_hours", **b)] = v.remaining_capacity
        out[key("pylontech_module_full_capacity_ampere_hours", **b)] = v.total_capacity
        out[key("pylontech_module_state_of_charge_ratio", **b)] = (
            v.remaining_capacity / v.total_capacity
        )
        out[key("pylontech_module_cycles_total", **b)] = v.cycle_number
        a = m.alarms()
        for i, state in enumerate(a.cell_states, 1):
            for raw, name in STATES.items():
                out[key("pylontech_cell_voltage_state", **b, cell=i, state=name)] = float(
                    state == raw
                )
        for i, state in enumerate(a.temperature_states):
            for raw, name in STATES.items():
                out[
                    key(
                        "pylontech_module_temperature_state", **b, sensor=sensor_name(i), state=name
                    )
                ] = float(state == raw)
        for measurement, state in (
            ("charge_current", a.charge_current_state),
            ("module_voltage", a.voltage_state),
            ("discharge_current", a.discharge_current_state),
        ):
            for raw, name in STATES.items():
                out[
                    key(
                        "pylontech_module_measurement_state",
                        **b,
                        measurement=measurement,
                        state=name,
                    )
                ] = float(state == raw)
        for name, value in vars(a.protections).items():
            out[key("pylontech_module_protection_active", **b, protection=name)] = float(value)
        for name, value in vars(a.status).items():
            out[key("pylontech_module_status_flag", **b, flag=name)] = float(value)
        for i, error in enumerate(a.cell_voltage_errors, 1):
            out[key("pylontech_cell_voltage_error", **b, cell=i)] = float(error)
        g = m.management()
        out[key("pylontech_module_charge_voltage_limit_volts", **b)] = g.charge_voltage_limit
        out[key("pylontech_module_discharge_voltage_limit_volts", **b)] = g.discharge_voltage_limit
        out[key("pylontech_module_charge_current_limit_amperes", **b)] = g.charge_current_limit
        out[key("pylontech_module_discharge_current_limit_amperes", **b)] = (
            g.discharge_current_limit
        )
        out[key("pylontech_module_charge_enabled", **b)] = float(g.charge_enable)
        out[key("pylontech_module_discharge_enabled", **b)] = float(g.discharge_enable)
        for request, value in (
            ("charge_immediately_1", g.charge_immediately_1),
            ("charge_immediately_2", g.charge_immediately_2),
            ("full_charge", g.full_charge_request),
        ):
            out[key("pylontech_module_charge_request", **b, request=request)] = float(value)
        p = m.model.parameters
        for threshold, value in (
            ("high", p.cell_high_voltage_limit),
            ("low", p.cell_low_voltage_limit),
            ("under", p.cell_under_voltage_limit),
        ):
            out[key("pylontech_module_cell_voltage_threshold_volts", **b, threshold=threshold)] = (
                value
            )
        for threshold, value in (
            ("high", p.module_high_voltage_limit),
            ("low", p.module_low_voltage_limit),
            ("under", p.module_under_voltage_limit),
        ):
            out[key("pylontech_module_voltage_threshold_volts", **b, threshold=threshold)] = value
        for mode, threshold, value in (
            ("charge", "high", p.charge_high_temperature_limit),
            ("charge", "low", p.charge_low_temperature_limit),
            ("discharge", "high", p.discharge_high_temperature_limit),
            ("discharge", "low", p.discharge_low_temperature_limit),
        ):
            out[
                key(
                    "pylontech_module_temperature_threshold_celsius",
                    **b,
                    mode=mode,
                    threshold=threshold,
                )
            ] = value
        out[key("pylontech_module_current_threshold_amperes", **b, mode="charge")] = (
            p.charge_current_limit
        )
        out[key("pylontech_module_current_threshold_amperes", **b, mode="discharge")] = (
            p.discharge_current_limit
        )
        out[
            key(
                "pylontech_module_info",
                **b,
                serial_number=m.serial_number,
                software_version=m.model.mainline_version,
            )
        ] = 1.0
    return out


def assert_readings_equal(actual: dict[Key, float], expected: dict[Key, float]) -> None:
    """Same series, and every value equal (to float precision) to the simulator's."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing, f"{len(missing)} series missing, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexpected series, e.g. {extra[:3]}"
    wrong = {
        k: (actual[k], v) for k, v in expected.items() if abs(actual[k] - v) > 1e-9 * max(1, abs(v))
    }
    assert not wrong, (
        f"{len(wrong)} values differ (actual, expected), e.g. {list(wrong.items())[:3]}"
    )


def frozen_stack(**kwargs: object) -> BatteryStack:
    """A stack with a fixed, non-zero current (so power and flags are not trivial),
    time stopped so the exporter and the test see the same values."""
    stack = BatteryStack(seed=kwargs.pop("seed", 11), **kwargs)  # type: ignore[arg-type]
    stack.set_current(-12.3)
    stack.freeze()
    return stack


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
