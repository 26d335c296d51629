"""Scraped samples: parsing the exposition, selecting series, and every sample the
exporter must serve for a (frozen) simulated stack."""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from pylontech_exporter.models import sensor_name
from pylontech_exporter.simulator import BatteryStack

from . import REPO

Key = tuple[str, tuple[tuple[str, str], ...]]

STATES = {0x00: "normal", 0x01: "low", 0x02: "high", 0xF0: "fault"}


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
    "pylontech_bank_discovering",
    "pylontech_module_read_success",
    "pylontech_module_last_read_timestamp_seconds",
    "pylontech_scrape_duration_seconds",
    "pylontech_serial_requests_total",
    "pylontech_serial_request_failures_total",
    "pylontech_exporter_build_info",
    "pylontech_listen_frames_total",
    "pylontech_listen_decode_failures_total",
    "pylontech_listen_unanswered_requests_total",
    "pylontech_listen_poll_period_seconds",
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


def console_only_families() -> list[str]:
    """The families of docs/metrics.md's table of what only the RS232 console reports."""
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    table = text.split("What only the console reports:", 1)[1]
    families = re.findall(r"^\| `(pylontech_\w+)` \|", table, re.MULTILINE)
    assert len(families) >= 10, "the console-only table of docs/metrics.md was not found"
    return families
