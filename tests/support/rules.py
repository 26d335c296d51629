"""The Prometheus rules and the metric contract: loading rule files, the metric and label
names of docs/metrics.md, the metric names a PromQL expression uses, series selectors of
promtool unit tests, the runbook anchors, the agent's scrape target, and promtool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from . import REPO

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
UNIT_TEST_DIR = REPO / "tests" / "rules"
METRICS_DOC = REPO / "docs" / "metrics.md"
RECORDING_RULES = PROMETHEUS_DIR / "pylontech.recording.yml"
ALERT_RULES = PROMETHEUS_DIR / "pylontech.alerts.yml"
AGENT_CONFIG = PROMETHEUS_DIR / "prometheus-agent.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
#: Where every alert's runbook_url points, followed by ``#<anchor>``.
RUNBOOK_BASE_URL = (
    "https://github.com/pylontech-exporter/pylontech-exporter/blob/main/docs/runbooks.md"
)
#: The job selector of the rules, in the one form a packaging step may replace textually.
JOB_SELECTOR = 'job="pylontech"'
#: Series Prometheus itself makes, usable besides the exporter's metrics.
PROMETHEUS_BUILTIN_METRICS = frozenset({"up", "ALERTS"})


def require_binary(name: str) -> str:
    """The path of ``name`` (prometheus, promtool); skips the test when it is missing,
    or fails it with PYLONTECH_REQUIRE_PROMETHEUS=1 (as in CI)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("PYLONTECH_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"{name} is not on PATH and PYLONTECH_REQUIRE_PROMETHEUS=1")
        pytest.skip(
            f"{name} is not on PATH (Debian package 'prometheus'); "
            "set PYLONTECH_REQUIRE_PROMETHEUS=1 to make this a failure"
        )
    return path


def rule_files() -> list[Path]:
    """Every YAML file under deploy/prometheus that holds rule groups."""
    found = []
    for path in sorted(PROMETHEUS_DIR.rglob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "groups" in doc:
            found.append(path)
    return found


def unit_test_files() -> list[Path]:
    return sorted(UNIT_TEST_DIR.glob("*.yml"))


def load_groups(paths: Iterable[Path]) -> list[dict]:
    groups: list[dict] = []
    for path in paths:
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return groups


def load_unit_tests(paths: Iterable[Path]) -> list[dict]:
    return [yaml.safe_load(path.read_text(encoding="utf-8")) for path in paths]


def iter_rules(groups: list[dict]) -> Iterable[dict]:
    for group in groups:
        yield from group.get("rules", [])


def recording_rule_names(groups: list[dict] | None = None) -> set[str]:
    if groups is None:
        groups = load_groups(rule_files())
    return {rule["record"] for rule in iter_rules(groups) if "record" in rule}


def contract_metric_names(text: str | None = None) -> set[str]:
    """Metric names from the tables of docs/metrics.md (first column, backticked)."""
    if text is None:
        text = METRICS_DOC.read_text(encoding="utf-8")
    return set(re.findall(r"^\|\s*`(pylontech_[a-z0-9_]+)`\s*\|", text, flags=re.MULTILINE))


def contract_label_names(text: str | None = None) -> set[str]:
    """Label names of the exporter's metrics: the labels column of docs/metrics.md."""
    if text is None:
        text = METRICS_DOC.read_text(encoding="utf-8")
    names: set[str] = set()
    for row in re.findall(r"^\|\s*`pylontech_[a-z0-9_]+`\s*\|.*$", text, flags=re.MULTILINE):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) >= 3:
            names.update(n.strip() for n in cells[2].split(",") if re.fullmatch(r"\s*\w+\s*", n))
    return names


def known_metric_names() -> set[str]:
    """What rules and the dashboard may query: the contract, the recording rules, and
    what Prometheus makes itself."""
    return contract_metric_names() | recording_rule_names() | PROMETHEUS_BUILTIN_METRICS


_PROMQL_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
        "group_right", "bool", "offset", "start", "end", "inf", "nan",
    }
)  # fmt: skip


def metric_names_in_promql(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (Grafana variables allowed).

    A light lexer, not a parser: it drops strings, Grafana variables, label matchers,
    ranges and grouping clauses, then takes every identifier that is not a function
    call or a keyword.
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " 0 ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def run_promtool(promtool: str, *args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_promtool_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def shortened_rules(path: Path, target: Path, alert_for: str = "1s") -> Path:
    """A copy of a rule file with every alert's ``for:`` set to ``alert_for``."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group.get("rules", []):
            if "alert" in rule and "for" in rule:
                rule["for"] = alert_for
    target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return target


_LABEL_PAIR = re.compile(r'\s*([A-Za-z_]\w*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _unescape(match: re.Match[str]) -> str:
    return {"n": "\n", "t": "\t"}.get(match.group(1), match.group(1))


def parse_series(selector: str) -> tuple[str, dict[str, str]]:
    """``name{a="b", c="d"}`` (a promtool input series or expected sample) as its metric
    name ('' when there is none) and its labels."""
    match = re.fullmatch(r"\s*([A-Za-z_:][\w:]*)?\s*(?:\{(.*)\})?\s*", selector, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"not a series selector: {selector!r}")
    name, body = match.group(1) or "", (match.group(2) or "").strip()
    labels: dict[str, str] = {}
    position = 0
    while position < len(body):
        pair = _LABEL_PAIR.match(body, position)
        if pair is None or pair.end() == position:
            raise ValueError(f"cannot parse the labels of {selector!r} at {body[position:]!r}")
        labels[pair.group(1)] = re.sub(r"\\(.)", _unescape, pair.group(2))
        position = pair.end()
    return name, labels


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for the headings of a Markdown document: lower case,
    punctuation dropped (but ``-`` and ``_``), spaces turned into ``-``, and ``-1``,
    ``-2`` ... appended to repeats. Headings inside fenced code blocks do not count."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if re.match(r"\s*(```|~~~)", line):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def runbook_anchors() -> set[str]:
    return github_anchors(RUNBOOKS.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class AgentTarget:
    """What the shipped agent configuration scrapes, and the labels it adds."""

    job: str
    instance: str
    external_labels: frozenset[str]


def agent_target(path: Path = AGENT_CONFIG) -> AgentTarget:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    (scrape,) = config["scrape_configs"]
    (static,) = scrape["static_configs"]
    (instance,) = static["targets"]
    external = config.get("global", {}).get("external_labels", {})
    return AgentTarget(scrape["job_name"], instance, frozenset(external))


def write_rule_files(groups_by_file: dict[Path, list[dict]], directory: Path) -> list[Path]:
    """Rule files with these groups, named as the originals, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for original, groups in groups_by_file.items():
        target = directory / original.name
        target.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
        written.append(target)
    return written
