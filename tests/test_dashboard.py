"""The Grafana dashboard grafana/pylontech.json.

It must work both imported by hand and provisioned from file, against any Prometheus data
source, and must only query metrics the exporter exposes (docs/metrics.md) or the
recording rules in deploy/prometheus. Structural checks are functions returning a list of
problems; each has a negative test on a deliberately broken copy.

Then the dashboard as Grafana itself sees it, without a Grafana server: its JSON compiled
against Grafana's published schema types (tests/grafana_schema/check.mjs, @grafana/schema
and tsc), and values formatted by Grafana's own display code (display.mjs, @grafana/data).
Both need node and `npm ci` in tests/grafana_schema; they skip without them unless
PYLONTECH_REQUIRE_GRAFANA_SCHEMA=1 (as in CI).

Last, every panel as Grafana lays it out for a stack of 2 banks x 16 modules (each
repeated copy, each query) against a real Prometheus, once per source: the exporter as
the RS485 master (`--simulate`), listening beside a virtual inverter (`--simulate
--serial.listen-only`) and reading two RS232 consoles (`protocol: console`). The
variables find the stack (console banks only on the console: RS485 users get no console
rows; banks with status flags and 0x92 data only on RS485: console users get no rows of
them; where a variable has no value Grafana still draws its repeat once, empty, which
only a collapsed row may be), every query runs and has data but for what the source does
not carry (SOURCE_GAPS, each with its reason and checked to be empty), no copy mixes
banks or modules, series names are unique within a panel, the series fit the panel, and
values keep their precision.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import REPO
from support.dashboard import (
    GRID_COLUMNS,
    NON_QUERY_PANELS,
    SCHEMA_CHECK,
    PanelCopy,
    all_panels,
    all_values,
    bank_variables,
    dashboard_targets,
    grafana_builtins,
    grafana_regex_value,
    has_data,
    height_px,
    load_dashboard,
    panel_copies,
    panel_name,
    panels_by_row,
    parse_label_values,
    promql_exprs,
    query_panels,
    query_variables,
    render_legend,
    require_grafana_node,
    substitute,
    variable_label,
    variable_options,
    variable_query,
    variables,
)
from support.processes import Exporter
from support.prometheus import HEALTHY_EMPTY, Prometheus, start_prometheus
from support.rules import (
    RECORDING_RULES,
    assert_promtool_ok,
    iter_rules,
    known_metric_names,
    load_groups,
    metric_names_in_promql,
    require_binary,
    rule_files,
    run_promtool,
)
from support.waiting import wait_until

from pylontech_exporter.simulator import BatteryStack
from pylontech_exporter.simulator.console import ConsoleResponder
from pylontech_exporter.simulator.serve import TcpSimulator

PROVISIONING = REPO / "grafana" / "provisioning"
DASHBOARD_UID = "pylontech-overview"
DATASOURCE_REFS = frozenset({"$datasource", "${datasource}"})
# Grafana's built-in variables, replaced by plain values before promtool parses an expr.
#: Pixels a state-timeline row needs for its name to stay readable.
ROW_PX = 20
#: What a state timeline's rows do not get of its height: title, padding, time axis; and
#: the pager when there is more than a page of rows.
STATE_TIMELINE_CHROME_PX = 32 + 16 + 26
PAGER_PX = 28
#: Lines a time series panel may draw before they cannot be told apart.
MAX_LINES = 16
#: A bar of a bar gauge: the least height of a horizontal bar (its name and value are one
#: line of text), the least width of a vertical one (its value is written above it).
MIN_BAR_HEIGHT_PX = 16
MIN_BAR_WIDTH_PX = 40
#: What a bar gauge's bars do not get: title and padding.
BAR_GAUGE_CHROME_PX = 32 + 16
#: The dashboard as seen on a 1600 px wide screen: px per grid column.
COLUMN_PX = (1600 - 2 * 16) / GRID_COLUMNS
GRAFANA_BUILTINS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range_s": "3600",
    "$__range": "1h",
}


def uses_datasource_variable(datasource) -> bool:
    if isinstance(datasource, str):
        return datasource in DATASOURCE_REFS
    if isinstance(datasource, dict):
        return datasource.get("uid") in DATASOURCE_REFS and datasource.get("type") in (
            None,
            "prometheus",
        )
    return False


# --------------------------------------------------------------------------------------
# checks: each returns a list of problems (empty = fine)
# --------------------------------------------------------------------------------------


def check_uid(dashboard: dict) -> list[str]:
    problems = []
    if dashboard.get("uid") != DASHBOARD_UID:
        problems.append(f"uid is {dashboard.get('uid')!r}, expected {DASHBOARD_UID!r}")
    if dashboard.get("id") is not None:
        problems.append("top-level id must be null so imports do not clash")
    return problems


def check_datasources(dashboard: dict) -> list[str]:
    problems = []
    for panel in all_panels(dashboard):
        if panel.get("type") in NON_QUERY_PANELS and not panel.get("targets"):
            continue
        if not uses_datasource_variable(panel.get("datasource")):
            problems.append(f"{panel_name(panel)}: datasource is {panel.get('datasource')!r}")
        if not panel.get("targets"):
            problems.append(f"{panel_name(panel)}: no targets")
        for target in panel.get("targets", []):
            if not uses_datasource_variable(target.get("datasource")):
                problems.append(
                    f"{panel_name(panel)} target {target.get('refId')}: "
                    f"datasource is {target.get('datasource')!r}"
                )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn"):
            continue
        if not uses_datasource_variable(annotation.get("datasource")):
            problems.append(f"annotation {annotation.get('name')!r}: not on $datasource")
    for name, variable in variables(dashboard).items():
        if variable.get("type") == "query" and not uses_datasource_variable(
            variable.get("datasource")
        ):
            problems.append(f"variable {name}: datasource is {variable.get('datasource')!r}")
    return problems


def check_units(dashboard: dict) -> list[str]:
    problems = []
    for panel in query_panels(dashboard):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            problems.append(f"{panel_name(panel)}: no fieldConfig.defaults.unit")
    return problems


def check_panel_ids(dashboard: dict) -> list[str]:
    problems = []
    seen: dict[int, str] = {}
    for panel in all_panels(dashboard):
        panel_id = panel.get("id")
        if not isinstance(panel_id, int):
            problems.append(f"{panel_name(panel)}: id is not an integer")
        elif panel_id in seen:
            problems.append(f"{panel_name(panel)}: id also used by {seen[panel_id]}")
        else:
            seen[panel_id] = panel_name(panel)
    return problems


def check_repeats(dashboard: dict) -> list[str]:
    """Repeats are panel options; a copy per module exists only within a copy per bank
    (else module 1 of every bank shares one panel); what a panel is repeated over is in
    its title or its row's; series named by module name their bank unless the panel is
    one bank's."""
    problems = []
    banks = bank_variables(dashboard)
    for row, panel in panels_by_row(dashboard):
        name = panel_name(panel)
        misplaced = {"repeat", "repeatDirection"} & set(
            panel.get("fieldConfig", {}).get("defaults", {})
        )
        if misplaced:
            problems.append(f"{name}: {sorted(misplaced)} inside fieldConfig")
        row_variable = row.get("repeat") if row else None
        scope = {v for v in (row_variable, panel.get("repeat")) if v}
        titles = str(panel.get("title", "")) + " " + str((row or {}).get("title", ""))
        if panel.get("repeat") == "module" and row_variable not in banks:
            problems.append(f"{name}: repeated per module outside a row repeated per bank")
        for variable in sorted(scope):
            if f"${variable}" not in titles:
                problems.append(f"{name}: repeated per {variable}; no ${variable} in its title")
        if "$module" in titles and "module" not in scope:
            problems.append(f"{name}: titled per module but does not repeat")
        if scope & banks:
            continue
        for target in panel.get("targets", []):
            legend = target.get("legendFormat", "")
            if "{{module}}" in legend and "{{bank}}" not in legend:
                problems.append(
                    f"{name} target {target.get('refId')}: names modules without their bank"
                )
    return problems


def check_descriptions(dashboard: dict) -> list[str]:
    """Every panel but a row (the schema has no description for rows) says what it shows."""
    return [
        f"{panel_name(panel)}: no description"
        for panel in all_panels(dashboard)
        if panel.get("type") != "row" and not str(panel.get("description", "")).strip()
    ]


def check_state_timeline_pages(dashboard: dict) -> list[str]:
    """A state timeline pages its rows (`perPage`) so that each row keeps ROW_PX."""
    problems = []
    for panel in query_panels(dashboard):
        if panel.get("type") != "state-timeline":
            continue
        per_page = panel.get("options", {}).get("perPage")
        room = height_px(panel["gridPos"]["h"]) - STATE_TIMELINE_CHROME_PX - PAGER_PX
        if not isinstance(per_page, int) or per_page < 1:
            problems.append(f"{panel_name(panel)}: no options.perPage")
        elif room / per_page < ROW_PX:
            problems.append(
                f"{panel_name(panel)}: {per_page} rows a page in {room} px: "
                f"{room / per_page:.0f} px a row, fewer than {ROW_PX}"
            )
    return problems


def check_grid(dashboard: dict) -> list[str]:
    problems = []
    for panel in all_panels(dashboard):
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{panel_name(panel)}: incomplete gridPos {grid}")
        elif grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24:
            problems.append(f"{panel_name(panel)}: gridPos {grid} outside the 24 columns")
    return problems


def check_variables(dashboard: dict) -> list[str]:
    problems = []
    found = variables(dashboard)
    datasource = found.get("datasource")
    if (
        not datasource
        or datasource.get("type") != "datasource"
        or datasource.get("query") != "prometheus"
    ):
        problems.append("no `datasource` variable of type datasource / prometheus")
    expected = {
        "job": "pylontech_up",
        "instance": "pylontech_up",
        "bank": "pylontech_up",
        "module": "pylontech_module_up",
        # Only console banks have it: no console bank, no console rows.
        "console_bank": "pylontech_console_unparsed_total",
        # Only banks whose 0x44 / 0x92 answers are read (as master, or heard from the
        # inverter's polling) have them: none on the console.
        "status_bank": "pylontech_module_status_flag",
        "management_bank": "pylontech_module_charge_enabled",
    }
    for name, metric in expected.items():
        variable = found.get(name)
        if variable is None:
            problems.append(f"variable {name} missing")
            continue
        parsed = parse_label_values(variable_query(variable))
        if variable.get("type") != "query" or parsed is None:
            problems.append(f"variable {name}: not a label_values query")
        elif metric_names_in_promql(parsed[0]) != {metric}:
            problems.append(f"variable {name}: label_values on {parsed[0]!r}, expected {metric}")
        if not (variable.get("multi") and variable.get("includeAll")):
            problems.append(f"variable {name}: must be multi-value with an All option")
        # `.+`, not `.*`: All then never matches a series without the label.
        if variable.get("allValue") != ".+":
            problems.append(f"variable {name}: allValue {variable.get('allValue')!r}, not '.+'")
    return problems


def check_placeholders(copies: list[PanelCopy]) -> list[str]:
    """A repeat whose variable has no value is drawn once, empty (PLACEHOLDER): fine as a
    collapsed row, which shows no empty panel unless it is opened, not elsewhere."""
    return [
        f"{c.name}: drawn empty for want of a value of its variable"
        for c in copies
        if c.placeholder and not c.collapsed
    ]


def check_metric_names(dashboard: dict, known: set[str]) -> list[str]:
    problems = []
    for where, expr in promql_exprs(dashboard):
        for metric in sorted(metric_names_in_promql(expr) - known):
            problems.append(f"{where}: unknown metric {metric!r}")
    return problems


def check_alert_thresholds_drawn(dashboard: dict, groups: list[dict]) -> list[str]:
    """An alert `<metric or recording rule> > N` has N drawn as a threshold line on a
    panel of it."""
    problems = []
    for rule in iter_rules(groups):
        if "alert" not in rule:
            continue
        match = re.fullmatch(r"\s*([\w:]+)\s*[<>]=?\s*([0-9.]+)\s*", rule["expr"])
        if not match:
            continue
        metric, value = match.group(1), float(match.group(2))
        drawn = False
        for panel in query_panels(dashboard):
            if not any(metric in t.get("expr", "") for t in panel.get("targets", [])):
                continue
            defaults = panel.get("fieldConfig", {}).get("defaults", {})
            style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
            steps = defaults.get("thresholds", {}).get("steps", [])
            if style != "off" and any(s.get("value") == value for s in steps):
                drawn = True
        if not drawn:
            problems.append(f"{rule['alert']}: no panel of {metric} draws a line at {value}")
    return problems


# --------------------------------------------------------------------------------------
# tests on the real dashboard
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


@pytest.fixture(scope="module")
def groups() -> list[dict]:
    return load_groups(rule_files())


@pytest.fixture(scope="module")
def known() -> set[str]:
    return known_metric_names()


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


def test_dashboard_parses(dashboard):
    assert dashboard["title"]
    assert query_panels(dashboard), "no panels"


def test_uid_is_stable(dashboard):
    assert check_uid(dashboard) == []


def test_every_panel_and_target_uses_the_datasource_variable(dashboard):
    problems = check_datasources(dashboard)
    assert not problems, "\n".join(problems)


def test_every_panel_has_a_unit(dashboard):
    problems = check_units(dashboard)
    assert not problems, "\n".join(problems)


def test_panel_ids_unique(dashboard):
    problems = check_panel_ids(dashboard)
    assert not problems, "\n".join(problems)


def test_grid_positions(dashboard):
    problems = check_grid(dashboard)
    assert not problems, "\n".join(problems)


def test_template_variables(dashboard):
    problems = check_variables(dashboard)
    assert not problems, "\n".join(problems)


def test_only_contract_metrics_and_recording_rules(dashboard, known):
    problems = check_metric_names(dashboard, known)
    assert not problems, "\n".join(problems)


def test_alert_thresholds_drawn(dashboard, groups):
    problems = check_alert_thresholds_drawn(dashboard, groups)
    assert not problems, "\n".join(problems)


def test_nested_panels_are_checked(dashboard):
    """The dashboard has a collapsed row, so the nested-panel walk is exercised."""
    nested = [p for row in dashboard["panels"] for p in row.get("panels", [])]
    assert nested, "expected at least one collapsed row with nested panels"


def test_provisioning_points_at_the_dashboard():
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "pylontech.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert [d["type"] for d in datasource["datasources"]] == ["prometheus"]


def substitute_grafana_variables(expr: str) -> str:
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    # remaining dashboard variables are all used inside regex label matchers
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


@pytest.mark.prometheus
def test_promql_parses(dashboard, promtool, tmp_path):
    """promtool parses every expression (turned into recording rules for the purpose)."""
    exprs = promql_exprs(dashboard)
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:expr:n{i}", "expr": substitute_grafana_variables(expr)}
            for i, (_, expr) in enumerate(exprs)
        ],
    }
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    assert_promtool_ok(run_promtool(promtool, "check", "rules", path))


# --------------------------------------------------------------------------------------
# negative tests: every check must be able to fail
# --------------------------------------------------------------------------------------


def _nested_panel(dashboard: dict) -> dict:
    return next(p for row in dashboard["panels"] for p in row.get("panels", []))


def test_check_uid_catches_change(dashboard):
    broken = copy.deepcopy(dashboard)
    broken["uid"] = "abc123"
    broken["id"] = 7
    assert len(check_uid(broken)) == 2


def test_check_datasources_catches_hardcoded_uid(dashboard):
    broken = copy.deepcopy(dashboard)
    top = query_panels(broken)[0]
    top["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    nested = _nested_panel(broken)
    nested["targets"][0]["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    variables(broken)["bank"]["datasource"] = "Prometheus"
    assert len(check_datasources(broken)) == 3


def test_check_units_catches_missing_unit(dashboard):
    broken = copy.deepcopy(dashboard)
    del _nested_panel(broken)["fieldConfig"]["defaults"]["unit"]
    assert len(check_units(broken)) == 1


def test_check_panel_ids_catches_duplicate(dashboard):
    broken = copy.deepcopy(dashboard)
    panels = all_panels(broken)
    _nested_panel(broken)["id"] = panels[0]["id"]
    assert len(check_panel_ids(broken)) == 1


def test_repeats_keep_banks_apart(dashboard):
    problems = check_repeats(dashboard)
    assert not problems, "\n".join(problems)


def _panel(dashboard: dict, panel_id: int) -> dict:
    return next(p for p in all_panels(dashboard) if p.get("id") == panel_id)


def test_check_repeats_catches_misplaced_repeat(dashboard):
    broken = copy.deepcopy(dashboard)
    panel = next(p for p in all_panels(broken) if p.get("repeat") == "module")
    panel["fieldConfig"]["defaults"]["repeat"] = panel.pop("repeat")
    problems = check_repeats(broken)
    assert len(problems) == 2 and all(panel_name(panel) in p for p in problems), problems


def test_check_repeats_catches_modules_of_every_bank_in_one_panel(dashboard):
    """The bug of issue 12: panels repeated per module only, so module 1 of each bank
    ends up in one panel; and module series named without their bank."""
    broken = copy.deepcopy(dashboard)
    per_module = [p for p in all_panels(broken) if p.get("repeat") == "module"]
    rows = {id(row): row for row, panel in panels_by_row(broken) if panel in per_module}
    assert per_module and len(rows) == 2  # per bank, and per console bank
    for row in rows.values():
        row.pop("repeat")
    # State of charge and state of health per module, in a row per bank / console bank.
    bank_panels = [_panel(broken, 12), _panel(broken, 44)]
    for bank_panel in bank_panels:
        next(row for row, panel in panels_by_row(broken) if panel is bank_panel).pop("repeat")
    problems = check_repeats(broken)
    for panel in per_module:
        assert f"{panel_name(panel)}: repeated per module outside a row repeated per bank" in (
            problems
        )
    for bank_panel in bank_panels:
        assert f"{panel_name(bank_panel)} target A: names modules without their bank" in problems


def test_every_panel_has_a_description(dashboard):
    problems = check_descriptions(dashboard)
    assert not problems, "\n".join(problems)


def test_check_descriptions_catches_empty(dashboard):
    broken = copy.deepcopy(dashboard)
    _nested_panel(broken)["description"] = " "
    del query_panels(broken)[0]["description"]
    assert len(check_descriptions(broken)) == 2


def test_state_timelines_page_their_rows(dashboard):
    problems = check_state_timeline_pages(dashboard)
    assert not problems, "\n".join(problems)


def test_check_state_timeline_pages_catches_crowding(dashboard):
    broken = copy.deepcopy(dashboard)
    timelines = [p for p in query_panels(broken) if p["type"] == "state-timeline"]
    timelines[0]["options"]["perPage"] = 30
    del timelines[1]["options"]["perPage"]
    assert len(check_state_timeline_pages(broken)) == 2


def test_check_grid_catches_overflow(dashboard):
    broken = copy.deepcopy(dashboard)
    query_panels(broken)[0]["gridPos"]["x"] = 20
    query_panels(broken)[0]["gridPos"]["w"] = 8
    assert len(check_grid(broken)) == 1


def test_check_variables_catches_problems(dashboard):
    broken = copy.deepcopy(dashboard)
    found = variables(broken)
    found["module"]["includeAll"] = False
    found["bank"]["query"] = "label_values(pylontech_bank_info, bank)"
    found["instance"]["allValue"] = ".*"
    broken["templating"]["list"] = [v for v in broken["templating"]["list"] if v["name"] != "job"]
    assert len(check_variables(broken)) == 4


def test_check_metric_names_catches_typo(dashboard, known):
    broken = copy.deepcopy(dashboard)
    _nested_panel(broken)["targets"][0]["expr"] = 'pylontech_cell_volts{bank=~"$bank"}'
    problems = check_metric_names(broken, known)
    assert len(problems) == 1 and "pylontech_cell_volts" in problems[0], problems


def test_check_alert_thresholds_drawn_catches_drift(dashboard, groups):
    broken = copy.deepcopy(groups)
    for rule in iter_rules(broken):
        if rule.get("alert") == "PylontechCellVoltageImbalance":
            rule["expr"] = rule["expr"].replace("0.05", "0.04")
        if rule.get("alert") == "PylontechStateOfHealthLow":  # on a metric, not a record
            rule["expr"] = rule["expr"].replace("0.8", "0.75")
    problems = check_alert_thresholds_drawn(dashboard, broken)
    assert [p.split(":")[0] for p in problems] == [
        "PylontechCellVoltageImbalance",
        "PylontechStateOfHealthLow",
    ], problems


@pytest.mark.prometheus
def test_promql_parse_check_catches_syntax_error(promtool, tmp_path):
    path = tmp_path / "bad.yml"
    group = {"name": "d", "rules": [{"record": "a:b:c", "expr": "sum by (bank (pylontech_up)"}]}
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    assert run_promtool(promtool, "check", "rules", path).returncode != 0


# --------------------------------------------------------------------------------------
# Grafana's schema and display code (node, tests/grafana_schema)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    return require_grafana_node()


def run_schema_check(node: str, dashboard: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard), encoding="utf-8")
    return subprocess.run(
        [node, SCHEMA_CHECK / "check.mjs", path],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCHEMA_CHECK,
    )


def grafana_display(node: str, requests: list[dict]) -> list[list[dict]]:
    """For each {config: fieldConfig.defaults, values: [...]}, each value as Grafana
    displays it: {text, color}."""
    result = subprocess.run(
        [node, SCHEMA_CHECK / "display.mjs"],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCHEMA_CHECK,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_dashboard_fits_grafanas_schema(node, tmp_path):
    result = run_schema_check(node, load_dashboard(), tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith(": ok"), (
        result.stdout + result.stderr
    )


#: Mistakes planted in a copy of the dashboard: where (panel id, or None for the
#: dashboard), what to do, and what the checker must say (its `where` and a word of tsc's
#: message).
PLANTED = [
    (3, lambda p: p.update(descripton=p.pop("description")), "descripton", "does not exist"),
    (4, lambda p: p["gridPos"].update(h="4"), "gridPos.h", "not assignable to type 'number'"),
    (5, lambda p: p["options"].update(colourMode="value"), "options.colourMode", "not exist"),
    (
        9,
        lambda p: p["fieldConfig"]["defaults"]["custom"].update(lineWidht=2),
        "fieldConfig.defaults.custom.lineWidht",
        "does not exist",
    ),
    (
        10,
        lambda p: p["options"]["legend"].update(placement="left"),
        "options.legend.placement",
        "not assignable",
    ),
    (13, lambda p: p["targets"][0].update(legendFromat="x"), "targets[0].legendFromat", "exist"),
    (
        31,  # in a collapsed row
        lambda p: p["fieldConfig"]["defaults"].update(decimal=2),
        "fieldConfig.defaults.decimal",
        "does not exist",
    ),
    (
        35,
        lambda p: p["fieldConfig"]["defaults"]["mappings"][0].update(type="values"),
        "fieldConfig.defaults.mappings[0]",
        "not assignable",
    ),
    (36, lambda p: p.update(type="piechart"), "(panel 36", "'piechart' does not exist"),
    (None, lambda d: d.update(graphTooltip="shared"), "graphTooltip", "not assignable"),
    (
        None,
        lambda d: variables(d)["bank"].update(multi="yes"),
        "templating.list[3].multi",
        "not assignable to type 'boolean",
    ),
]


def test_schema_check_reports_planted_mistakes(node, dashboard, tmp_path):
    broken = copy.deepcopy(dashboard)
    for panel_id, plant, _, _ in PLANTED:
        plant(broken if panel_id is None else _panel(broken, panel_id))
    result = run_schema_check(node, broken, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    problems = lines[:-1]
    assert lines[-1].endswith(f": {len(PLANTED)} schema problem(s)"), result.stdout
    for panel_id, _, where, said in PLANTED:
        panel = "" if panel_id is None else f"(panel {panel_id} "
        found = [p for p in problems if panel in p and where in p]
        assert found and said in found[0], f"{panel_id} {where}: not reported\n{result.stdout}"


def test_schema_check_refuses_unreadable_input(node, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{", encoding="utf-8")
    result = subprocess.run(
        [node, SCHEMA_CHECK / "check.mjs", path], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "broken.json" in result.stderr


#: The values issue 12 found rounded or padded, as Grafana must display them: panel id ->
#: [(value, text)].
DISPLAYED = {
    3: [(2499, "2.50 kW"), (-800, "-800 W"), (-12345, "-12.3 kW")],  # bank power
    5: [(-12.5, "-12.5 A"), (150.3, "150.3 A")],  # bank current
    6: [(1480, "1480 Ah"), (74.2, "74 Ah")],  # remaining capacity
    7: [(12345, "12.3 kWh"), (500, "500 Wh")],  # energy in
    16: [(74.0, "74.0 Ah"), (37.5, "37.5 Ah")],  # full capacity per module
    17: [(1234, "1234")],  # cycles
    20: [(0.007, "7 mV"), (0.05, "50 mV"), (0.123, "123 mV")],  # cell spread
    21: [(3.345, "3.345 V")],  # cells now
}


def test_values_are_displayed_as_written(node, dashboard):
    cases = [
        (panel_id, value, text) for panel_id, pairs in DISPLAYED.items() for value, text in pairs
    ]
    shown = grafana_display(
        node,
        [
            {"config": _panel(dashboard, panel_id)["fieldConfig"]["defaults"], "values": [value]}
            for panel_id, value, _ in cases
        ],
    )
    wrong = [
        f"{panel_name(_panel(dashboard, panel_id))}: {value} shown as {got[0]['text']!r}, "
        f"expected {text!r}"
        for (panel_id, value, text), got in zip(cases, shown)
        if got[0]["text"] != text
    ]
    assert not wrong, "\n".join(wrong)


def test_display_check_sees_the_rounding_of_issue_12(node):
    """Grafana's display code, as the dashboard had it configured: decimals 0 on a unit
    that scales (2499 W as "2 kW"), decimals 3 on a spread in volts ("7.000 mV")."""
    shown = grafana_display(
        node,
        [
            {"config": {"unit": "watt", "decimals": 0}, "values": [2499]},
            {"config": {"unit": "amph", "decimals": 0}, "values": [1480]},
            {"config": {"unit": "volt", "decimals": 3}, "values": [0.007]},
        ],
    )
    assert [s[0]["text"] for s in shown] == ["2 kW", "1 kAh", "7.000 mV"]


# --------------------------------------------------------------------------------------
# every panel copy at 2 banks x 16 modules, against a real Prometheus
# --------------------------------------------------------------------------------------

BIG_BANKS = 2
BIG_MODULES = 16
BIG_MODEL = "US3000C"  # the demo's (--simulate)
#: Reading 32 simulated modules takes about 3 s.
BIG_INTERVAL = 5
#: Shown (as a number) by Grafana no finer than this, by unit: the BMS's resolution.
RESOLUTION = {"volt": 0.001, "amp": 0.1, "celsius": 0.1, "amph": 0.001, "suffix:Ah": 0.001}
#: SI prefixes in displayed values, and the units whose displayed numbers are checked.
SI_PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "m": 1e-3, "µ": 1e-6}
CHECKED_UNITS = {"watt", "watth", "volt", "amp", "amph", "suffix:Ah", "celsius", "none"}

#: Dashboard targets without data on a healthy stack because the source does not carry
#: the datum: source -> {where -> why}. The sources: `rs485` (the exporter is the bus
#: master), `rs485-listen` (listen-only beside an inverter polling with the `full`
#: profile), `console` (the RS232 console). Each entry must be empty in every copy, and
#: every other target have data (HEALTHY_EMPTY aside).
SOURCE_GAPS: dict[str, dict[str, str]] = {
    "rs485": {},
    "rs485-listen": {
        "panel 37 'Request failure ratio (5m)' target A": (
            "nothing is sent: failures over requests is 0 / 0"
        ),
    },
    # No protection, status or cell voltage error flags (0x44 Status1..5) nor 0x92 on the
    # console: their rows repeat over status_bank and management_bank, which list no
    # console bank, so no copy of them is shown.
    "console": {},
}


@dataclass
class Series:
    labels: dict[str, str]
    name: str  # as Grafana names it (legendFormat)
    last: float | None  # the last number of the series


@dataclass
class CopyResult:
    copy: PanelCopy
    series: list[Series]
    queried: list[str]  # the `where` of each target (panel and refId, as HEALTHY_EMPTY)
    empty: dict[str, str]  # where -> expression (variables replaced) of a target without data


@dataclass
class BigStack:
    """Every panel copy of the dashboard for the stack read through ``source``."""

    source: str
    options: dict[str, list[str]]  # each variable's options, as Grafana finds them
    results: list[CopyResult]


def copy_values(dashboard: dict, panel_copy: PanelCopy) -> dict[str, str]:
    """The variables as Grafana sets them in this copy: All, but the copy's own."""
    values = all_values(dashboard)
    values.update({k: grafana_regex_value([v]) for k, v in panel_copy.scope.items()})
    return values


def run_copy(prometheus: Prometheus, dashboard: dict, panel_copy: PanelCopy) -> CopyResult:
    builtins = grafana_builtins(BIG_INTERVAL)
    values = copy_values(dashboard, panel_copy)
    series, queried, empty = [], [], {}
    for target in panel_copy.panel.get("targets", []):
        where = f"{panel_name(panel_copy.panel)} target {target['refId']}"
        queried.append(where)
        expr = substitute(target["expr"], values, builtins)
        end = time.time()
        if target.get("instant"):
            result = prometheus.query(expr)
        else:
            result = prometheus.query_range(expr, end - 60, end, BIG_INTERVAL)
        if not has_data(result):
            empty[where] = expr
        for found in result:
            samples = found.get("values") or [found["value"]]
            numbers = [float(v) for _, v in samples if not math.isnan(float(v))]
            labels = found["metric"]
            name = render_legend(target.get("legendFormat", ""), labels)
            series.append(Series(labels, name, numbers[-1] if numbers else None))
    return CopyResult(panel_copy, series, queried, empty)


def console_banks(cleanup: contextlib.ExitStack, tmp: Path) -> list[str]:
    """The exporter's arguments for BIG_BANKS console banks: a config file with a bank
    of `protocol: console` on each of BIG_BANKS virtual consoles (TCP, as a serial
    bridge), each console's stack BIG_MODULES batteries."""
    banks = []
    for bank in range(BIG_BANKS):
        stack = BatteryStack(modules=BIG_MODULES, groups=[0], model=BIG_MODEL, seed=bank)
        stack.follow_clock()
        server = cleanup.enter_context(TcpSimulator(ConsoleResponder(stack)))
        banks.append({"name": str(bank), "port": server.url, "protocol": "console"})
    config = tmp / "console.yml"
    config.write_text(yaml.safe_dump({"banks": banks}), encoding="utf-8")
    return ["--config.file", str(config)]


def exporter_arguments(source: str, cleanup: contextlib.ExitStack, tmp: Path) -> list[str]:
    """How a user reads BIG_BANKS x BIG_MODULES modules through ``source``: the demo's
    virtual stack with the exporter as bus master, the same beside a virtual inverter
    (its default poll profile, `full`), or console ports."""
    if source == "console":
        return console_banks(cleanup, tmp)
    groups = [arg for group in range(BIG_BANKS) for arg in ("--group", str(group))]
    listen = ["--serial.listen-only", "--simulate.inverter", "full"]
    return [
        "--simulate",
        "--simulate.modules",
        str(BIG_MODULES),
        *(listen if source == "rs485-listen" else []),
        *groups,
    ]


#: What says that every panel can have data, per bank: the failure ratio (rates need two
#: scrapes that read the bus, and the ratio an evaluation after them; NaN until then);
#: where nothing is sent, the state of charge recorded from three scrapes.
READY = {
    "rs485": "bank:pylontech_serial_request_failures:ratio_rate5m >= 0",
    "rs485-listen": (
        "count_over_time(bank:pylontech_state_of_charge_ratio:capacity_weighted[1m]) >= 3"
    ),
    "console": "bank:pylontech_serial_request_failures:ratio_rate5m >= 0",
}


@dataclass
class Started:
    """A source's exporter and the Prometheus scraping it, still starting."""

    source: str
    exporter: Exporter
    prometheus: Prometheus


def start_source(source: str, cleanup: contextlib.ExitStack, tmp: Path) -> Started:
    """The exporter reading BIG_BANKS x BIG_MODULES virtual modules through ``source``,
    and a real Prometheus with the recording rules scraping it; not waiting for data."""
    exporter = cleanup.enter_context(
        Exporter(*exporter_arguments(source, cleanup, tmp), "--cache.ttl", "0", ready=False)
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": f"{BIG_INTERVAL}s",
                    "scrape_timeout": f"{BIG_INTERVAL}s",
                    "evaluation_interval": f"{BIG_INTERVAL}s",
                },
                "rule_files": [str(RECORDING_RULES)],
                "scrape_configs": [
                    {"job_name": "pylontech", "static_configs": [{"targets": [exporter.address]}]}
                ],
            }
        ),
        encoding="utf-8",
    )
    prometheus = start_prometheus(config, tmp)
    cleanup.callback(prometheus.process.stop)
    return Started(source, exporter, prometheus)


def every_copy(started: Started, dashboard: dict) -> BigStack:
    """Once the source has data for both banks, every panel copy of ``dashboard`` with
    the variables' options as Grafana finds them."""
    exporter, prometheus, source = started.exporter, started.prometheus, started.source
    # Listening, the modules are known once the inverter's slow poll cycle (0x92, 0x93,
    # 0x96 and 0x47 of each of the 32 modules) has gone round: 30 s and more.
    exporter.wait_ready(timeout=120)
    wait_until(
        lambda: len(prometheus.query(READY[source])) == BIG_BANKS,
        f"{source}: data for both banks: {READY[source]}",
        60,
        interval=1,
        alive=lambda: None if exporter.running() else exporter.describe(),
    )

    def label_values(selector: str, label: str) -> list[str]:
        return prometheus.api(f"label/{label}/values", **{"match[]": selector})

    options = variable_options(dashboard, all_values(dashboard), label_values)
    results = [run_copy(prometheus, dashboard, c) for c in panel_copies(dashboard, options)]
    return BigStack(source, options, results)


@pytest.fixture(scope="module")
def big_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BigStack]]:
    """Every source (`rs485`, `rs485-listen`, `console`) with its own exporter and
    Prometheus, all started at once: their start is mostly waiting (for the listening
    exporter, on the inverter's poll cycle), so together they take about as long as the
    slowest alone."""
    require_binary("promtool")
    dashboard = load_dashboard()
    with contextlib.ExitStack() as cleanup:
        started = [
            start_source(source, cleanup, tmp_path_factory.mktemp(f"dashboard_2x16_{source}"))
            for source in SOURCE_GAPS
        ]
        yield {s.source: every_copy(s, dashboard) for s in started}


@pytest.fixture(params=list(SOURCE_GAPS))
def big_stack(request: pytest.FixtureRequest, big_stacks: dict[str, BigStack]) -> BigStack:
    """Every panel copy for the stack read through one source in turn."""
    return big_stacks[request.param]


@pytest.mark.prometheus
def test_the_variables_find_the_stack(big_stack: BigStack):
    """Both banks and their 16 modules; console banks only where the source is the
    console, banks with 0x44 status and 0x92 data only where it is RS485: not one copy
    of the console rows on RS485, nor of the status and management rows on the console,
    but Grafana's placeholder of each, a collapsed row."""
    assert big_stack.options == {
        **expected_options(big_stack.source),
        "instance": big_stack.options["instance"][:1],
    }
    console = big_stack.source == "console"
    for variable, per_bank in DATA_ROW_PANELS_PER_BANK.items():
        has_data = (variable == "console_bank") == console
        copies = [
            r.copy.name
            for r in big_stack.results
            if variable in r.copy.scope and not r.copy.placeholder
        ]
        assert len(copies) == (per_bank * BIG_BANKS if has_data else 0), (variable, copies)
    problems = check_placeholders([r.copy for r in big_stack.results])
    assert not problems, "\n".join(problems)


def expected_options(source: str) -> dict[str, list[str]]:
    """The variables' options for BIG_BANKS x BIG_MODULES read through ``source`` (one
    instance)."""
    banks = [str(b) for b in range(BIG_BANKS)]
    console = source == "console"
    return {
        "job": ["pylontech"],
        "instance": ["localhost"],
        "bank": banks,
        "module": [str(m) for m in range(1, BIG_MODULES + 1)],
        "console_bank": banks if console else [],
        "status_bank": [] if console else banks,
        "management_bank": [] if console else banks,
    }


@pytest.mark.parametrize("source", ["rs485", "console"])
def test_repeats_without_values_are_collapsed_rows(dashboard, source):
    problems = check_placeholders(panel_copies(dashboard, expected_options(source)))
    assert not problems, "\n".join(problems)


def test_check_placeholders_catches_empty_panels_on_show(dashboard):
    """The management row left open, and the status flags repeated per status_bank in
    the open alarms row: on a console bank, Grafana draws each of them once, empty."""
    broken = copy.deepcopy(dashboard)
    next(p for p in broken["panels"] if p["id"] == 30)["collapsed"] = False
    status_row = next(p for p in broken["panels"] if p["id"] == 57)
    flags = next(p for p in status_row["panels"] if p["id"] == 29)
    status_row["panels"].remove(flags)
    broken["panels"].insert(broken["panels"].index(status_row), {**flags, "repeat": "status_bank"})
    problems = check_placeholders(panel_copies(broken, expected_options("console")))
    assert sorted(int(p.split()[1]) for p in problems) == [29, 31, 32, 33, 41], problems


#: Copies in the rows of a bank that has the data, per variable listing those banks: the
#: console rows (9 panels of the bank, 3 of each module), the 0x44 protections and status
#: flags, the 0x92 management panels.
DATA_ROW_PANELS_PER_BANK = {
    "console_bank": 9 + 3 * BIG_MODULES,
    "status_bank": 2,
    "management_bank": 4,
}
#: Panels repeated per module inside a row per bank: the module rows, and the console's.
PANELS_PER_MODULE = {"rs485": 3, "rs485-listen": 3, "console": 3 + 3}


@pytest.mark.prometheus
def test_every_panel_copy_has_data_at_2x16(big_stack: BigStack):
    """Every query of every copy has data, but those that show exceptions only
    (HEALTHY_EMPTY) and those of data the source does not carry (SOURCE_GAPS): those are
    empty in every copy, or their entry is stale."""
    # Placeholders (bank=~"", no data) are test_the_variables_find_the_stack's.
    results = [r for r in big_stack.results if not r.copy.placeholder]
    per_module = [r for r in results if "module" in r.copy.scope]
    # Each panel per module for each of the 32 modules, within the copy of its bank's row.
    assert len(per_module) == PANELS_PER_MODULE[big_stack.source] * BIG_BANKS * BIG_MODULES
    assert all(set(r.copy.scope) & {"bank", "console_bank"} for r in per_module)
    gaps = SOURCE_GAPS[big_stack.source]
    expected_empty = {**HEALTHY_EMPTY, **gaps}
    problems = [
        f"{result.copy.name} target {where.rsplit(' ', 1)[1]}: no data\n    {expr}"
        for result in results
        for where, expr in result.empty.items()
        if where not in expected_empty
    ]
    with_data = {w for r in results for w in r.queried if w not in r.empty}
    problems += [
        f"{where}: has data, but is listed as empty ({expected_empty[where]})"
        for where in sorted(with_data & set(expected_empty))
    ]
    known = {t.where for t in dashboard_targets(load_dashboard())}
    problems += [f"SOURCE_GAPS[{big_stack.source!r}]: no {w}" for w in sorted(set(gaps) - known)]
    assert not problems, "\n".join(problems)


@pytest.mark.prometheus
def test_no_panel_copy_mixes_banks_or_modules(big_stack: BigStack):
    labels = {v["name"]: variable_label(v) for v in query_variables(load_dashboard())}
    problems = []
    for result in big_stack.results:
        for variable, value in result.copy.scope.items():
            label = labels[variable]  # console_bank: the label `bank`
            other = {s.labels.get(label) for s in result.series} - {value}
            if other:
                problems.append(f"{result.copy.name}: series of {label} {sorted(other, key=str)}")
        # Module numbers restart in every bank: a copy for "module 1" is one bank's.
        banks = {s.labels.get("bank") for s in result.series}
        if "module" in result.copy.scope and len(banks) > 1:
            problems.append(f"{result.copy.name}: modules of banks {sorted(banks, key=str)}")
        names = [s.name for s in result.series]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"{result.copy.name}: several series named {twice}")
    assert not problems, "\n".join(problems)


def readability_problems(result: CopyResult) -> list[str]:
    panel, count = result.copy.panel, len(result.series)
    kind, h = panel["type"], panel["gridPos"]["h"]
    if not count:  # nothing to draw (an empty query is test_every_panel_copy_has_data's)
        return []
    if kind == "timeseries" and count > MAX_LINES:
        return [f"{result.copy.name}: {count} lines, more than {MAX_LINES}"]
    if kind == "state-timeline":
        per_page = panel["options"].get("perPage") or count  # no pager without it
        room = height_px(h) - STATE_TIMELINE_CHROME_PX - (PAGER_PX if count > per_page else 0)
        if count > per_page or room / count < ROW_PX:
            return [f"{result.copy.name}: {count} rows in {room} px (a page holds {per_page})"]
    if kind == "bargauge":
        if panel["options"].get("orientation") == "horizontal":
            size, least = (height_px(h) - BAR_GAUGE_CHROME_PX) / count, MIN_BAR_HEIGHT_PX
        else:
            size, least = (result.copy.width * COLUMN_PX - 16) / count, MIN_BAR_WIDTH_PX
        if size < least:
            return [f"{result.copy.name}: {count} bars of {size:.0f} px, fewer than {least}"]
    return []


@pytest.mark.prometheus
def test_panels_are_readable_at_2x16(big_stack: BigStack):
    problems = [p for result in big_stack.results for p in readability_problems(result)]
    assert not problems, "\n".join(problems)


def displayed_number(text: str) -> tuple[float, float] | None:
    """(value, step) of a displayed number such as "2.50 kW" (step: its last digit)."""
    match = re.fullmatch(r"(-?\d+)(?:\.(\d+))?\s*([kMmµ]?)(\S*)", text.strip())
    if not match:
        return None
    whole, decimals, prefix, unit = match.groups()
    if prefix and not unit:  # "5 m" is not a prefix
        unit, prefix = prefix, ""
    scale = SI_PREFIX[prefix] * (0.01 if unit == "%" else 1)
    number = float(f"{whole}.{decimals or 0}")
    return number * scale, 10.0 ** -len(decimals or "") * scale


@pytest.mark.prometheus
def test_values_keep_their_precision_at_2x16(big_stack: BigStack, node):
    """Every number the stack shows, formatted by Grafana with its panel's settings: off
    by at most 1 % (not 2499 W as "2 kW"), no decimal finer than the BMS measures (not
    7 mV as "7.000 mV")."""
    checked = [
        (r, s)
        for r in big_stack.results
        if r.copy.panel["type"] in ("stat", "bargauge", "timeseries")
        and r.copy.panel["fieldConfig"]["defaults"]["unit"] in CHECKED_UNITS
        for s in r.series
        if s.last is not None
    ]
    shown = grafana_display(
        node,
        [
            {"config": r.copy.panel["fieldConfig"]["defaults"], "values": [s.last]}
            for r, s in checked
        ],
    )
    problems = []
    for (result, series), [got] in zip(checked, shown):
        unit = result.copy.panel["fieldConfig"]["defaults"]["unit"]
        parsed = displayed_number(got["text"])
        where = f"{result.copy.name} {series.name}: {series.last:g} shown as {got['text']!r}"
        if parsed is None:
            problems.append(f"{where}: not a number")
            continue
        number, step = parsed
        if abs(number - series.last) > max(0.01 * abs(series.last), step / 2 + 1e-12):
            problems.append(f"{where}: off by more than 1 %")
        if "." in got["text"] and step < RESOLUTION.get(unit, 0) * (1 - 1e-9):
            problems.append(f"{where}: finer than the {RESOLUTION[unit]:g} the BMS measures")
    assert len(checked) > 500, len(checked)
    assert not problems, "\n".join(problems)
