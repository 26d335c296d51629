"""Structural checks of the Grafana dashboard grafana/pylontech.json.

The dashboard must work both imported by hand and provisioned from file, against any
Prometheus data source, and must only query metrics the exporter exposes
(docs/metrics.md) or the recording rules in deploy/prometheus. Each check is a function
returning a list of problems; each has a negative test on a deliberately broken copy.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from support import REPO
from support.dashboard import (
    NON_QUERY_PANELS,
    all_panels,
    load_dashboard,
    panel_name,
    parse_label_values,
    promql_exprs,
    query_panels,
    variable_query,
    variables,
)
from support.rules import (
    assert_promtool_ok,
    iter_rules,
    known_metric_names,
    load_groups,
    metric_names_in_promql,
    recording_rule_names,
    require_binary,
    rule_files,
    run_promtool,
)

PROVISIONING = REPO / "grafana" / "provisioning"
DASHBOARD_UID = "pylontech-overview"
DATASOURCE_REFS = frozenset({"$datasource", "${datasource}"})
# Grafana's built-in variables, replaced by plain values before promtool parses an expr.
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
    """Panel options that Grafana only reads at the panel's top level."""
    problems = []
    for panel in all_panels(dashboard):
        misplaced = {"repeat", "repeatDirection"} & set(
            panel.get("fieldConfig", {}).get("defaults", {})
        )
        if misplaced:
            problems.append(f"{panel_name(panel)}: {sorted(misplaced)} inside fieldConfig")
        if "$module" in panel.get("title", "") and panel.get("repeat") != "module":
            problems.append(f"{panel_name(panel)}: titled per module but does not repeat")
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
        if name in ("bank", "module") and not (
            variable.get("multi") and variable.get("includeAll")
        ):
            problems.append(f"variable {name}: must be multi-value with an All option")
    return problems


def check_metric_names(dashboard: dict, known: set[str]) -> list[str]:
    problems = []
    for where, expr in promql_exprs(dashboard):
        for metric in sorted(metric_names_in_promql(expr) - known):
            problems.append(f"{where}: unknown metric {metric!r}")
    return problems


def check_alert_thresholds_drawn(dashboard: dict, groups: list[dict]) -> list[str]:
    """An alert `<recording rule> > N` has N drawn as a threshold line on a panel of it."""
    recorded = recording_rule_names(groups)
    problems = []
    for rule in iter_rules(groups):
        if "alert" not in rule:
            continue
        match = re.fullmatch(r"\s*([\w:]+)\s*[<>]=?\s*([0-9.]+)\s*", rule["expr"])
        if not match or match.group(1) not in recorded:
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


def test_repeats_are_panel_options(dashboard):
    assert check_repeats(dashboard) == []


def test_check_repeats_catches_misplaced_repeat(dashboard):
    broken = copy.deepcopy(dashboard)
    panel = next(p for p in all_panels(broken) if p.get("repeat"))
    panel["fieldConfig"]["defaults"]["repeat"] = panel.pop("repeat")
    assert len(check_repeats(broken)) == 2


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
    broken["templating"]["list"] = [v for v in broken["templating"]["list"] if v["name"] != "job"]
    assert len(check_variables(broken)) == 3


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
    problems = check_alert_thresholds_drawn(dashboard, broken)
    assert len(problems) == 1 and "PylontechCellVoltageImbalance" in problems[0], problems


@pytest.mark.prometheus
def test_promql_parse_check_catches_syntax_error(promtool, tmp_path):
    path = tmp_path / "bad.yml"
    group = {"name": "d", "rules": [{"record": "a:b:c", "expr": "sum by (bank (pylontech_up)"}]}
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    assert run_promtool(promtool, "check", "rules", path).returncode != 0
