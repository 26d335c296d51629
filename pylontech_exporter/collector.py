"""Prometheus metric families from a snapshot (the contract is docs/metrics.md).

Each small collector class turns one part of a :class:`~pylontech_exporter.snapshot.Snapshot`
into fresh metric families; :class:`PylontechCollector` asks the snapshot cache for a
snapshot on every scrape and chains them. A module whose analog values were not read in
this scrape exports ``pylontech_module_up 0`` and nothing else; a bank that was not read
exports ``pylontech_up 0`` and its counters. No sample carries a timestamp.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import platform
import time
from collections.abc import Iterable, Iterator
from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ._version import __version__
from .errors import FAILURE_REASONS
from .models import AlarmState, BaseState, ModuleAlarms, ModuleStatus, Protections, sensor_name
from .snapshot import BankReading, ModuleReading, Snapshot

#: The snapshot being rendered on this thread (set by the exposition).
serving: contextvars.ContextVar[Snapshot | None] = contextvars.ContextVar("serving", default=None)
#: Used when a scrape comes without X-Prometheus-Scrape-Timeout-Seconds.
DEFAULT_SCRAPE_TIMEOUT = 10.0

STATES = {
    AlarmState.NORMAL: "normal",
    AlarmState.LOW: "low",
    AlarmState.HIGH: "high",
    AlarmState.FAULT: "fault",
}
#: Label values of the Status 1-3 flags: the field names of the typed readings.
PROTECTIONS = tuple(field.name for field in dataclasses.fields(Protections))
STATUS_FLAGS = tuple(field.name for field in dataclasses.fields(ModuleStatus))
CHARGE_REQUESTS = {
    "charge_immediately_1": "charge_immediately_1",
    "charge_immediately_2": "charge_immediately_2",
    "full_charge": "full_charge_request",
}


def _up_modules(snapshot: Snapshot) -> Iterator[tuple[BankReading, ModuleReading]]:
    for bank in snapshot.banks:
        for module in bank.modules:
            if module.up:
                yield bank, module


def _labels(bank: BankReading, module: ModuleReading) -> list[str]:
    return [bank.name, str(module.position)]


class _Part:
    """One group of families. ``families(snapshot)`` always yields every family (empty
    ones too), so ``describe()`` can list them without a snapshot."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    def reading_help(self, text: str) -> str:
        if self.ttl > 0:
            return f"{text} (read at most every {self.ttl:g} s, cached in between)"
        return f"{text} (read at every scrape)"

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:  # pragma: no cover
        raise NotImplementedError


class HealthCollector(_Part):
    """Reachability of banks and modules, bus statistics, build info::

    # TYPE pylontech_up gauge
    pylontech_up{bank="0"} 1.0
    # TYPE pylontech_module_up gauge
    pylontech_module_up{bank="0",module="1"} 1.0
    # TYPE pylontech_scrape_duration_seconds gauge
    pylontech_scrape_duration_seconds{bank="0"} 0.094
    # TYPE pylontech_serial_requests_total counter
    pylontech_serial_requests_total{bank="0"} 42.0
    # TYPE pylontech_serial_request_failures_total counter
    pylontech_serial_request_failures_total{bank="0",reason="timeout"} 0.0
    # TYPE pylontech_bank_discovering gauge
    pylontech_bank_discovering{bank="0"} 0.0
    # TYPE pylontech_module_read_success gauge
    pylontech_module_read_success{bank="0",command="alarms",module="1"} 1.0
    # TYPE pylontech_module_last_read_timestamp_seconds gauge
    pylontech_module_last_read_timestamp_seconds{bank="0",data="management",module="1"} 1.7e9
    # TYPE pylontech_exporter_build_info gauge
    pylontech_exporter_build_info{python_version="3.11.7",version="0.1.0"} 1.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "pylontech_up", "1 when this scrape read the bank, else 0", labels=["bank"]
        )
        module_up = GaugeMetricFamily(
            "pylontech_module_up",
            "1 when this scrape read the module's analog values, else 0",
            labels=["bank", "module"],
        )
        duration = GaugeMetricFamily(
            "pylontech_scrape_duration_seconds",
            "Time the last bus read of the bank took",
            labels=["bank"],
        )
        requests = CounterMetricFamily(
            "pylontech_serial_requests", "Requests sent on the bus", labels=["bank"]
        )
        failures = CounterMetricFamily(
            "pylontech_serial_request_failures",
            f"Failed requests by reason ({', '.join(FAILURE_REASONS)})",
            labels=["bank", "reason"],
        )
        discovering = GaugeMetricFamily(
            "pylontech_bank_discovering",
            "1 while the bank's modules are still being discovered (not the same as down)",
            labels=["bank"],
        )
        success = GaugeMetricFamily(
            "pylontech_module_read_success",
            "1 when the last attempt to read this part of the module succeeded, else 0",
            labels=["bank", "module", "command"],
        )
        read_at = GaugeMetricFamily(
            "pylontech_module_last_read_timestamp_seconds",
            "When the data exported for this part of the module was read (Unix time); "
            "values and alarms are of this scrape, management and static data older",
            labels=["bank", "module", "data"],
        )
        for bank in snapshot.banks:
            up.add_metric([bank.name], 1.0 if bank.up else 0.0)
            discovering.add_metric([bank.name], 1.0 if bank.discovering else 0.0)
            for module in bank.modules:
                labels = _labels(bank, module)
                module_up.add_metric(labels, 1.0 if module.up else 0.0)
                for command, ok in sorted(module.success.items()):
                    success.add_metric([*labels, command], 1.0 if ok else 0.0)
                for data, when in sorted(module.read_at.items()):
                    read_at.add_metric([*labels, data], when)
            duration.add_metric([bank.name], bank.duration)
            requests.add_metric([bank.name], bank.requests)
            for reason in sorted(set(FAILURE_REASONS) | set(bank.failures)):
                failures.add_metric([bank.name, reason], bank.failures.get(reason, 0))
        build = GaugeMetricFamily(
            "pylontech_exporter_build_info",
            "Version of pylontech-exporter and of Python it runs on; always 1",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        return [up, module_up, discovering, success, read_at, duration, requests, failures, build]


class ListenCollector(_Part):
    """What the line of a listen-only bank carries (another master's polling); nothing
    for the banks this exporter polls itself::

    # TYPE pylontech_listen_frames_total counter
    pylontech_listen_frames_total{bank="0",kind="request"} 1200.0
    pylontech_listen_frames_total{bank="0",kind="answer"} 1198.0
    # TYPE pylontech_listen_decode_failures_total counter
    pylontech_listen_decode_failures_total{bank="0",reason="checksum"} 2.0
    # TYPE pylontech_listen_unanswered_requests_total counter
    pylontech_listen_unanswered_requests_total{bank="0"} 2.0
    # TYPE pylontech_listen_poll_period_seconds gauge
    pylontech_listen_poll_period_seconds{bank="0",command="values"} 1.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        frames = CounterMetricFamily(
            "pylontech_listen_frames",
            "Frames heard on the line of a listen-only bank, by kind (request, answer, "
            "error_answer)",
            labels=["bank", "kind"],
        )
        failures = CounterMetricFamily(
            "pylontech_listen_decode_failures",
            "Frames heard that could not be used, by reason (checksum, frame, implausible, "
            "payload, orphan: an answer whose request was not heard, unknown_command)",
            labels=["bank", "reason"],
        )
        unanswered = CounterMetricFamily(
            "pylontech_listen_unanswered_requests",
            "Requests of the bus master that got no answer",
            labels=["bank"],
        )
        period = GaugeMetricFamily(
            "pylontech_listen_poll_period_seconds",
            "Seconds between the bus master's requests of this command to one module "
            "(median of the last 16)",
            labels=["bank", "command"],
        )
        for bank in snapshot.banks:
            heard = bank.listen
            if heard is None:
                continue
            for kind, count in sorted(heard.frames.items()):
                frames.add_metric([bank.name, kind], count)
            for reason, count in sorted(heard.decode_failures.items()):
                failures.add_metric([bank.name, reason], count)
            unanswered.add_metric([bank.name], heard.unanswered)
            for command, seconds in sorted(heard.poll_periods.items()):
                period.add_metric([bank.name, command], seconds)
        return [frames, failures, unanswered, period]


def _finite(family: GaugeMetricFamily, labels: list[str], value: float) -> None:
    """A sample, unless the source did not read the value (NaN: e.g. the capacities of a
    console module before its ``info N`` was read)."""
    if math.isfinite(value):
        family.add_metric(labels, value)


class ReadingsCollector(_Part):
    """Analog values (command 0x42, or the console's ``pwr`` and ``bat N``) of every module
    read in this scrape::

    pylontech_cell_voltage_volts{bank="0",cell="1",module="1"} 3.312
    pylontech_module_voltage_volts{bank="0",module="1"} 49.68
    pylontech_module_current_amperes{bank="0",module="1"} -5.2
    pylontech_module_power_watts{bank="0",module="1"} -258.336
    pylontech_module_temperature_celsius{bank="0",module="1",sensor="bms"} 21.5
    pylontech_module_remaining_capacity_ampere_hours{bank="0",module="1"} 61.2
    pylontech_module_full_capacity_ampere_hours{bank="0",module="1"} 74.0
    pylontech_module_state_of_charge_ratio{bank="0",module="1"} 0.827
    pylontech_module_cycles_total{bank="0",module="1"} 118.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        h = self.reading_help
        bm = ["bank", "module"]
        cell = GaugeMetricFamily(
            "pylontech_cell_voltage_volts", h("Cell voltage"), labels=[*bm, "cell"]
        )
        voltage = GaugeMetricFamily(
            "pylontech_module_voltage_volts", h("Module voltage"), labels=bm
        )
        current = GaugeMetricFamily(
            "pylontech_module_current_amperes",
            h("Module current, positive while charging"),
            labels=bm,
        )
        power = GaugeMetricFamily(
            "pylontech_module_power_watts",
            h("Module voltage times current, positive while charging"),
            labels=bm,
        )
        temperature = GaugeMetricFamily(
            "pylontech_module_temperature_celsius",
            h("Module temperatures: bms board, cells_1..cells_4 groups, mosfet, t7.."),
            labels=[*bm, "sensor"],
        )
        remaining = GaugeMetricFamily(
            "pylontech_module_remaining_capacity_ampere_hours", h("Remaining capacity"), labels=bm
        )
        full = GaugeMetricFamily(
            "pylontech_module_full_capacity_ampere_hours", h("Full capacity"), labels=bm
        )
        soc = GaugeMetricFamily(
            "pylontech_module_state_of_charge_ratio",
            h("Remaining over full capacity, 0..1 (the console: its printed Coulomb %)"),
            labels=bm,
        )
        cycles = CounterMetricFamily(
            "pylontech_module_cycles", h("Charge cycles reported by the BMS"), labels=bm
        )
        for bank, module in _up_modules(snapshot):
            v = module.values
            assert v is not None
            labels = _labels(bank, module)
            where = {"bank": labels[0], "module": labels[1]}
            cell.samples.extend(  # as add_metric would, without its per-sample zip
                Sample(cell.name, {**where, "cell": str(index)}, volts)
                for index, volts in v.cells()
            )
            _finite(voltage, labels, v.voltage)
            _finite(current, labels, v.current)
            _finite(power, labels, v.power)
            for sensor, celsius in v.sensor_temperatures():
                temperature.add_metric([*labels, sensor], celsius)
            _finite(remaining, labels, v.remaining_capacity)
            _finite(full, labels, v.total_capacity)
            _finite(soc, labels, v.state_of_charge)  # NaN without a capacity
            if v.cycles_known:
                cycles.add_metric(labels, v.cycle_number)
        return [cell, voltage, current, power, temperature, remaining, full, soc, cycles]


_STATE_ITEMS = tuple(STATES.items())


def _state_set(family: GaugeMetricFamily, labels: dict[str, str], state: AlarmState) -> None:
    """The four samples of a state set (``labels`` plus ``state``). Built directly rather
    than through ``add_metric``: these are half the samples of a scrape."""
    name, append = family.name, family.samples.append
    for value, text in _STATE_ITEMS:
        append(Sample(name, {**labels, "state": text}, 1.0 if state == value else 0.0))


class AlarmsCollector(_Part):
    """Alarm info (command 0x44): state sets and flags, always 0 or 1. The console's state
    words fill the state sets (cells from ``bat N``; ``sensor`` ``bms`` and ``mosfet``;
    ``measurement`` ``module_voltage``, ``current``, ``cell_voltage``, ``cell_temperature``
    from ``pwr``); it reports no protections, flags or cell voltage errors::

    pylontech_cell_voltage_state{bank="0",cell="1",module="1",state="normal"} 1.0
    pylontech_cell_voltage_state{bank="0",cell="1",module="1",state="low"} 0.0
    pylontech_module_temperature_state{bank="0",module="1",sensor="bms",state="high"} 0.0
    pylontech_module_measurement_state{bank="0",measurement="charge_current",module="1",
                                       state="normal"} 1.0
    pylontech_module_protection_active{bank="0",module="1",protection="cell_under_voltage"} 0.0
    pylontech_module_status_flag{bank="0",flag="charge_mosfet_on",module="1"} 1.0
    pylontech_cell_voltage_error{bank="0",cell="1",module="1"} 0.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        h = self.reading_help
        bm = ["bank", "module"]
        cell_state = GaugeMetricFamily(
            "pylontech_cell_voltage_state",
            h("Cell voltage state set: 1 for the current state (normal, low, high, fault)"),
            labels=[*bm, "cell", "state"],
        )
        temperature_state = GaugeMetricFamily(
            "pylontech_module_temperature_state",
            h("Temperature state set: 1 for the current state (normal, low, high, fault)"),
            labels=[*bm, "sensor", "state"],
        )
        measurement_state = GaugeMetricFamily(
            "pylontech_module_measurement_state",
            h(
                "Charge current, module voltage and discharge current state set (the "
                "console: module_voltage, current, cell_voltage, cell_temperature)"
            ),
            labels=[*bm, "measurement", "state"],
        )
        protection = GaugeMetricFamily(
            "pylontech_module_protection_active",
            h("1 when the BMS protection is active (Status1)"),
            labels=[*bm, "protection"],
        )
        flag = GaugeMetricFamily(
            "pylontech_module_status_flag",
            h("MOSFET and operating state flags (Status2/3)"),
            labels=[*bm, "flag"],
        )
        cell_error = GaugeMetricFamily(
            "pylontech_cell_voltage_error",
            h("1 when the BMS flags the cell voltage as an error, > 4.2 V or < 1 V (Status4/5)"),
            labels=[*bm, "cell"],
        )
        for bank, module in _up_modules(snapshot):
            alarms: ModuleAlarms | None = module.alarms
            detail = module.detail
            if alarms is None and detail is None:
                continue
            labels = _labels(bank, module)
            where = {"bank": labels[0], "module": labels[1]}
            if detail is not None:
                for console_cell in detail.cells:
                    if console_cell.voltage_state is not None:
                        cell_labels = {**where, "cell": str(console_cell.cell)}
                        _state_set(cell_state, cell_labels, console_cell.voltage_state)
                for sensor, state in detail.temperature_states.items():
                    _state_set(temperature_state, {**where, "sensor": sensor}, state)
                for name, state in detail.measurement_states.items():
                    _state_set(measurement_state, {**where, "measurement": name}, state)
            if alarms is None:
                continue
            for index, state in enumerate(alarms.cell_states, start=1):
                _state_set(cell_state, {**where, "cell": str(index)}, state)
            for index, state in enumerate(alarms.temperature_states):
                _state_set(temperature_state, {**where, "sensor": sensor_name(index)}, state)
            for name, state in (
                ("charge_current", alarms.charge_current_state),
                ("module_voltage", alarms.voltage_state),
                ("discharge_current", alarms.discharge_current_state),
            ):
                _state_set(measurement_state, {**where, "measurement": name}, state)
            for name in PROTECTIONS:
                protection.add_metric([*labels, name], float(getattr(alarms.protections, name)))
            for name in STATUS_FLAGS:
                flag.add_metric([*labels, name], float(getattr(alarms.status, name)))
            cell_error.samples.extend(
                Sample(cell_error.name, {**where, "cell": str(index)}, float(error))
                for index, error in enumerate(alarms.cell_voltage_errors, start=1)
            )
        return [cell_state, temperature_state, measurement_state, protection, flag, cell_error]


class ManagementCollector(_Part):
    """Charge/discharge management info (command 0x92)::

    pylontech_module_charge_voltage_limit_volts{bank="0",module="1"} 53.2
    pylontech_module_discharge_voltage_limit_volts{bank="0",module="1"} 44.5
    pylontech_module_charge_current_limit_amperes{bank="0",module="1"} 37.0
    pylontech_module_discharge_current_limit_amperes{bank="0",module="1"} -37.0
    pylontech_module_charge_enabled{bank="0",module="1"} 1.0
    pylontech_module_discharge_enabled{bank="0",module="1"} 1.0
    pylontech_module_charge_request{bank="0",module="1",request="full_charge"} 0.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        def h(text: str) -> str:
            return (
                f"{text} (exported while recent; its read time in "
                "pylontech_module_last_read_timestamp_seconds)"
            )

        bm = ["bank", "module"]
        charge_v = GaugeMetricFamily(
            "pylontech_module_charge_voltage_limit_volts",
            h("Charge voltage the BMS asks for"),
            labels=bm,
        )
        discharge_v = GaugeMetricFamily(
            "pylontech_module_discharge_voltage_limit_volts",
            h("Lowest discharge voltage the BMS allows"),
            labels=bm,
        )
        charge_a = GaugeMetricFamily(
            "pylontech_module_charge_current_limit_amperes",
            h("Largest charge current the BMS allows"),
            labels=bm,
        )
        discharge_a = GaugeMetricFamily(
            "pylontech_module_discharge_current_limit_amperes",
            h("Largest discharge current the BMS allows, signed as reported"),
            labels=bm,
        )
        charge_on = GaugeMetricFamily(
            "pylontech_module_charge_enabled", h("1 when charging is allowed"), labels=bm
        )
        discharge_on = GaugeMetricFamily(
            "pylontech_module_discharge_enabled", h("1 when discharging is allowed"), labels=bm
        )
        request = GaugeMetricFamily(
            "pylontech_module_charge_request",
            h("1 when the BMS requests charging (charge_immediately_1/2, full_charge)"),
            labels=[*bm, "request"],
        )
        for bank, module in _up_modules(snapshot):
            info = module.management
            if info is None:
                continue
            labels = _labels(bank, module)
            charge_v.add_metric(labels, info.charge_voltage_limit)
            discharge_v.add_metric(labels, info.discharge_voltage_limit)
            charge_a.add_metric(labels, info.charge_current_limit)
            discharge_a.add_metric(labels, info.discharge_current_limit)
            charge_on.add_metric(labels, float(info.charge_enable))
            discharge_on.add_metric(labels, float(info.discharge_enable))
            for name, attribute in CHARGE_REQUESTS.items():
                request.add_metric([*labels, name], float(getattr(info, attribute)))
        return [charge_v, discharge_v, charge_a, discharge_a, charge_on, discharge_on, request]


class ThresholdsCollector(_Part):
    """Protection thresholds (command 0x47, read at discovery and hourly)::

    pylontech_module_cell_voltage_threshold_volts{bank="0",module="1",threshold="high"} 3.7
    pylontech_module_voltage_threshold_volts{bank="0",module="1",threshold="under"} 43.5
    pylontech_module_temperature_threshold_celsius{bank="0",mode="charge",module="1",
                                                   threshold="low"} 0.0
    pylontech_module_current_threshold_amperes{bank="0",mode="discharge",module="1"} -37.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        bm = ["bank", "module"]
        hourly = " (read at discovery and hourly)"
        cell = GaugeMetricFamily(
            "pylontech_module_cell_voltage_threshold_volts",
            "Cell voltage thresholds: high and low alarm, under protection" + hourly,
            labels=[*bm, "threshold"],
        )
        module_v = GaugeMetricFamily(
            "pylontech_module_voltage_threshold_volts",
            "Module voltage thresholds: high and low alarm, under protection" + hourly,
            labels=[*bm, "threshold"],
        )
        temperature = GaugeMetricFamily(
            "pylontech_module_temperature_threshold_celsius",
            "Temperature thresholds for charging and discharging" + hourly,
            labels=[*bm, "mode", "threshold"],
        )
        current = GaugeMetricFamily(
            "pylontech_module_current_threshold_amperes",
            "Current limits for charging and discharging" + hourly,
            labels=[*bm, "mode"],
        )
        for bank, module in _up_modules(snapshot):
            p = module.parameters
            if p is None:
                continue
            labels = _labels(bank, module)
            cell.add_metric([*labels, "high"], p.cell_high_voltage_limit)
            cell.add_metric([*labels, "low"], p.cell_low_voltage_limit)
            cell.add_metric([*labels, "under"], p.cell_under_voltage_limit)
            module_v.add_metric([*labels, "high"], p.module_high_voltage_limit)
            module_v.add_metric([*labels, "low"], p.module_low_voltage_limit)
            module_v.add_metric([*labels, "under"], p.module_under_voltage_limit)
            temperature.add_metric([*labels, "charge", "high"], p.charge_high_temperature_limit)
            temperature.add_metric([*labels, "charge", "low"], p.charge_low_temperature_limit)
            temperature.add_metric(
                [*labels, "discharge", "high"], p.discharge_high_temperature_limit
            )
            temperature.add_metric([*labels, "discharge", "low"], p.discharge_low_temperature_limit)
            current.add_metric([*labels, "charge"], p.charge_current_limit)
            current.add_metric([*labels, "discharge"], p.discharge_current_limit)
        return [cell, module_v, temperature, current]


class InfoCollector(_Part):
    """Identity of modules and banks (0x93, 0x96, 0x51, 0x4F; read at discovery and hourly)::

    pylontech_module_info{bank="0",module="1",serial_number="PPTCH01234567890",
                          software_version="2.7.4"} 1.0
    pylontech_bank_info{bank="0",device_name="US3000C",manufacturer="PYLON",
                        protocol_version="2.0",software_version="1.4"} 1.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        module_info = GaugeMetricFamily(
            "pylontech_module_info",
            "Serial number and software version of the module; always 1",
            labels=["bank", "module", "serial_number", "software_version"],
        )
        bank_info = GaugeMetricFamily(
            "pylontech_bank_info",
            "Device name, manufacturer, software and protocol version of the bank; always 1",
            labels=["bank", "device_name", "manufacturer", "software_version", "protocol_version"],
        )
        for bank, module in _up_modules(snapshot):
            if module.serial_number is not None:
                module_info.add_metric(
                    [*_labels(bank, module), module.serial_number, module.software_version or ""],
                    1.0,
                )
        for bank in snapshot.banks:
            maker = bank.manufacturer
            if maker is not None:  # the poller leaves it out for a bank that is down
                bank_info.add_metric(
                    [
                        bank.name,
                        maker.device_name,
                        maker.manufacturer_name,
                        maker.software_version,
                        str(bank.protocol_version) if bank.protocol_version else "",
                    ],
                    1.0,
                )
        return [module_info, bank_info]


#: The commands whose unparsed rows and fields the console counts, exported at 0 from
#: the start.
CONSOLE_COMMANDS = ("pwr", "bat", "info", "stat", "soh")
_BASE_STATES = tuple(BaseState)


class ConsoleCollector(_Part):
    """What only the RS232 console reports; nothing for RS485 banks. Per cell and per
    module from ``pwr`` and ``bat N`` of this scrape, lifetime counters and health from
    ``stat N`` and ``soh N`` (read at discovery and hourly), the identity of ``info N``::

    pylontech_cell_temperature_celsius{bank="0",cell="1",module="1"} 27.5
    pylontech_cell_temperature_state{bank="0",cell="1",module="1",state="normal"} 1.0
    pylontech_cell_balancing_active{bank="0",cell="1",module="1"} 0.0
    pylontech_cell_state_of_charge_ratio{bank="0",cell="1",module="1"} 0.45
    pylontech_cell_remaining_capacity_ampere_hours{bank="0",cell="1",module="1"} 44.231
    pylontech_module_base_state{bank="0",module="1",state="charge"} 1.0
    pylontech_module_cell_voltage_min_volts{bank="0",module="1"} 3.327
    pylontech_module_cell_voltage_max_volts{bank="0",module="1"} 3.329
    pylontech_module_cell_temperature_min_celsius{bank="0",module="1"} 26.6
    pylontech_module_cell_temperature_max_celsius{bank="0",module="1"} 26.8
    pylontech_module_state_of_health_ratio{bank="0",module="1"} 0.97
    pylontech_module_discharged_ampere_hours_total{bank="0",module="1"} 10800.803
    pylontech_module_lifetime_events_total{bank="0",event="bat_hv_times",module="1"} 37.0
    pylontech_cell_sohcount{bank="0",cell="1",module="1"} 1.0
    pylontech_cell_state_of_health_info{bank="0",cell="1",module="1",status="normal"} 1.0
    pylontech_module_identity_info{bank="0",board_version="V10R04",boot_version="V1.0",
        comm_version="V2.0",device_name="US5000",manufacturer="Pylon",module="1",
        release_date="22-08-10",soft_version="V1.3",specification="48V/100AH"} 1.0
    pylontech_console_unparsed_total{bank="0",command="bat"} 0.0
    """

    def families(self, snapshot: Snapshot) -> Iterable[Metric]:
        h = self.reading_help
        bm = ["bank", "module"]
        bmc = [*bm, "cell"]

        def hourly(text: str) -> str:
            return (
                f"{text} (read at discovery and hourly; read time in "
                "pylontech_module_last_read_timestamp_seconds)"
            )

        cell_temperature = GaugeMetricFamily(
            "pylontech_cell_temperature_celsius", h("Cell temperature (bat N)"), labels=bmc
        )
        cell_temperature_state = GaugeMetricFamily(
            "pylontech_cell_temperature_state",
            h("Cell temperature state set: 1 for the current state (normal, low, high, fault)"),
            labels=[*bmc, "state"],
        )
        balancing = GaugeMetricFamily(
            "pylontech_cell_balancing_active", h("1 while the BMS balances the cell"), labels=bmc
        )
        cell_soc = GaugeMetricFamily(
            "pylontech_cell_state_of_charge_ratio",
            h("State of charge of the cell's own coulomb counter, 0..1"),
            labels=bmc,
        )
        cell_charge = GaugeMetricFamily(
            "pylontech_cell_remaining_capacity_ampere_hours",
            h("Remaining capacity of the cell's own coulomb counter"),
            labels=bmc,
        )
        base = GaugeMetricFamily(
            "pylontech_module_base_state",
            h("What the module does, a state set: charge, discharge, idle, balance, other"),
            labels=[*bm, "state"],
        )
        extremes = {
            name: GaugeMetricFamily(f"pylontech_module_{name}", h(text), labels=bm)
            for name, text in (
                ("cell_voltage_min_volts", "Lowest cell voltage (pwr Vlow)"),
                ("cell_voltage_max_volts", "Highest cell voltage (pwr Vhigh)"),
                ("cell_temperature_min_celsius", "Coldest cell temperature (pwr Tlow)"),
                ("cell_temperature_max_celsius", "Warmest cell temperature (pwr Thigh)"),
            )
        }
        health = GaugeMetricFamily(
            "pylontech_module_state_of_health_ratio",
            hourly("State of health the BMS reports (stat SOH / 100)"),
            labels=bm,
        )
        discharged = CounterMetricFamily(
            "pylontech_module_discharged_ampere_hours",
            hourly("Charge discharged over the module's life (stat Dsg Cap)"),
            labels=bm,
        )
        events = CounterMetricFamily(
            "pylontech_module_lifetime_events",
            hourly("Lifetime counters of stat N, by its key (coc_times, bat_ov_times, ...)"),
            labels=[*bm, "event"],
        )
        soh_count = GaugeMetricFamily(
            "pylontech_cell_sohcount",
            hourly("SOHCount of the cell as soh N prints it (its meaning is undocumented)"),
            labels=bmc,
        )
        soh_status = GaugeMetricFamily(
            "pylontech_cell_state_of_health_info",
            hourly("SOHStatus of the cell as printed, lowercased (soh N); always 1"),
            labels=[*bmc, "status"],
        )
        identity = GaugeMetricFamily(
            "pylontech_module_identity_info",
            hourly("Identity of the module as info N prints it; always 1"),
            labels=[
                *bm,
                "device_name",
                "manufacturer",
                "soft_version",
                "boot_version",
                "comm_version",
                "board_version",
                "release_date",
                "specification",
            ],
        )
        unparsed = CounterMetricFamily(
            "pylontech_console_unparsed",
            "Rows and fields of console answers that did not parse and were skipped",
            labels=["bank", "command"],
        )
        for bank in snapshot.banks:
            if bank.unparsed is not None:
                for command in sorted(set(CONSOLE_COMMANDS) | set(bank.unparsed)):
                    unparsed.add_metric([bank.name, command], bank.unparsed.get(command, 0))
        for bank, module in _up_modules(snapshot):
            labels = _labels(bank, module)
            where = {"bank": labels[0], "module": labels[1]}
            detail = module.detail
            if detail is not None:
                for cell in detail.cells:
                    at = [*labels, str(cell.cell)]
                    if cell.temperature is not None:
                        cell_temperature.add_metric(at, cell.temperature)
                    if cell.temperature_state is not None:
                        state_labels = {**where, "cell": at[2]}
                        _state_set(cell_temperature_state, state_labels, cell.temperature_state)
                    if cell.balancing is not None:
                        balancing.add_metric(at, float(cell.balancing))
                    if cell.state_of_charge is not None:
                        cell_soc.add_metric(at, cell.state_of_charge)
                    if cell.remaining_capacity is not None:
                        cell_charge.add_metric(at, cell.remaining_capacity)
                if detail.base_state is not None:
                    for state in _BASE_STATES:
                        base.add_metric(
                            [*labels, state.value], 1.0 if detail.base_state is state else 0.0
                        )
                for name, value in (
                    ("cell_voltage_min_volts", detail.cell_voltage_min),
                    ("cell_voltage_max_volts", detail.cell_voltage_max),
                    ("cell_temperature_min_celsius", detail.cell_temperature_min),
                    ("cell_temperature_max_celsius", detail.cell_temperature_max),
                ):
                    if value is not None:
                        extremes[name].add_metric(labels, value)
            stats = module.statistics
            if stats is not None:
                if stats.state_of_health is not None:
                    health.add_metric(labels, stats.state_of_health)
                if stats.discharged is not None:
                    discharged.add_metric(labels, stats.discharged)
                for event, count in sorted(stats.events.items()):
                    events.add_metric([*labels, event], count)
            for row in module.cell_health or ():
                at = [*labels, str(row.cell)]
                if row.count is not None:
                    soh_count.add_metric(at, row.count)
                soh_status.add_metric([*at, row.status.lower()], 1.0)
            known = module.identity
            if known is not None:
                identity.add_metric(
                    [
                        *labels,
                        known.device_name,
                        known.manufacturer,
                        known.software_version,
                        known.boot_version,
                        known.comm_version,
                        known.board_version,
                        known.release_date,
                        known.specification,
                    ],
                    1.0,
                )
        return [
            cell_temperature,
            cell_temperature_state,
            balancing,
            cell_soc,
            cell_charge,
            base,
            *extremes.values(),
            health,
            discharged,
            events,
            soh_count,
            soh_status,
            identity,
            unparsed,
        ]


class PylontechCollector(Collector):
    """Every family of docs/metrics.md, from the snapshot being served.

    The exposition sets :data:`serving` to the snapshot it renders; without it (a plain
    ``generate_latest`` of the registry) ``get_snapshot(deadline)`` is asked, with the
    deadline :data:`DEFAULT_SCRAPE_TIMEOUT` from now.
    """

    def __init__(self, get_snapshot: Callable[[float], Snapshot], ttl: float) -> None:
        self._get_snapshot = get_snapshot
        self.parts: list[_Part] = [
            HealthCollector(ttl),
            ListenCollector(ttl),
            ReadingsCollector(ttl),
            AlarmsCollector(ttl),
            ManagementCollector(ttl),
            ThresholdsCollector(ttl),
            InfoCollector(ttl),
            ConsoleCollector(ttl),
        ]

    def describe(self) -> Iterable[Metric]:
        """The families without samples: registering never touches the bus."""
        empty = Snapshot(banks=[])
        for part in self.parts:
            yield from part.families(empty)

    def collect(self) -> Iterable[Metric]:
        snapshot = serving.get()
        if snapshot is None:
            snapshot = self._get_snapshot(time.monotonic() + DEFAULT_SCRAPE_TIMEOUT)
        for part in self.parts:
            yield from part.families(snapshot)
