"""Checks of the Prometheus rules, their promtool unit tests and the scrape configs.

The promtool tests need the `promtool` binary (Debian package `prometheus`). They skip
when it is missing, unless PYLONTECH_REQUIRE_PROMETHEUS=1, in which case they fail.

The structural checks (alert metadata and style, runbook links, every alert unit-tested,
every rule covered by a two-site test, aggregation that keeps target labels, the job
selector, every metric name from the contract) are plain Python and always run. Each
check is a function returning a list of problems, and each has a negative test that feeds
it a deliberately broken copy, so a check that can no longer fail is noticed.

Two sites: tests/rules/sites_test.yml models two agents with the shipped
prometheus-agent.yml (same job, same target, told apart by the external label `site`,
plus an extra target label) feeding one store. `check_two_site_coverage` demands a case
there for every rule, and `test_merging_the_sites_in_any_rule_fails_its_two_site_test`
merges the sites in each rule in turn and demands that the rule's own case fails.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import REPO
from support.rules import (
    JOB_SELECTOR,
    PROMETHEUS_DIR,
    RUNBOOK_BASE_URL,
    UNIT_TEST_DIR,
    AgentTarget,
    agent_target,
    assert_promtool_ok,
    contract_label_names,
    contract_metric_names,
    github_anchors,
    iter_rules,
    known_metric_names,
    load_groups,
    load_unit_tests,
    metric_names_in_promql,
    parse_series,
    require_binary,
    rule_files,
    run_promtool,
    runbook_anchors,
    unit_test_files,
    write_rule_files,
)

# Scrape configs and how promtool checks each one.
SERVER_CONFIGS = [PROMETHEUS_DIR / "prometheus.yml"]
AGENT_CONFIGS = [PROMETHEUS_DIR / "prometheus-agent.yml"]
# The compose demo's config names rule files by their path inside the container.
SYNTAX_ONLY_CONFIGS = [REPO / "deploy" / "docker" / "prometheus.yml"]
SEVERITIES = frozenset({"info", "warning", "critical"})
SITES_TEST = UNIT_TEST_DIR / "sites_test.yml"
#: Label names that identify the target rather than a reading.
SCRAPE_LABELS = frozenset({"job", "instance"})


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


def check_annotation_style(groups: list[dict]) -> list[str]:
    """The monitoring-mixins style: the summary is one static sentence (the same for
    every alert of a notification), the description has the details templated in."""
    problems = []
    for rule in iter_rules(groups):
        if "alert" not in rule:
            continue
        name, annotations = rule["alert"], rule.get("annotations") or {}
        summary = str(annotations.get("summary", ""))
        if "{{" in summary:
            problems.append(f"{name}: summary is templated: {summary!r}")
        if not re.fullmatch(r"[A-Z].*\.", summary):
            problems.append(f"{name}: summary is not a sentence (capital ... period): {summary!r}")
        if "{{" not in str(annotations.get("description", "")):
            problems.append(f"{name}: description has nothing templated in")
    return problems


def check_runbook_urls(groups: list[dict], anchors: set[str]) -> list[str]:
    """Every alert links to its own section of docs/runbooks.md (anchor = GitHub's slug of
    the alert's name as the heading), and that section exists; no section is left of an
    alert that is gone."""
    problems = []
    alerts = {rule["alert"] for rule in iter_rules(groups) if "alert" in rule}
    for anchor in sorted(anchors - {github_anchor(name) for name in alerts}):
        if anchor.startswith("pylontech"):
            problems.append(f"runbook section #{anchor}: no such alert")
    for rule in iter_rules(groups):
        if "alert" not in rule:
            continue
        name = rule["alert"]
        url = str((rule.get("annotations") or {}).get("runbook_url", ""))
        base, _, anchor = url.partition("#")
        if not url:
            problems.append(f"{name}: no runbook_url")
        elif base != RUNBOOK_BASE_URL:
            problems.append(f"{name}: runbook_url {url!r} is not {RUNBOOK_BASE_URL}#...")
        elif anchor not in anchors:
            problems.append(f"{name}: runbook_url anchor #{anchor} is no heading of the runbooks")
        elif anchor != github_anchor(name):
            problems.append(f"{name}: runbook_url points to #{anchor}, not its own section")
    return problems


def github_anchor(heading: str) -> str:
    (anchor,) = github_anchors(f"## {heading}")
    return anchor


def check_keeps_target_labels(groups: list[dict]) -> list[str]:
    """Aggregations say what they drop (`without`), never what they keep (`by`), and
    vector matching names what to ignore (`ignoring`), not what to match on (`on` with
    labels): a label the rule does not know of (a target label such as `site`) then
    survives instead of merging two targets into one."""
    problems = []
    for rule in iter_rules(groups):
        name = rule.get("alert") or rule.get("record")
        expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', rule["expr"])
        for match in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
            problems.append(f"{name}: aggregates by ({match.group(1).strip()}), use without (...)")
        for match in re.finditer(r"\bon\s*\(([^)]*)\)", expr):
            if match.group(1).strip():
                problems.append(
                    f"{name}: matches on ({match.group(1).strip()}), use ignoring (...)"
                )
    return problems


def site_split(test: dict, agent: AgentTarget) -> tuple[str, frozenset[str]] | None:
    """For a promtool test group that models two sites scraped with the shipped agent
    configuration (input series of the agent's job and target that differ in one of its
    external labels, with a further target label besides): that label and the group's
    target labels (every input label that is no exporter label). Else None."""
    series = [parse_series(s["series"])[1] for s in test.get("input_series", [])]
    targets = frozenset(label for labels in series for label in labels) - contract_label_names()
    ours = [s for s in series if s.get("job") == agent.job and s.get("instance") == agent.instance]
    for label in sorted(agent.external_labels):
        sites = {s[label] for s in ours if label in s}
        if len(sites) >= 2 and targets - SCRAPE_LABELS - {label}:
            return label, targets
    return None


def spans_sites(expected: list[dict[str, str]], site_label: str, targets: frozenset[str]) -> bool:
    """Expected series of two sites or more, each with every target label."""
    return all(targets <= set(labels) for labels in expected) and (
        len({labels.get(site_label) for labels in expected}) >= 2
    )


@dataclass
class TwoSiteCase:
    """A promtool case that expects a separate result per site."""

    doc: dict  # the unit-test file
    test: dict  # its test group
    kind: str  # "promql_expr_test" or "alert_rule_test"
    case: dict
    site_label: str
    targets: frozenset[str]


def two_site_cases(unit_tests: list[dict], agent: AgentTarget) -> dict[str, list[TwoSiteCase]]:
    """Rule name -> the two-site cases that check it."""
    cases: dict[str, list[TwoSiteCase]] = defaultdict(list)
    for doc in unit_tests:
        for test in doc.get("tests", []):
            split = site_split(test, agent)
            if split is None:
                continue
            for case in test.get("promql_expr_test", []):
                samples = [parse_series(s["labels"])[1] for s in case.get("exp_samples", [])]
                if spans_sites(samples, *split):
                    for name in metric_names_in_promql(case["expr"]):
                        cases[name].append(TwoSiteCase(doc, test, "promql_expr_test", case, *split))
            for case in test.get("alert_rule_test", []):
                alerts = [a.get("exp_labels") or {} for a in case.get("exp_alerts", [])]
                if spans_sites(alerts, *split):
                    name = case["alertname"]
                    cases[name].append(TwoSiteCase(doc, test, "alert_rule_test", case, *split))
    return cases


def check_two_site_coverage(
    groups: list[dict], unit_tests: list[dict], agent: AgentTarget
) -> list[str]:
    """Every recording rule has a two-site expression test and every alert a two-site
    alert test that expect a separate result per site with every target label."""
    cases = two_site_cases(unit_tests, agent)
    return [
        f"{name}: no two-site promtool test expects a result per site with every target label"
        for rule in iter_rules(groups)
        if (name := rule.get("alert") or rule.get("record")) not in cases
    ]


_JOB_MATCHER = re.compile(r"\bjob\s*(?:=~|!~|!=|=)")
_UP_WITHOUT_SELECTOR = re.compile(r"\bup\b(?!" + re.escape("{" + JOB_SELECTOR + "}") + ")")


def check_job_selector(texts: dict[str, str]) -> list[str]:
    """In the rule files (name -> text, comments included) every job matcher is exactly
    JOB_SELECTOR, so a textual replacement changes all of them; the rules reading
    Prometheus' `up` select the job with it, and no other rule does."""
    problems = []
    for name, text in texts.items():
        for match in _JOB_MATCHER.finditer(text):
            if not text.startswith(JOB_SELECTOR, match.start()):
                line = text.count("\n", 0, match.start()) + 1
                found = text[match.start() :].split("\n", 1)[0][:40]
                problems.append(f"{name}:{line}: job matcher {found!r} is not {JOB_SELECTOR}")
        for rule in iter_rules(yaml.safe_load(text).get("groups", [])):
            rule_name, expr = rule.get("alert") or rule.get("record"), rule["expr"]
            if _UP_WITHOUT_SELECTOR.search(expr):
                problems.append(f"{rule_name}: reads up without {{{JOB_SELECTOR}}}")
            elif JOB_SELECTOR in expr and "up" not in metric_names_in_promql(expr):
                problems.append(f"{rule_name}: selects {JOB_SELECTOR} but reads no up series")
    return problems


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


def rule_groups_by_file() -> dict[Path, list[dict]]:
    """The shipped rule groups, per file (a fresh copy to change)."""
    return {path: load_groups([path]) for path in rule_files()}


def find_rule(groups_by_file: dict[Path, list[dict]], name: str) -> dict:
    for groups in groups_by_file.values():
        for rule in iter_rules(groups):
            if name in (rule.get("alert"), rule.get("record")):
                return rule
    raise KeyError(name)


def write_cases(directory: Path, groups_by_file: dict[Path, list[dict]], cases: list) -> Path:
    """A promtool unit-test file with just these two-site cases, against these rules
    (written next to it)."""
    files = write_rule_files(groups_by_file, directory)
    tests = []
    for case in cases:
        test = {key: value for key, value in case.test.items() if not key.endswith("_test")}
        test[case.kind] = [case.case]
        tests.append(test)
    doc = cases[0].doc
    unit = {
        "rule_files": [str(path) for path in files],
        "evaluation_interval": doc["evaluation_interval"],
        "group_eval_order": doc["group_eval_order"],
        "tests": tests,
    }
    path = directory / "cases_test.yml"
    path.write_text(yaml.safe_dump(unit), encoding="utf-8")
    return path


def merge_sites(
    shipped: dict[Path, list[dict]], name: str, targets: frozenset[str]
) -> dict[Path, list[dict]]:
    """The rules with the sites merged in rule ``name``: what `by (job, instance, bank,
    ...)` did, every target label but job and instance aggregated away."""
    merged = copy.deepcopy(shipped)
    rule = find_rule(merged, name)
    dropped = ", ".join(sorted(targets - SCRAPE_LABELS))
    rule["expr"] = f"max without ({dropped}) (\n{rule['expr']}\n)"
    return merged


@pytest.mark.prometheus
def test_merging_the_sites_in_any_rule_fails_its_two_site_test(promtool, tmp_path):
    """For every rule in turn: with the sites merged in that one rule, the rule's own
    two-site cases fail (as shipped they pass: test_promtool_unit_tests). One promtool
    run for all of them (a process per rule is slow); it prints SUCCESS under each file
    that passed."""
    all_cases = two_site_cases(load_unit_tests([SITES_TEST]), agent_target())
    shipped = rule_groups_by_file()
    tests: dict[str, Path] = {}
    for index, rule in enumerate(iter_rules([g for gs in shipped.values() for g in gs])):
        name = rule.get("alert") or rule["record"]
        cases = all_cases[name]
        assert cases, f"{name}: no two-site case"
        merged = merge_sites(shipped, name, cases[0].targets)
        tests[name] = write_cases(tmp_path / f"rule{index}", merged, cases)
    # The merged rules are valid rules: a failure below is a failed expectation.
    merged_rules = [p for p in tmp_path.glob("rule*/*.yml") if p.name != "cases_test.yml"]
    assert_promtool_ok(run_promtool(promtool, "check", "rules", *sorted(merged_rules)))

    result = run_promtool(promtool, "test", "rules", *tests.values())
    tested = re.findall(r"^Unit Testing:\s+(\S+)$", result.stdout, flags=re.MULTILINE)
    assert sorted(tested) == sorted(map(str, tests.values())), result.stdout
    passed = re.findall(r"^Unit Testing:\s+(\S+)\n\s+SUCCESS$", result.stdout, flags=re.MULTILINE)
    unnoticed = [name for name, path in tests.items() if str(path) in passed]
    assert not unnoticed, f"merging the sites went unnoticed in: {unnoticed}"
    assert result.returncode != 0


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("name", "expr", "error"),
    [
        # the recording rule of the issue: two sites' 500 W and -800 W came out as -300 W
        (
            "bank:pylontech_module_power_watts:sum",
            "sum by (job, instance, bank) (pylontech_module_power_watts)",
            "bank:pylontech_module_power_watts:sum",
        ),
        # the alert of the issue: "many-to-many matching not allowed"
        (
            "PylontechCellOverVoltage",
            "pylontech_cell_voltage_volts > on (job, instance, bank, module) group_left () "
            'pylontech_module_cell_voltage_threshold_volts{threshold="high"}',
            "many-to-many matching not allowed",
        ),
    ],
)
def test_planted_site_merging_rule_is_caught(promtool, tmp_path, name, expr, error):
    """A rule written as before is refused twice: by the structural check, and by the
    two-site promtool tests (run on the whole file)."""
    planted = rule_groups_by_file()
    find_rule(planted, name)["expr"] = expr
    problems = check_keeps_target_labels([g for gs in planted.values() for g in gs])
    assert len(problems) == 1 and problems[0].startswith(f"{name}: "), problems

    write_rule_files(planted, tmp_path / "deploy" / "prometheus")
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    shutil.copy(SITES_TEST, tmp_path / "tests" / "rules" / SITES_TEST.name)
    result = run_promtool(promtool, "test", "rules", f"tests/rules/{SITES_TEST.name}", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert error in result.stdout + result.stderr, result.stdout


# Replacement selectors: a plain one, and one with YAML's comment and mapping markers
# (` #`, `: `), which only a block scalar carries through unchanged.
SELECTORS = [
    ('job="solar"', {"job": "solar"}),
    ('job=~"solar|pv", site!~"lab #1: test"', {}),
]


@pytest.mark.prometheus
@pytest.mark.parametrize(("selector", "absent_labels"), SELECTORS, ids=["plain", "regex"])
def test_job_selector_substitutes_textually(promtool, tmp_path, selector, absent_labels):
    """Replacing the text JOB_SELECTOR (as `pylontech-exporter assets --rules.job-selector`
    does) changes only the expressions, passes promtool, and the alerts then watch the
    other job."""
    for path in rule_files():
        text = path.read_text(encoding="utf-8")
        substituted = text.replace(JOB_SELECTOR, selector)
        expected = yaml.safe_load(text)
        for rule in iter_rules(expected["groups"]):
            rule["expr"] = rule["expr"].replace(JOB_SELECTOR, selector)
        assert yaml.safe_load(substituted) == expected, f"{path.name}: YAML changed"
        (tmp_path / path.name).write_text(substituted, encoding="utf-8")
    files = [path.name for path in rule_files()]
    assert_promtool_ok(
        run_promtool(promtool, "check", "rules", "--lint-fatal", *files, cwd=tmp_path)
    )

    def firing(labels: dict[str, str]) -> dict:
        text = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        return {"labels": f"ALERTS{{{text}}}", "value": 1}

    series = 'up{job="%s", instance="%s"}'
    unit = {
        "rule_files": files,
        "evaluation_interval": "1m",
        "tests": [
            {  # the other job's target is down; a target of job pylontech is ignored
                "interval": "1m",
                "input_series": [
                    {"series": series % ("solar", "pi:10460"), "values": "0x30"},
                    {"series": series % ("pylontech", "other:10460"), "values": "0x30"},
                ],
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": "20m",
                        "exp_samples": [
                            firing(
                                {
                                    "alertname": "PylontechExporterDown",
                                    "alertstate": "firing",
                                    "severity": "critical",
                                    "job": "solar",
                                    "instance": "pi:10460",
                                }
                            )
                        ],
                    }
                ],
            },
            {  # only job pylontech: the other job is absent
                "interval": "1m",
                "input_series": [
                    {"series": series % ("pylontech", "other:10460"), "values": "1x30"}
                ],
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": "20m",
                        "exp_samples": [
                            firing(
                                {
                                    "alertname": "PylontechExporterAbsent",
                                    "alertstate": "firing",
                                    "severity": "warning",
                                    **absent_labels,
                                }
                            )
                        ],
                    }
                ],
            },
        ],
    }
    (tmp_path / "selector_test.yml").write_text(yaml.safe_dump(unit), encoding="utf-8")
    assert_promtool_ok(run_promtool(promtool, "test", "rules", "selector_test.yml", cwd=tmp_path))


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


@pytest.fixture(scope="module")
def agent() -> AgentTarget:
    return agent_target()


def test_alert_annotation_style(groups):
    problems = check_annotation_style(groups)
    assert not problems, "\n".join(problems)


def test_every_alert_links_its_runbook_section(groups):
    problems = check_runbook_urls(groups, runbook_anchors())
    assert not problems, "\n".join(problems)


def test_rules_keep_target_labels(groups):
    problems = check_keeps_target_labels(groups)
    assert not problems, "\n".join(problems)


def test_every_rule_has_a_two_site_test(groups, unit_tests, agent):
    problems = check_two_site_coverage(groups, unit_tests, agent)
    assert not problems, "\n".join(problems)


def test_job_selector_only_in_its_one_form():
    texts = {path.name: path.read_text(encoding="utf-8") for path in rule_files()}
    problems = check_job_selector(texts)
    assert not problems, "\n".join(problems)
    users = {
        rule["alert"]
        for text in texts.values()
        for rule in iter_rules(yaml.safe_load(text)["groups"])
        if JOB_SELECTOR in rule["expr"]
    }
    assert users == {"PylontechExporterDown", "PylontechExporterAbsent"}


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


def test_contract_label_names():
    names = contract_label_names()
    assert {"bank", "module", "cell", "sensor", "reason", "threshold", "mode"} <= names
    assert not {"job", "instance", "site"} & names
    assert contract_label_names("| `pylontech_x` | gauge | bank, module | text |") == {
        "bank",
        "module",
    }


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ('up{job="pylontech", instance="pi:1"}', ("up", {"job": "pylontech", "instance": "pi:1"})),
        ('a:b:c{x="1",y="q\\"z"}', ("a:b:c", {"x": "1", "y": 'q"z'})),
        ('{site="home"}', ("", {"site": "home"})),
        ("pylontech_up", ("pylontech_up", {})),
    ],
)  # fmt: skip
def test_parse_series(selector, expected):
    assert parse_series(selector) == expected


def test_parse_series_refuses_garbage():
    with pytest.raises(ValueError):
        parse_series('up{job=pylontech"}')


def test_github_anchors():
    text = (
        "# Runbooks for the alerts\n## Using the rules\n## PylontechBankDown\n"
        "## What's `up`, and why?\n```sh\n# not a heading\n```\n## Using the rules\n"
    )
    assert github_anchors(text) == {
        "runbooks-for-the-alerts",
        "using-the-rules",
        "pylontechbankdown",
        "whats-up-and-why",
        "using-the-rules-1",
    }


def test_check_annotation_style_catches_mistakes(groups):
    broken = copy.deepcopy(groups)
    alerts = [rule for rule in iter_rules(broken) if "alert" in rule]
    alerts[0]["annotations"]["summary"] = "Bank {{ $labels.bank }} is down."
    alerts[1]["annotations"]["summary"] = "cells out of balance"
    alerts[2]["annotations"]["description"] = "Something is wrong."
    assert check_annotation_style(broken) == [
        f"{alerts[0]['alert']}: summary is templated: 'Bank {{{{ $labels.bank }}}} is down.'",
        f"{alerts[1]['alert']}: summary is not a sentence (capital ... period): "
        "'cells out of balance'",
        f"{alerts[2]['alert']}: description has nothing templated in",
    ]


def test_check_runbook_urls_catches_broken_links(groups):
    broken = copy.deepcopy(groups)
    alerts = [rule for rule in iter_rules(broken) if "alert" in rule]
    del alerts[0]["annotations"]["runbook_url"]
    alerts[1]["annotations"]["runbook_url"] = "https://example.org/runbooks.md#x"
    alerts[2]["annotations"]["runbook_url"] = RUNBOOK_BASE_URL + "#no-such-section"
    alerts[3]["annotations"]["runbook_url"] = alerts[4]["annotations"]["runbook_url"]
    problems = check_runbook_urls(broken, runbook_anchors())
    assert [p.split(":")[0] for p in problems] == [a["alert"] for a in alerts[:4]], problems
    assert "no heading" in problems[2] and "not its own section" in problems[3]


def test_check_runbook_urls_catches_a_stale_section(groups):
    anchors = runbook_anchors() | {"pylontechbatteryexploded"}
    assert check_runbook_urls(groups, anchors) == [
        "runbook section #pylontechbatteryexploded: no such alert"
    ]


def test_check_runbook_urls_needs_the_heading(groups):
    anchors = runbook_anchors() - {"pylontechbankdown"}
    assert check_runbook_urls(groups, anchors) == [
        "PylontechBankDown: runbook_url anchor #pylontechbankdown is no heading of the runbooks"
    ]


def test_check_keeps_target_labels_catches_by_and_on(groups):
    broken = copy.deepcopy(groups)
    rules = {rule.get("alert") or rule.get("record"): rule for rule in iter_rules(broken)}
    rules["bank:pylontech_module_power_watts:sum"]["expr"] = (
        "sum by (job, instance, bank) (pylontech_module_power_watts)"
    )
    rules["PylontechModuleDown"]["expr"] = (
        "pylontech_module_up == 0 unless on (job, instance, bank) pylontech_up == 0"
    )
    assert set(check_keeps_target_labels(broken)) == {
        "bank:pylontech_module_power_watts:sum: aggregates by (job, instance, bank), "
        "use without (...)",
        "PylontechModuleDown: matches on (job, instance, bank), use ignoring (...)",
    }


def test_check_two_site_coverage_catches_an_uncovered_rule(groups, unit_tests, agent):
    broken = copy.deepcopy(groups)
    broken[0]["rules"].append(
        {
            "record": "bank:pylontech_module_power_watts:max",
            "expr": "max by (job, instance, bank) (pylontech_module_power_watts)",
        }
    )
    assert check_two_site_coverage(broken, unit_tests, agent) == [
        "bank:pylontech_module_power_watts:max: no two-site promtool test expects a result "
        "per site with every target label"
    ]


@pytest.mark.parametrize("what", ["site", "extra target label", "one site only"])
def test_check_two_site_coverage_needs_every_site_and_label(groups, unit_tests, agent, what):
    """A case expecting the power per bank without the site label (what a merging rule
    gives), without the extra target label, or for one site only, does not count."""
    broken = copy.deepcopy(unit_tests)
    for doc in broken:
        for test in doc.get("tests", []):
            for case in test.get("promql_expr_test", []):
                if case["expr"] != "bank:pylontech_module_power_watts:sum":
                    continue
                for sample in case["exp_samples"]:
                    if what == "site":
                        sample["labels"] = re.sub(r', site="\w+"', "", sample["labels"])
                    elif what == "extra target label":
                        sample["labels"] = sample["labels"].replace(', env="prod"', "")
                del case["exp_samples"][1 if what == "one site only" else 2 :]
    assert check_two_site_coverage(groups, broken, agent) == [
        "bank:pylontech_module_power_watts:sum: no two-site promtool test expects a result "
        "per site with every target label"
    ]


def test_check_two_site_coverage_follows_the_agent_config(groups, unit_tests, agent):
    """Two sites count only as the shipped agent configuration scrapes them."""
    other_job = AgentTarget("solar", agent.instance, agent.external_labels)
    other_label = AgentTarget(agent.job, agent.instance, frozenset({"region"}))
    total = len(list(iter_rules(groups)))
    assert len(check_two_site_coverage(groups, unit_tests, other_job)) == total
    assert len(check_two_site_coverage(groups, unit_tests, other_label)) == total


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('      expr: up{job=~"pylontech"} == 0\n', "job matcher 'job=~\"pylontech\"} == 0'"),
        ('      expr: up{job = "pylontech"} == 0\n', "job matcher 'job = \"pylontech\"} == 0'"),
        (
            "      # the rules select job='pylontech'\n      expr: pylontech_up == 0\n",
            "planted.yml:5: job matcher \"job='pylontech'\" is not",
        ),
        ('      expr: up{instance="x"} == 0\n', 'Planted: reads up without {job="pylontech"}'),
        (
            '      expr: pylontech_up{job="pylontech"} == 0\n',
            'Planted: selects job="pylontech" but reads no up series',
        ),
    ],
)
def test_check_job_selector_catches_other_forms(text, problem):
    planted = "groups:\n  - name: planted\n    rules:\n    - alert: Planted\n" + text
    problems = check_job_selector({"planted.yml": planted})
    assert any(problem in found for found in problems), problems
