"""End to end: simulator -> exporter process -> real Prometheus -> dashboard queries and alerts.

Two banks, each behind its own in-process TCP simulator (an RS485-to-Ethernet gateway):
``garage`` (group 0) and ``shed`` (group 1), two US3000C modules each, frozen at a sane
state (state of charge 0.6, balanced cells, small currents). The exporter runs as a real
process reading them through ``--config.file``; a real Prometheus scrapes it every second
and loads the repository's recording and alert rules, with every alert's ``for:`` cut
to 1 s (expressions unchanged).

Checked against that Prometheus:

- the dashboard only uses ``pylontech_*`` metrics the exporter really exports and
  recording rules the rule files define;
- its template variables resolve to the real jobs, instances, banks and modules;
- every PromQL expression of the dashboard returns data, once with every variable on
  *All* and once with one concrete bank and module selected (a few expressions that are
  empty on a healthy stack by design are listed in HEALTHY_EMPTY with the reason);
- every rule evaluates without error and every recording rule has data;
- a healthy stack raises no alert, pending or firing;
- a drifting cell fires both cell-imbalance alerts for that bank and module only;
- a bank that stops answering fires PylontechBankDown for that bank while the other
  bank still reports ``pylontech_up 1``, and its readings vanish (no stale values).

The tests share one set of processes and run in file order: the last two change the
simulated stack. Needs the ``prometheus`` and ``promtool`` binaries (Debian package
``prometheus``); skips without them unless PYLONTECH_REQUIRE_PROMETHEUS=1.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pylontech_exporter.models import module_address
from pylontech_exporter.simulator import BatteryStack
from pylontech_exporter.simulator.serve import TcpSimulator

pytestmark = pytest.mark.prometheus

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana" / "pylontech.json"
RECORDING_RULES = REPO / "deploy" / "prometheus" / "pylontech.recording.yml"
ALERT_RULES = REPO / "deploy" / "prometheus" / "pylontech.alerts.yml"

JOB = "pylontech"
SCRAPE_INTERVAL = 1  # seconds; also the rule evaluation interval
ALERT_FOR = "1s"  # every alert's `for:` in the test copy of the rules
SERIAL_TIMEOUT = 0.25  # per response; a silent bank costs this per request
#: Banks: name -> group. Each bank has its own simulator (port), so a silent bank does
#: not eat the other's share of the scrape deadline.
BANKS = {"garage": 0, "shed": 1}
MODULES_PER_BANK = 2
#: Frozen currents (+ charging): one bank charging and one discharging, so both the
#: "energy in" and "energy out" panels have something to show.
CURRENTS = {"garage": -3.0, "shed": 2.0}

# What the Grafana variables are replaced with. Grafana's $__rate_interval is
# max($__interval + scrape interval, 4 * scrape interval): 4 s here.
GRAFANA_BUILTINS = {
    "__rate_interval": f"{4 * SCRAPE_INTERVAL}s",
    "__interval_ms": f"{SCRAPE_INTERVAL * 1000}",
    "__interval": f"{SCRAPE_INTERVAL}s",
    "__range_ms": "60000",
    "__range_s": "60",
    "__range": "1m",
}

#: Dashboard expressions that are legitimately empty on a healthy stack: where -> reason.
#: They must still run without error, and must indeed be empty while healthy (anything
#: else means the entry is stale and the expression belongs with the others).
HEALTHY_EMPTY = {
    "panel 'Protections (0x44 Status1)' target B": (
        "lists only the protections that are active (`> 0`); none is on a healthy stack"
    ),
    "annotation 'Pylontech alerts'": (
        "firing Pylontech alerts only; test_cell_drift_fires_the_imbalance_alerts checks "
        "that it returns them once alerts fire"
    ),
}

#: Where a Grafana variable may appear in an expression: $name, ${name}, ${name:format},
#: [[name]] (deprecated form).
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


# --------------------------------------------------------------------------------------
# the binaries
# --------------------------------------------------------------------------------------


def _require_binaries() -> dict[str, str]:
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        what = " and ".join(missing)
        if os.environ.get("PYLONTECH_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{what} not on PATH and PYLONTECH_REQUIRE_PROMETHEUS=1")
        pytest.skip(
            f"{what} not on PATH (Debian package 'prometheus'); "
            "set PYLONTECH_REQUIRE_PROMETHEUS=1 to make this a failure"
        )
    return {name: str(path) for name, path in found.items()}


# --------------------------------------------------------------------------------------
# processes, ports, HTTP
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A subprocess whose output goes to a log file; ``stop()`` terminates, then kills."""

    def __init__(self, name: str, command: list[str], log: Path, **kwargs: Any) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as stream:
            self.popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                **kwargs,
            )

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def output(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.running() else f"exited {self.popen.returncode}"
        return f"--- {self.name} ({state}), last lines of {self.log} ---\n{self.output()}"


def http_get(url: str, params: dict[str, Any] | None = None, timeout: float = 5.0) -> bytes:
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float,
    *,
    interval: float = 0.2,
    processes: tuple[Process, ...] = (),
    details: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition()`` until it returns something true; fail after ``timeout``.
    Fails at once when one of ``processes`` has exited."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        for process in processes:
            if not process.running():
                pytest.fail(f"{process.name} exited while waiting for {what}\n{process.describe()}")
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
            message += "".join("\n" + p.describe() for p in processes)
            pytest.fail(message)
        time.sleep(interval)


class QueryError(Exception):
    """Prometheus answered a query with status error."""


@dataclass
class Prometheus:
    url: str
    process: Process

    def api(self, path: str, **params: Any) -> Any:
        try:
            body = http_get(f"{self.url}/api/v1/{path}", params)
        except urllib.error.HTTPError as error:  # 400/422: bad query, JSON body says why
            body = error.read()
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise QueryError(f"{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']} result"
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def value(self, expr: str) -> float | None:
        """The value of a single-series instant query, None when it is empty."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {len(result)} series, expected at most one"
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def targets(self) -> list[dict]:
        return self.api("targets", state="active")["activeTargets"]


def alert_key(alert: dict) -> tuple[str, str, str]:
    labels = alert["labels"]
    return labels["alertname"], labels.get("bank", ""), labels.get("module", "")


def format_alerts(alerts: list[dict]) -> str:
    if not alerts:
        return "no alerts"
    return "\n".join(
        f"  {a['state']:8} {a['labels'].get('alertname')} "
        + ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k != "alertname")
        + f" value={a.get('value')}"
        for a in alerts
    )


# --------------------------------------------------------------------------------------
# the dashboard
# --------------------------------------------------------------------------------------


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


@dataclass
class Target:
    where: str
    expr: str
    instant: bool  # Grafana runs an instant query (else a range query)


def dashboard_targets(dashboard: dict) -> list[Target]:
    """Every PromQL expression of panels (nested ones too) and annotations."""
    found = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(
                    Target(
                        f"panel {panel.get('title')!r} target {target.get('refId')}",
                        target["expr"],
                        bool(target.get("instant")) and not target.get("range"),
                    )
                )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append(
                Target(f"annotation {annotation.get('name')!r}", annotation["expr"], False)
            )
    return found


def query_variables(dashboard: dict) -> list[dict]:
    """The dashboard's `query` variables, in dependency (declaration) order."""
    return [v for v in dashboard["templating"]["list"] if v.get("type") == "query"]


def variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else str(query)


def parse_label_values(query: str) -> tuple[str, str]:
    """(selector, label) of a `label_values(selector, label)` variable query."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, flags=re.DOTALL)
    assert match, f"variable query {query!r} is not label_values(selector, label)"
    return match.group(1), match.group(2)


def grafana_regex_escape(value: str) -> str:
    """How Grafana's Prometheus data source escapes a multi-value variable's value for a
    regex matcher inside a PromQL string (backslash doubled for the string literal)."""
    return re.sub(r"[\\$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(), value)


def grafana_regex_value(values: list[str]) -> str:
    escaped = [grafana_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with every Grafana variable replaced; an unknown variable fails."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name not in values:
            raise AssertionError(f"{expr!r}: variable ${name} is not defined by the dashboard")
        return values[name]

    return VARIABLE.sub(replace, expr)


def all_values(dashboard: dict) -> dict[str, str]:
    """Every variable on *All*: its allValue (what Grafana sends for All)."""
    values = {}
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "datasource":
            continue
        assert variable.get("includeAll") and variable.get("allValue"), (
            f"variable {variable['name']} has no All option with an allValue"
        )
        values[variable["name"]] = variable["allValue"]
    return values


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: ``pylontech_*`` metrics and recording rules
    (names with a colon). Strings, label matchers and ranges are dropped first."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    return set(re.findall(r"(?<![\w:])([A-Za-z_][\w]*:[\w:]*|pylontech_\w+)", text))


def has_data(result: list[dict]) -> bool:
    """At least one sample that is a number (Grafana draws NaN as a gap)."""
    for series in result:
        samples = series.get("values") or [series.get("value")]
        if any(s and not math.isnan(float(s[1])) for s in samples):
            return True
    return False


# --------------------------------------------------------------------------------------
# the rules
# --------------------------------------------------------------------------------------


def load_rule_groups(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]


def recording_rule_names() -> set[str]:
    return {
        rule["record"]
        for path in (RECORDING_RULES, ALERT_RULES)
        for group in load_rule_groups(path)
        for rule in group.get("rules", [])
        if "record" in rule
    }


def shortened_rules(path: Path, target: Path) -> Path:
    """A copy of a rule file with every alert's ``for:`` set to ALERT_FOR."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group.get("rules", []):
            if "alert" in rule and "for" in rule:
                rule["for"] = ALERT_FOR
    target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------
# the environment: simulators, exporter, Prometheus
# --------------------------------------------------------------------------------------


def healthy_stack(group: int, current: float, seed: int) -> BatteryStack:
    """Two modules frozen at state of charge 0.6 with balanced cells."""
    stack = BatteryStack(
        modules=MODULES_PER_BANK, groups=[group], model="US3000C", seed=seed, soc=0.6
    )
    stack.freeze()
    with stack.lock:
        for module in stack.modules:
            module.soc = 0.6
            module.cell_offsets = [0.0] * len(module.cell_offsets)
        stack.set_current(current)  # also settles the cell voltages
    return stack


@dataclass
class Environment:
    stacks: dict[str, BatteryStack]
    exporter: Process
    exporter_address: str
    prometheus: Prometheus
    dashboard: dict
    #: From this time (epoch seconds) on, the healthy stack has been scraped and its rules
    #: evaluated: no alert may be pending or firing after it while it stays healthy.
    settled_at: float = 0.0
    exported: set[str] = field(default_factory=set)

    @property
    def processes(self) -> tuple[Process, ...]:
        return (self.exporter, self.prometheus.process)

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.processes)


def start_exporter(config: Path, tmp: Path) -> tuple[Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYLONTECH_EXPORTER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for attempt in range(3):
        address = f"127.0.0.1:{free_port()}"
        process = Process(
            "exporter",
            [
                sys.executable,
                "-m",
                "pylontech_exporter.cli",
                "--config.file",
                str(config),
                "--web.listen-address",
                address,
                "--cache.ttl",
                "0",
                "--scrape.timeout-offset",
                "0.2",
                "--log.level",
                "info",
            ],
            tmp / f"exporter-{attempt}.log",
            cwd=REPO,
            env=env,
        )

        def serving(address: str = address) -> bool:
            return b"pylontech_up" in http_get(f"http://{address}/metrics", timeout=3)

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.running():
            with contextlib.suppress(OSError):
                if serving():
                    return process, address
            time.sleep(0.1)
        process.stop()
        if "cannot listen" not in process.output():  # anything but a port race: give up
            break
    pytest.fail(f"the exporter did not start serving\n{process.describe()}")


def start_prometheus(binary: str, config: Path, tmp: Path) -> Prometheus:
    for attempt in range(3):
        address = f"127.0.0.1:{free_port()}"
        data = tmp / f"tsdb-{attempt}"
        process = Process(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address={address}",
                "--log.level=info",
            ],
            tmp / f"prometheus-{attempt}.log",
            cwd=tmp,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.running():
            with contextlib.suppress(OSError):
                if http_get(f"http://{address}/-/ready", timeout=2):
                    return Prometheus(f"http://{address}", process)
            time.sleep(0.1)
        process.stop()
        if "address already in use" not in process.output().lower():
            break
    pytest.fail(f"Prometheus did not become ready\n{process.describe()}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    binaries = _require_binaries()
    tmp = tmp_path_factory.mktemp("e2e_prometheus")
    with contextlib.ExitStack() as cleanup:
        # Simulators: one per bank.
        stacks, simulators = {}, {}
        for seed, (name, group) in enumerate(BANKS.items(), start=11):
            stacks[name] = healthy_stack(group, CURRENTS[name], seed)
            simulators[name] = cleanup.enter_context(TcpSimulator(stacks[name], latency=0))
        config = tmp / "exporter.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "banks": [
                        {
                            "name": name,
                            "port": simulators[name].url,
                            "group": group,
                            "timeout": SERIAL_TIMEOUT,
                        }
                        for name, group in BANKS.items()
                    ]
                }
            ),
            encoding="utf-8",
        )

        exporter, exporter_address = start_exporter(config, tmp)
        cleanup.callback(exporter.stop)

        rules = [
            shortened_rules(RECORDING_RULES, tmp / RECORDING_RULES.name),
            shortened_rules(ALERT_RULES, tmp / ALERT_RULES.name),
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
                        {"job_name": JOB, "static_configs": [{"targets": [exporter_address]}]}
                    ],
                }
            ),
            encoding="utf-8",
        )
        check = subprocess.run(
            [binaries["promtool"], "check", "config", str(prometheus_yml)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, f"promtool check config:\n{check.stdout}{check.stderr}"

        prometheus = start_prometheus(binaries["prometheus"], prometheus_yml, tmp)
        cleanup.callback(prometheus.process.stop)

        environment = Environment(
            stacks=stacks,
            exporter=exporter,
            exporter_address=exporter_address,
            prometheus=prometheus,
            dashboard=json.loads(DASHBOARD.read_text(encoding="utf-8")),
        )
        procs = environment.processes

        def target_up() -> bool:
            targets = prometheus.targets()
            return len(targets) == 1 and targets[0]["health"] == "up"

        wait_for(
            target_up,
            "the first successful scrape",
            20,
            processes=procs,
            details=lambda: json.dumps(prometheus.targets(), indent=1),
        )
        # Rates need two scrapes and the ratio rule an evaluation after them: once the
        # bus failure ratio exists for both banks, everything has data.
        wait_for(
            lambda: (
                len(prometheus.query("bank:pylontech_serial_request_failures:ratio_rate5m"))
                == len(BANKS)
            ),
            "the recording rules to have data for every bank",
            20,
            processes=procs,
        )
        # One more evaluation cycle: whatever was pending before the first scrape
        # (PylontechExporterAbsent) has resolved by then.
        time.sleep(SCRAPE_INTERVAL + 0.2)
        environment.settled_at = time.time()
        text = http_get(f"http://{exporter_address}/metrics").decode()
        environment.exported = {
            sample.name
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        yield environment


# --------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------


def test_dashboard_uses_only_exported_metrics_and_defined_rules(env: Environment):
    records = recording_rule_names()
    assert records, "no recording rules found"
    unknown = []
    for target in dashboard_targets(env.dashboard):
        for name in sorted(metric_names(target.expr)):
            if ":" in name:
                if name not in records:
                    unknown.append(f"{target.where}: recording rule {name} is not defined")
            elif name not in env.exported:
                unknown.append(f"{target.where}: {name} is not exported")
    for variable in query_variables(env.dashboard):
        selector, _ = parse_label_values(variable_query(variable))
        for name in metric_names(selector):
            if name not in env.exported and name not in records:
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
        selector, label = parse_label_values(variable_query(variable))
        options = sorted(
            env.prometheus.api(
                f"label/{label}/values",
                **{
                    "match[]": substitute(selector, values),
                    "start": env.settled_at - 10,
                    "end": time.time(),
                },
            )
        )
        chosen = pick(name, options)
        values[name] = grafana_regex_value(chosen) if chosen else variable["allValue"]
        resolved[name] = (options, values[name])
    return resolved


def test_template_variables_resolve(env: Environment):
    resolved = resolve_variables(env, lambda name, options: [])
    options = {name: opts for name, (opts, _) in resolved.items()}
    assert options == {
        "job": [JOB],
        "instance": [env.exporter_address],
        "bank": sorted(BANKS),
        "module": [str(p) for p in range(1, MODULES_PER_BANK + 1)],
    }
    # Narrowed: bank `shed` selected, the module list follows it.
    chained = resolve_variables(env, lambda name, opts: ["shed"] if name == "bank" else [])
    assert chained["bank"][1] == "shed"
    assert chained["module"][0] == [str(p) for p in range(1, MODULES_PER_BANK + 1)]


def run_target(env: Environment, target: Target, values: dict[str, str]) -> tuple[str, bool]:
    """Run a dashboard target as Grafana would; (expr as sent, has data). Query errors
    propagate as QueryError."""
    expr = substitute(target.expr, values)
    if target.instant:
        return expr, has_data(env.prometheus.query(expr))
    end = time.time()
    ranged = env.prometheus.query_range(expr, end - 10, end, SCRAPE_INTERVAL)
    # The range query is what Grafana draws; the instant query shows there is data now
    # (not only in the last few seconds). Both must have some.
    return expr, has_data(ranged) and has_data(env.prometheus.query(expr))


@pytest.mark.parametrize("selection", ["all", "one bank and module"])
def test_every_dashboard_expression_returns_data(env: Environment, selection: str):
    if selection == "all":
        values = all_values(env.dashboard)
    else:

        def pick(name: str, options: list[str]) -> list[str]:
            wanted = {"bank": "shed", "module": "2"}.get(name)
            if wanted is None:
                return options[:1]
            assert wanted in options, f"variable {name}: {wanted!r} not among {options}"
            return [wanted]

        values = {**all_values(env.dashboard)}
        values.update({n: v for n, (_, v) in resolve_variables(env, pick).items()})
    targets = dashboard_targets(env.dashboard)
    wheres = {t.where for t in targets}
    stale = sorted(set(HEALTHY_EMPTY) - wheres)
    assert not stale, f"HEALTHY_EMPTY names targets the dashboard no longer has: {stale}"
    problems = []
    for target in targets:
        try:
            expr, data = run_target(env, target, values)
        except QueryError as error:
            problems.append(f"{target.where}: query failed: {error}\n    {target.expr}")
            continue
        if target.where in HEALTHY_EMPTY:
            if data:
                problems.append(
                    f"{target.where}: listed in HEALTHY_EMPTY but returns data on a healthy "
                    f"stack; drop the entry\n    {expr}"
                )
        elif not data:
            problems.append(f"{target.where}: no data\n    {expr}")
    assert not problems, "\n".join(problems)


def test_every_rule_evaluates_and_every_recording_rule_has_data(env: Environment):
    groups = env.prometheus.api("rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    expected = recording_rule_names() | {
        rule["alert"]
        for group in load_rule_groups(ALERT_RULES)
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
        result = env.prometheus.query(name)
        banks = {series["metric"].get("bank") for series in result}
        if banks != set(BANKS):
            problems.append(f"{name}: series for banks {sorted(banks)}, expected {sorted(BANKS)}")
        elif not all(s["metric"].get("job") == JOB for s in result):
            problems.append(f"{name}: lost the job label")
    assert not problems, "\n".join(problems)
    # The alert rules really use the shortened `for:` (else the tests below would wait).
    durations = {
        rule["duration"] for g in groups for rule in g["rules"] if rule["type"] == "alerting"
    }
    assert durations == {1}


def test_healthy_stack_raises_no_alert(env: Environment):
    # At least two evaluation cycles of the settled, healthy stack.
    time.sleep(max(0.0, env.settled_at + 2 * SCRAPE_INTERVAL + 0.2 - time.time()))
    alerts = env.prometheus.alerts()
    assert not alerts, f"alerts on a healthy stack:\n{format_alerts(alerts)}"
    # Not one evaluation since the stack settled had an alert pending or firing.
    end = time.time()
    history = env.prometheus.query_range("ALERTS", env.settled_at, end, 0.5)
    assert not history, "alerts pending or firing since the stack settled:\n" + "\n".join(
        json.dumps(series["metric"]) for series in history
    )


def wait_for_alerts(
    env: Environment,
    condition: Callable[[dict[tuple[str, str, str], dict]], bool],
    what: str,
    timeout: float = 20,
) -> dict[tuple[str, str, str], dict]:
    def check() -> dict[tuple[str, str, str], dict] | None:
        firing = {alert_key(a): a for a in env.prometheus.alerts() if a["state"] == "firing"}
        return firing if condition(firing) else None

    return wait_for(
        check,
        what,
        timeout,
        interval=0.25,
        processes=env.processes,
        details=lambda: "alerts now:\n" + format_alerts(env.prometheus.alerts()),
    )


IMBALANCE = ("PylontechCellVoltageImbalance", "PylontechCellVoltageImbalanceCritical")
DRIFT_BANK, DRIFT_MODULE, DRIFT_CELL, DRIFT_VOLTS = "shed", 2, 5, 0.15


def test_cell_drift_fires_the_imbalance_alerts(env: Environment):
    stack = env.stacks[DRIFT_BANK]
    module = stack.module(module_address(BANKS[DRIFT_BANK], DRIFT_MODULE))
    with stack.lock:
        module.drift_cell(DRIFT_CELL, DRIFT_VOLTS)
        cells = module.values().cell_voltages
    spread = round(max(cells) - min(cells), 3)
    assert 0.1 < spread < 0.2 and max(cells) < 3.6  # both thresholds, no over-voltage
    wanted = {(name, DRIFT_BANK, str(DRIFT_MODULE)) for name in IMBALANCE}
    firing = wait_for_alerts(env, lambda f: wanted <= set(f), "both imbalance alerts to fire")

    for key in sorted(wanted):
        alert = firing[key]
        labels = alert["labels"]
        assert labels["job"] == JOB and labels["instance"] == env.exporter_address
        assert labels["severity"] == ("critical" if key[0].endswith("Critical") else "warning")
        assert float(alert["value"]) == pytest.approx(spread, abs=0.0011)
        summary = alert["annotations"]["summary"]
        assert f"bank {DRIFT_BANK} module {DRIFT_MODULE}" in summary, summary
    # Nothing else: not the other module, not the other bank, no over-voltage.
    others = [a for a in env.prometheus.alerts() if alert_key(a) not in wanted]
    assert not others, f"unexpected alerts:\n{format_alerts(others)}"

    # The drifted cell is the one the dashboard's cell panels show on top.
    top = env.prometheus.query(
        f'topk(1, pylontech_cell_voltage_volts{{bank="{DRIFT_BANK}", module="{DRIFT_MODULE}"}})'
    )
    assert [s["metric"]["cell"] for s in top] == [str(DRIFT_CELL)]
    assert float(top[0]["value"][1]) == pytest.approx(cells[DRIFT_CELL - 1], abs=0.0005)

    # The dashboard's alert annotation query now finds both alerts, for All and the bank.
    annotation = next(
        t for t in dashboard_targets(env.dashboard) if t.where.startswith("annotation")
    )
    for bank in (".*", DRIFT_BANK):
        values = {**all_values(env.dashboard), "bank": bank}
        found = env.prometheus.query(substitute(annotation.expr, values))
        assert {s["metric"]["alertname"] for s in found} == set(IMBALANCE), found


def test_bank_down_fires_bank_down_while_other_bank_reports(env: Environment):
    down, other = "garage", "shed"
    stack = env.stacks[down]
    with stack.lock:
        for module in stack.modules:
            stack.remove_module(module.address)
    firing = wait_for_alerts(
        env, lambda f: ("PylontechBankDown", down, "") in f, f"PylontechBankDown for {down}"
    )
    alert = firing[("PylontechBankDown", down, "")]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["instance"] == env.exporter_address
    assert down in alert["annotations"]["summary"]

    prometheus = env.prometheus
    assert prometheus.value(f'pylontech_up{{bank="{down}"}}') == 0
    assert prometheus.value(f'pylontech_up{{bank="{other}"}}') == 1
    assert prometheus.value(f'up{{job="{JOB}"}}') == 1, "the scrape itself must still work"
    # The silent bank's readings are gone at once (no stale values); the other's are there.
    assert prometheus.query(f'pylontech_cell_voltage_volts{{bank="{down}"}}') == []
    assert prometheus.query(f'pylontech_module_up{{bank="{down}"}} == 1') == []
    other_cells = prometheus.query(f'pylontech_cell_voltage_volts{{bank="{other}"}}')
    assert len(other_cells) == MODULES_PER_BANK * 15
    assert prometheus.value(f'bank:pylontech_module_voltage_volts:avg{{bank="{other}"}}')

    # Allowed besides BankDown: the bus error ratio of the silent bank (every request
    # times out; its `for:` is shortened too) and the cell imbalance left by the test
    # before. Not allowed: ModuleDown (the whole bank is down), ExporterDown, anything
    # about the other bank's reachability.
    allowed = {
        ("PylontechBankDown", down, ""),
        ("PylontechBusErrorRateHigh", down, ""),
        *((name, DRIFT_BANK, str(DRIFT_MODULE)) for name in IMBALANCE),
    }
    unexpected = [a for a in prometheus.alerts() if alert_key(a) not in allowed]
    assert not unexpected, f"unexpected alerts:\n{format_alerts(unexpected)}"
