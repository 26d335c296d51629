"""End to end, for each data source: simulator -> exporter process -> real Prometheus ->
dashboard queries and alerts.

Three exporters, one per source, each with two banks: ``garage`` (group 0) and ``shed``
(group 1), two US3000C modules each, frozen at a sane state (state of charge 0.6,
balanced cells, small currents), each bank behind its own in-process TCP simulator:

- ``rs485``: the exporter is the bus master (an RS485-to-Ethernet gateway);
- ``rs485-listen``: a virtual inverter polls the stack (profile ``full``) and the
  exporter only listens, through a broadcast gateway;
- ``console``: the exporter reads each bank's RS232 console (``pylon>`` shell).

One real Prometheus scrapes all three every second (the target label ``source`` names
the source) and loads the repository's recording and alert rules, with every alert's
``for:`` cut to 1 s (expressions unchanged). Every test runs once per source, on that
exporter's series (its ``instance``), so "the same rule and dashboard tests pass against
a listen-only and a console-fed exporter":

- the dashboard only uses ``pylontech_*`` metrics the exporter really exports and
  recording rules the rule files define; what a source lacks is declared with the reason
  (SOURCE_LACKS) and must really be missing;
- its template variables resolve to the real jobs, instances, banks and modules;
- every PromQL expression of the dashboard returns data, once with every variable on
  *All* and once with one concrete bank and module selected (expressions that are empty
  on a healthy stack by design are in HEALTHY_EMPTY; those over families the source
  lacks only have to run);
- every rule evaluates without error and every recording rule has data;
- a healthy stack raises no alert, pending or firing;
- a drifting cell fires both cell-imbalance alerts for that bank and module only;
- a bank that stops answering fires PylontechBankDown for that bank while the other
  bank still reports ``pylontech_up 1``, and its readings vanish (no stale values).

The tests share one set of processes and run in file order (each for every source): the
last two change the simulated stacks. Needs the ``prometheus`` and ``promtool`` binaries
(Debian package ``prometheus``); skips without them unless PYLONTECH_REQUIRE_PROMETHEUS=1.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.dashboard import (
    all_values,
    dashboard_targets,
    grafana_builtins,
    grafana_regex_value,
    load_dashboard,
    parse_label_values,
    query_variables,
    substitute,
    variable_query,
)
from support.metrics import console_only_families
from support.net import http_get
from support.processes import Exporter
from support.prometheus import (
    Prometheus,
    alert_key,
    dashboard_problems,
    format_alerts,
    start_prometheus,
)
from support.rules import (
    ALERT_RULES,
    RECORDING_RULES,
    assert_promtool_ok,
    load_groups,
    metric_names_in_promql,
    recording_rule_names,
    require_binary,
    run_promtool,
    shortened_rules,
)
from support.stacks import healthy_stack
from support.waiting import wait_until

from pylontech_exporter.models import module_address
from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.inverter import PROFILES, Inverter
from pylontech_exporter.simulator.serve import TcpSimulator

pytestmark = pytest.mark.prometheus

JOB = "pylontech"
SCRAPE_INTERVAL = 1  # seconds; also the rule evaluation interval
ALERT_FOR = "1s"  # every alert's `for:` in the test copy of the rules
SERIAL_TIMEOUT = 0.25  # per response; a silent bank costs this per request
#: Listen-only: the virtual inverter's poll cycle, and how long a reading is exported.
POLL_PERIOD = 0.5
LISTEN_MAX_AGE = 2
#: Banks: name -> group. Each bank has its own simulator (port), so a silent bank does
#: not eat the other's share of the scrape deadline.
BANKS = {"garage": 0, "shed": 1}
MODULES_PER_BANK = 2
#: Frozen currents (+ charging): one bank charging and one discharging, so both the
#: "energy in" and "energy out" panels have something to show.
CURRENTS = {"garage": -3.0, "shed": 2.0}
SOURCES = ("rs485", "rs485-listen", "console")

_CONSOLE_ONLY = "only the RS232 console reports it (docs/metrics.md, console section)"
_NOT_ON_CONSOLE = (
    "the console has no protection or MOSFET flags, cell voltage errors, charge/discharge "
    "management (0x92) or thresholds (0x47) (docs/metrics.md, console section)"
)
#: What each source does not export, family (or recording rule) -> why. Checked: each
#: family is really missing, and a dashboard variable over one lists no bank (the
#: console's and the RS485-only rows repeat over such variables).
SOURCE_LACKS: dict[str, dict[str, str]] = {
    "rs485": dict.fromkeys(console_only_families(), _CONSOLE_ONLY),
    "rs485-listen": dict.fromkeys(console_only_families(), _CONSOLE_ONLY)
    | {
        "bank:pylontech_serial_request_failures:ratio_rate5m": (
            "nothing is sent in listen-only mode: the failure ratio is 0/0, NaN (the series "
            "exists, its panel shows no value)"
        )
    },
    "console": dict.fromkeys(
        (
            "pylontech_module_protection_active",
            "pylontech_module_status_flag",
            "pylontech_cell_voltage_error",
            "pylontech_module_charge_voltage_limit_volts",
            "pylontech_module_discharge_voltage_limit_volts",
            "pylontech_module_charge_current_limit_amperes",
            "pylontech_module_discharge_current_limit_amperes",
            "pylontech_module_charge_enabled",
            "pylontech_module_discharge_enabled",
            "pylontech_module_charge_request",
            "pylontech_module_cell_voltage_threshold_volts",
            "pylontech_module_voltage_threshold_volts",
            "pylontech_module_temperature_threshold_celsius",
            "pylontech_module_current_threshold_amperes",
        ),
        _NOT_ON_CONSOLE,
    ),
}

GRAFANA_BUILTINS = grafana_builtins(SCRAPE_INTERVAL)


# --------------------------------------------------------------------------------------
# the environment: simulators, exporters, Prometheus
# --------------------------------------------------------------------------------------


@dataclass
class Source:
    """One exporter and the stacks it reads."""

    name: str
    stacks: dict[str, BatteryStack]
    exporter: Exporter
    exported: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return self.exporter.address

    @property
    def lacks(self) -> dict[str, str]:
        return SOURCE_LACKS[self.name]

    def selector(self, metric: str, **labels: str) -> str:
        """``metric`` of this source's exporter, with ``labels``."""
        matchers = {"instance": self.address, **labels}
        return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in matchers.items()) + "}"

    def owns(self, alert: dict) -> bool:
        """An alert about this exporter (or about none: absent() knows no instance)."""
        return alert["labels"].get("instance", self.address) == self.address


@dataclass
class Environment:
    sources: dict[str, Source]
    prometheus: Prometheus
    dashboard: dict
    #: From this time (epoch seconds) on, the healthy stacks have been scraped and their
    #: rules evaluated: no alert may be pending or firing after it while they stay healthy.
    settled_at: float = 0.0

    def alive(self) -> str | None:
        """What has died, if anything."""
        for process in (*(s.exporter for s in self.sources.values()), self.prometheus.process):
            if not process.running():
                return process.describe()
        return None

    def describe(self) -> str:
        return "\n".join(
            [
                *(s.exporter.describe() for s in self.sources.values()),
                self.prometheus.process.describe(),
            ]
        )


def _simulator(source: str, stack: BatteryStack) -> TcpSimulator:
    if source == "console":
        return TcpSimulator(ConsoleResponder(stack), latency=0)
    inverter = None
    if source == "rs485-listen":
        inverter = Inverter(stack, PROFILES["full"], period=POLL_PERIOD)
    return TcpSimulator(Rs485Responder(stack), latency=0, inverter=inverter)


def _bank(source: str, name: str, url: str) -> dict:
    bank: dict = {"name": name, "port": url, "timeout": SERIAL_TIMEOUT}
    if source == "console":
        bank["protocol"] = "console"  # a console shows its own stack: no group to set
    else:
        bank["group"] = BANKS[name]
    if source == "rs485-listen":
        bank |= {"listen_only": True, "listen_max_age": LISTEN_MAX_AGE}
    return bank


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    promtool = require_binary("promtool")
    tmp = tmp_path_factory.mktemp("e2e_prometheus")
    with contextlib.ExitStack() as cleanup:
        sources = {}
        for source in SOURCES:
            stacks, simulators = {}, {}
            for seed, (name, group) in enumerate(BANKS.items(), start=11):
                stacks[name] = healthy_stack(group, CURRENTS[name], seed, MODULES_PER_BANK)
                simulators[name] = cleanup.enter_context(_simulator(source, stacks[name]))
            config = tmp / f"exporter-{source}.yml"
            config.write_text(
                yaml.safe_dump(
                    {"banks": [_bank(source, name, simulators[name].url) for name in BANKS]}
                ),
                encoding="utf-8",
            )
            exporter = cleanup.enter_context(
                Exporter(
                    "--config.file",
                    str(config),
                    "--cache.ttl",
                    "0",
                    "--scrape.timeout-offset",
                    "0.2",
                )
            )
            sources[source] = Source(source, stacks, exporter)
        rules = [
            shortened_rules(RECORDING_RULES, tmp / RECORDING_RULES.name, ALERT_FOR),
            shortened_rules(ALERT_RULES, tmp / ALERT_RULES.name, ALERT_FOR),
        ]
        prometheus_yml = tmp / "prometheus.yml"
        prometheus_yml.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_INTERVAL}s",
                        "scrape_timeout": f"{SCRAPE_INTERVAL}s",
                        "evaluation_interval": f"{SCRAPE_INTERVAL}s",
                    },
                    "rule_files": [str(r) for r in rules],
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "static_configs": [
                                {"targets": [s.address], "labels": {"source": s.name}}
                                for s in sources.values()
                            ],
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        assert_promtool_ok(run_promtool(promtool, "check", "config", prometheus_yml))
        prometheus = start_prometheus(prometheus_yml, tmp)
        cleanup.callback(prometheus.process.stop)

        environment = Environment(
            sources=sources, prometheus=prometheus, dashboard=load_dashboard()
        )

        def targets_up() -> bool:
            targets = prometheus.targets()
            return len(targets) == len(SOURCES) and all(t["health"] == "up" for t in targets)

        wait_until(
            targets_up,
            "the first successful scrape of every exporter",
            20,
            alive=environment.alive,
            details=lambda: json.dumps(prometheus.targets(), indent=1),
        )
        # Rates need two scrapes and the ratio rule an evaluation after them: once the
        # bus failure ratio exists for every bank of every source, everything has data.
        wait_until(
            lambda: (
                len(prometheus.query("bank:pylontech_serial_request_failures:ratio_rate5m"))
                == len(BANKS) * len(SOURCES)
            ),
            "the recording rules to have data for every bank",
            20,
            alive=environment.alive,
        )
        # One more evaluation cycle: whatever was pending before the first scrape
        # (PylontechExporterAbsent) has resolved by then.
        time.sleep(SCRAPE_INTERVAL + 0.2)
        environment.settled_at = time.time()
        for source in sources.values():
            text = http_get(f"http://{source.address}/metrics").decode()
            source.exported = {
                sample.name
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
        yield environment


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest, env: Environment) -> Source:
    return env.sources[request.param]


# --------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------


def test_dashboard_uses_only_exported_metrics_and_defined_rules(env: Environment, source: Source):
    records = recording_rule_names()
    assert records, "no recording rules found"
    # What the source is declared to lack is really missing (the list cannot go stale).
    exported_anyway = sorted(set(source.lacks) & source.exported)
    assert not exported_anyway, f"SOURCE_LACKS[{source.name!r}] names exported families"
    unknown = []
    for target in dashboard_targets(env.dashboard):
        for name in sorted(metric_names_in_promql(target.expr) - {"up", "ALERTS"}):
            if ":" in name:
                if name not in records:
                    unknown.append(f"{target.where}: recording rule {name} is not defined")
            elif name not in source.exported and name not in source.lacks:
                unknown.append(f"{target.where}: {name} is not exported")
    for variable in query_variables(env.dashboard):
        parsed = parse_label_values(variable_query(variable))
        assert parsed, f"variable {variable['name']} is not label_values(selector, label)"
        for name in metric_names_in_promql(parsed[0]):
            if name not in source.exported and name not in records | set(source.lacks):
                unknown.append(f"variable {variable['name']}: {name} is not exported")
    assert not unknown, "\n".join(unknown)


def resolve_variables(env: Environment, pick: Callable[[str, list[str]], list[str]]) -> dict:
    """Resolve the query variables in order as Grafana does: each query sees the values
    chosen for the variables before it. ``pick(name, options)`` chooses the selection.
    Returns {name: (options, regex value)}."""
    values = all_values(env.dashboard)
    resolved = {}
    for variable in query_variables(env.dashboard):
        name = variable["name"]
        parsed = parse_label_values(variable_query(variable))
        assert parsed, f"variable {name} is not label_values(selector, label)"
        selector, label = parsed
        options = sorted(
            env.prometheus.api(
                f"label/{label}/values",
                **{
                    "match[]": substitute(selector, values, GRAFANA_BUILTINS),
                    "start": env.settled_at - 10,
                    "end": time.time(),
                },
            )
        )
        chosen = pick(name, options)
        values[name] = grafana_regex_value(chosen) if chosen else variable["allValue"]
        resolved[name] = (options, values[name])
    return resolved


def _picker(source: Source, wanted: dict[str, str]) -> Callable[[str, list[str]], list[str]]:
    """Selects this source's exporter as ``instance``, ``wanted`` values, else All."""
    wanted = {"instance": source.address, **wanted}

    def pick(name: str, options: list[str]) -> list[str]:
        if name not in wanted:
            return []
        assert wanted[name] in options, f"variable {name}: {wanted[name]!r} not among {options}"
        return [wanted[name]]

    return pick


def test_template_variables_resolve(env: Environment, source: Source):
    resolved = resolve_variables(env, _picker(source, {}))
    options = {name: opts for name, (opts, _) in resolved.items()}
    modules = [str(p) for p in range(1, MODULES_PER_BANK + 1)]
    assert {n: options[n] for n in ("job", "instance", "bank", "module")} == {
        "job": [JOB],
        "instance": sorted(s.address for s in env.sources.values()),
        "bank": sorted(BANKS),
        "module": modules,
    }
    # Any other variable lists the banks (or modules) of the data it is about: none where
    # the source lacks that data.
    for variable in query_variables(env.dashboard):
        name = variable["name"]
        if name in ("job", "instance", "bank", "module"):
            continue
        selector = parse_label_values(variable_query(variable))[0]
        lacking = metric_names_in_promql(selector) & set(source.lacks)
        assert bool(options[name]) != bool(lacking), (
            f"variable {name}: options {options[name]} although the source "
            + ("lacks " + ", ".join(sorted(lacking)) if lacking else "has the data")
        )
    # Narrowed: bank `shed` selected, the module list follows it.
    chained = resolve_variables(env, _picker(source, {"bank": "shed"}))
    assert chained["bank"][1] == "shed"
    assert chained["module"][0] == modules


@pytest.mark.parametrize("selection", ["all", "one bank and module"])
def test_every_dashboard_expression_returns_data(env: Environment, source: Source, selection: str):
    wanted = {} if selection == "all" else {"bank": "shed", "module": "2"}
    values = {**all_values(env.dashboard)}
    values.update({n: v for n, (_, v) in resolve_variables(env, _picker(source, wanted)).items()})
    problems = dashboard_problems(
        env.prometheus, env.dashboard, values, SCRAPE_INTERVAL, absent=source.lacks
    )
    assert not problems, "\n".join(problems)


def test_every_rule_evaluates_and_every_recording_rule_has_data(env: Environment, source: Source):
    groups = env.prometheus.api("rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    expected = recording_rule_names() | {
        rule["alert"]
        for group in load_groups([ALERT_RULES])
        for rule in group["rules"]
        if "alert" in rule
    }
    assert loaded == expected
    problems = [
        f"{rule['name']}: health {rule['health']}: {rule.get('lastError')}"
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    for name in sorted(recording_rule_names()):
        result = env.prometheus.query(source.selector(name))
        banks = {series["metric"].get("bank") for series in result}
        if banks != set(BANKS):
            problems.append(f"{name}: series for banks {sorted(banks)}, expected {sorted(BANKS)}")
        elif not all(
            s["metric"].get("job") == JOB and s["metric"].get("source") == source.name
            for s in result
        ):
            problems.append(f"{name}: lost the job or source label")
    assert not problems, "\n".join(problems)
    # The alert rules really use the shortened `for:` (else the tests below would wait).
    durations = {
        rule["duration"] for g in groups for rule in g["rules"] if rule["type"] == "alerting"
    }
    assert durations == {1}


def test_healthy_stack_raises_no_alert(env: Environment, source: Source):
    # At least two evaluation cycles of the settled, healthy stack.
    time.sleep(max(0.0, env.settled_at + 2 * SCRAPE_INTERVAL + 0.2 - time.time()))
    alerts = [a for a in env.prometheus.alerts() if source.owns(a)]
    assert not alerts, f"alerts on a healthy stack:\n{format_alerts(alerts)}"
    # Not one evaluation since the stack settled had an alert pending or firing.
    end = time.time()
    history = [
        series
        for series in env.prometheus.query_range("ALERTS", env.settled_at, end, 0.5)
        if source.owns({"labels": series["metric"]})
    ]
    assert not history, "alerts pending or firing since the stack settled:\n" + "\n".join(
        json.dumps(series["metric"]) for series in history
    )


def wait_for_alerts(
    env: Environment,
    source: Source,
    condition: Callable[[dict[tuple[str, str, str], dict]], bool],
    what: str,
    timeout: float = 20,
) -> dict[tuple[str, str, str], dict]:
    def firing() -> dict[tuple[str, str, str], dict]:
        return {
            alert_key(a): a
            for a in env.prometheus.alerts()
            if a["state"] == "firing" and source.owns(a)
        }

    def check() -> dict[tuple[str, str, str], dict] | None:
        now = firing()
        return now if condition(now) else None

    return wait_until(
        check,
        f"{what} ({source.name})",
        timeout,
        interval=0.25,
        alive=env.alive,
        details=lambda: "alerts now:\n" + format_alerts(env.prometheus.alerts()),
    )


IMBALANCE = ("PylontechCellVoltageImbalance", "PylontechCellVoltageImbalanceCritical")
DRIFT_BANK, DRIFT_MODULE, DRIFT_CELL, DRIFT_VOLTS = "shed", 2, 5, 0.15


def test_cell_drift_fires_the_imbalance_alerts(env: Environment, source: Source):
    stack = source.stacks[DRIFT_BANK]
    module = stack.module(module_address(BANKS[DRIFT_BANK], DRIFT_MODULE))
    with stack.lock:
        module.drift_cell(DRIFT_CELL, DRIFT_VOLTS)
        cells = module.values().cell_voltages
    spread = round(max(cells) - min(cells), 3)
    assert 0.1 < spread < 0.2 and max(cells) < 3.6  # both thresholds, no over-voltage
    wanted = {(name, DRIFT_BANK, str(DRIFT_MODULE)) for name in IMBALANCE}
    firing = wait_for_alerts(
        env, source, lambda f: wanted <= set(f), "both imbalance alerts to fire"
    )

    for key in sorted(wanted):
        alert = firing[key]
        labels = alert["labels"]
        assert labels["job"] == JOB and labels["instance"] == source.address
        assert labels["source"] == source.name
        assert labels["severity"] == ("critical" if key[0].endswith("Critical") else "warning")
        assert float(alert["value"]) == pytest.approx(spread, abs=0.0011)
        description = alert["annotations"]["description"]
        assert f"bank {DRIFT_BANK} module {DRIFT_MODULE}" in description, description
    # Nothing else: not the other module, not the other bank, no over-voltage.
    others = [a for a in env.prometheus.alerts() if source.owns(a) and alert_key(a) not in wanted]
    assert not others, f"unexpected alerts:\n{format_alerts(others)}"

    # The drifted cell is the one the dashboard's cell panels show on top.
    top = env.prometheus.query(
        "topk(1, "
        + source.selector("pylontech_cell_voltage_volts", bank=DRIFT_BANK, module=str(DRIFT_MODULE))
        + ")"
    )
    assert [s["metric"]["cell"] for s in top] == [str(DRIFT_CELL)]
    assert float(top[0]["value"][1]) == pytest.approx(cells[DRIFT_CELL - 1], abs=0.0005)

    # The dashboard's alert annotation query now finds both alerts, for All and the bank.
    annotation = next(
        t for t in dashboard_targets(env.dashboard) if t.where.startswith("annotation")
    )
    for bank in (".*", DRIFT_BANK):
        values = {**all_values(env.dashboard), "instance": source.address, "bank": bank}
        found = env.prometheus.query(substitute(annotation.expr, values, GRAFANA_BUILTINS))
        assert {s["metric"]["alertname"] for s in found} == set(IMBALANCE), found


def test_bank_down_fires_bank_down_while_other_bank_reports(env: Environment, source: Source):
    down, other = "garage", "shed"
    source.stacks[down].faults.add("drop")  # the bank stops answering: cable unplugged
    firing = wait_for_alerts(
        env,
        source,
        lambda f: ("PylontechBankDown", down, "") in f,
        f"PylontechBankDown for {down}",
    )
    alert = firing[("PylontechBankDown", down, "")]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["instance"] == source.address
    assert f"bank {down}" in alert["annotations"]["description"]

    prometheus = env.prometheus
    assert prometheus.value(source.selector("pylontech_up", bank=down)) == 0
    assert prometheus.value(source.selector("pylontech_up", bank=other)) == 1
    assert prometheus.value(source.selector("up", job=JOB)) == 1, "the scrape itself works"
    # The silent bank's readings are gone at once (no stale values); the other's are there.
    assert prometheus.query(source.selector("pylontech_cell_voltage_volts", bank=down)) == []
    assert prometheus.query(source.selector("pylontech_module_up", bank=down) + " == 1") == []
    other_cells = prometheus.query(source.selector("pylontech_cell_voltage_volts", bank=other))
    assert len(other_cells) == MODULES_PER_BANK * 15
    assert prometheus.value(source.selector("bank:pylontech_module_voltage_volts:avg", bank=other))

    # Allowed besides BankDown: the bus error ratio of the silent bank (every request
    # times out; its `for:` is shortened too) and the cell imbalance left by the test
    # before. Not allowed: ModuleDown (the whole bank is down), ExporterDown, anything
    # about the other bank's reachability.
    allowed = {
        ("PylontechBankDown", down, ""),
        ("PylontechBusErrorRateHigh", down, ""),
        *((name, DRIFT_BANK, str(DRIFT_MODULE)) for name in IMBALANCE),
    }
    unexpected = [a for a in prometheus.alerts() if source.owns(a) and alert_key(a) not in allowed]
    assert not unexpected, f"unexpected alerts:\n{format_alerts(unexpected)}"
