"""Checks of the Prometheus rules, their promtool unit tests and the scrape configs.

The promtool tests need the `promtool` binary (Debian package `prometheus`). They skip
when it is missing, unless PYLONTECH_REQUIRE_PROMETHEUS=1, in which case they fail.

The structural checks (alert metadata, every alert unit-tested, every metric name from
the contract) are plain Python and always run. Each check is a function returning a list
of problems, and each has a negative test that feeds it a deliberately broken copy, so a
check that can no longer fail is noticed.
"""

from __future__ import annotations

import copy
import re
import shutil

import pytest
import yaml
from support import REPO
from support.rules import (
    PROMETHEUS_DIR,
    UNIT_TEST_DIR,
    assert_promtool_ok,
    contract_metric_names,
    iter_rules,
    known_metric_names,
    load_groups,
    load_unit_tests,
    metric_names_in_promql,
    require_binary,
    rule_files,
    run_promtool,
    unit_test_files,
)

# Scrape configs and how promtool checks each one.
SERVER_CONFIGS = [PROMETHEUS_DIR / "prometheus.yml"]
AGENT_CONFIGS = [PROMETHEUS_DIR / "prometheus-agent.yml"]
# The compose demo's config names rule files by their path inside the container.
SYNTAX_ONLY_CONFIGS = [REPO / "deploy" / "docker" / "prometheus.yml"]
SEVERITIES = frozenset({"info", "warning", "critical"})


# --------------------------------------------------------------------------------------
# checks: each returns a list of problems (empty = fine)
# --------------------------------------------------------------------------------------


def check_alert_metadata(groups: list[dict]) -> list[str]:
    problems = []
    for rule in iter_rules(groups):
        if "alert" not in rule:
            continue
        name = rule["alert"]
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{name}: severity label is {severity!r}, not one of {SEVERITIES}")
        annotations = rule.get("annotations") or {}
        for key in ("summary", "description"):
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: missing or empty annotation {key!r}")
    return problems


def check_alerts_tested(groups: list[dict], unit_tests: list[dict]) -> list[str]:
    """Every alert has a unit test where it fires and one where it stays silent."""
    fires: set[str] = set()
    silent: set[str] = set()
    for doc in unit_tests:
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    problems = []
    for rule in iter_rules(groups):
        name = rule.get("alert")
        if name is None:
            continue
        if name not in fires:
            problems.append(f"{name}: no promtool unit test expects it to fire")
        if name not in silent:
            problems.append(f"{name}: no promtool unit test expects it to stay silent")
    return problems


def check_rule_metric_names(groups: list[dict], known: set[str]) -> list[str]:
    problems = []
    for rule in iter_rules(groups):
        name = rule.get("alert") or rule.get("record")
        for metric in sorted(metric_names_in_promql(rule["expr"]) - known):
            problems.append(f"{name}: unknown metric {metric!r} (not in docs/metrics.md)")
    return problems


def check_recording_rule_names(groups: list[dict]) -> list[str]:
    """Recording rules are named level:metric:operation."""
    return [
        f"{rule['record']}: not of the form level:metric:operation"
        for rule in iter_rules(groups)
        if "record" in rule and not re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"])
    ]


# --------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


@pytest.mark.prometheus
def test_promtool_check_rules(promtool):
    files = rule_files()
    assert files, f"no rule files under {PROMETHEUS_DIR}"
    assert_promtool_ok(run_promtool(promtool, "check", "rules", "--lint-fatal", *files))


@pytest.mark.prometheus
def test_promtool_unit_tests(promtool):
    files = unit_test_files()
    assert files, f"no promtool unit tests under {UNIT_TEST_DIR}"
    assert_promtool_ok(run_promtool(promtool, "test", "rules", *files))


@pytest.mark.prometheus
@pytest.mark.parametrize("config", SERVER_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_promtool_check_config(promtool, config):
    assert_promtool_ok(run_promtool(promtool, "check", "config", "--lint-fatal", config))


@pytest.mark.prometheus
@pytest.mark.parametrize("config", AGENT_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_promtool_check_agent_config(promtool, config):
    assert_promtool_ok(run_promtool(promtool, "check", "config", "--agent", config))


@pytest.mark.prometheus
@pytest.mark.parametrize("config", SYNTAX_ONLY_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_promtool_check_config_syntax(promtool, config):
    assert_promtool_ok(run_promtool(promtool, "check", "config", "--syntax-only", config))


@pytest.mark.prometheus
def test_promtool_detects_broken_rules_and_tests(promtool, tmp_path):
    """The promtool wrappers fail on a broken rule file and on a wrong expectation."""
    bad_rules = tmp_path / "bad.rules.yml"
    bad_rules.write_text(
        "groups:\n  - name: bad\n    rules:\n"
        "      - alert: Broken\n        expr: sum(pylontech_up\n",
        encoding="utf-8",
    )
    assert run_promtool(promtool, "check", "rules", bad_rules).returncode != 0

    # The real rules, but a unit test expecting the bank-down alert while the bank is up.
    for path in rule_files():
        shutil.copy(path, tmp_path / path.name)
    wrong = {
        "rule_files": [path.name for path in rule_files()],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'pylontech_up{job="pylontech", bank="0"}', "values": "1x10"}
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "PylontechBankDown",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "bank": "0"}}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "wrong_test.yml").write_text(yaml.safe_dump(wrong), encoding="utf-8")
    result = run_promtool(promtool, "test", "rules", "wrong_test.yml", cwd=tmp_path)
    assert result.returncode != 0, result.stdout


# --------------------------------------------------------------------------------------
# structural checks of the rule files (no promtool needed)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def groups() -> list[dict]:
    files = rule_files()
    assert files, f"no rule files under {PROMETHEUS_DIR}"
    return load_groups(files)


@pytest.fixture(scope="module")
def unit_tests() -> list[dict]:
    return load_unit_tests(unit_test_files())


def test_rule_files_found(groups):
    assert any("alert" in rule for rule in iter_rules(groups))
    assert any("record" in rule for rule in iter_rules(groups))


def test_alerts_have_severity_summary_description(groups):
    problems = check_alert_metadata(groups)
    assert not problems, "\n".join(problems)


def test_every_alert_has_unit_tests(groups, unit_tests):
    problems = check_alerts_tested(groups, unit_tests)
    assert not problems, "\n".join(problems)


def test_alert_names_unique(groups):
    names = [rule["alert"] for rule in iter_rules(groups) if "alert" in rule]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_rules_use_contract_metric_names(groups):
    problems = check_rule_metric_names(groups, known_metric_names())
    assert not problems, "\n".join(problems)


def test_recording_rule_names(groups):
    problems = check_recording_rule_names(groups)
    assert not problems, "\n".join(problems)


def test_unit_tests_load_all_rule_files(unit_tests):
    """Every unit-test file loads the recording and the alert rules from deploy/."""
    expected = {path.resolve() for path in rule_files()}
    for path, doc in zip(unit_test_files(), unit_tests):
        loaded = {(path.parent / name).resolve() for name in doc.get("rule_files", [])}
        assert loaded == expected, f"{path.name}: rule_files {sorted(map(str, loaded))}"


# --------------------------------------------------------------------------------------
# negative tests: every check must be able to fail
# --------------------------------------------------------------------------------------


def test_contract_parser_reads_the_tables():
    names = contract_metric_names()
    assert {"pylontech_up", "pylontech_cell_voltage_volts"} <= names
    assert "pylontech_" not in names
    assert contract_metric_names("| `pylontech_foo_volts` | gauge |\nsee `pylontech_bar`") == {
        "pylontech_foo_volts"
    }


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('pylontech_up{job=~"$job"} == 0', {"pylontech_up"}),
        (
            "sum by (bank) (rate(pylontech_serial_requests_total[5m]))",
            {"pylontech_serial_requests_total"},
        ),
        (
            "a:b:c > on (job, bank) group_left () min by (bank) (x_total offset 5m)",
            {"a:b:c", "x_total"},
        ),
        ('absent(up{job=~".*pylontech.*"}) or vector(0) * 1e3', {"up"}),
        ("avg_over_time(m[$__range:]) * $__range_s / 3600", {"m"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
    ],
)
def test_metric_names_in_promql(expr, expected):
    assert metric_names_in_promql(expr) == expected


def test_check_alert_metadata_catches_missing_fields(groups):
    broken = copy.deepcopy(groups)
    alerts = [rule for rule in iter_rules(broken) if "alert" in rule]
    del alerts[0]["labels"]["severity"]
    alerts[1]["annotations"]["summary"] = " "
    del alerts[2]["annotations"]["description"]
    problems = check_alert_metadata(broken)
    assert len(problems) == 3, problems


def test_check_alerts_tested_catches_untested_alert(groups, unit_tests):
    broken = copy.deepcopy(groups)
    broken[0]["rules"].append(
        {"alert": "PylontechNewUntested", "expr": "pylontech_up == 0", "labels": {}}
    )
    problems = check_alerts_tested(broken, unit_tests)
    assert problems == [
        "PylontechNewUntested: no promtool unit test expects it to fire",
        "PylontechNewUntested: no promtool unit test expects it to stay silent",
    ]


def test_check_alerts_tested_needs_a_firing_case(groups, unit_tests):
    only_silent = copy.deepcopy(unit_tests)
    for doc in only_silent:
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                case["exp_alerts"] = []
    problems = check_alerts_tested(groups, only_silent)
    assert any(p == "PylontechBankDown: no promtool unit test expects it to fire" for p in problems)


def test_check_rule_metric_names_catches_typo(groups):
    broken = copy.deepcopy(groups)
    rule = next(rule for rule in iter_rules(broken) if rule.get("alert") == "PylontechBankDown")
    rule["expr"] = "pylontech_bank_up == 0"
    problems = check_rule_metric_names(broken, known_metric_names())
    assert problems == [
        "PylontechBankDown: unknown metric 'pylontech_bank_up' (not in docs/metrics.md)"
    ]


def test_check_recording_rule_names_catches_bad_name(groups):
    broken = copy.deepcopy(groups)
    rule = next(rule for rule in iter_rules(broken) if "record" in rule)
    rule["record"] = "pylontech_cell_spread"
    assert check_recording_rule_names(broken) == [
        "pylontech_cell_spread: not of the form level:metric:operation"
    ]
