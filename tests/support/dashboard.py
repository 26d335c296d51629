"""Walking the Grafana dashboard: its panels, PromQL targets and template variables, and
what Grafana does to an expression before it queries Prometheus."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import REPO

DASHBOARD = REPO / "grafana" / "pylontech.json"
#: Where a Grafana variable may appear in an expression: $name, ${name}, ${name:format},
#: [[name]] (deprecated form).
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
#: Panels that query nothing.
NON_QUERY_PANELS = frozenset({"row", "text", "dashlist", "news"})


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_panels(panels: Iterable[dict]) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def all_panels(dashboard: dict) -> list[dict]:
    return list(iter_panels(dashboard.get("panels", [])))


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p.get("type") not in NON_QUERY_PANELS]


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def panel_name(panel: dict) -> str:
    return f"panel {panel.get('id')} {panel.get('title')!r}"


@dataclass
class Target:
    where: str
    expr: str
    instant: bool  # Grafana runs an instant query (else a range query)


def dashboard_targets(dashboard: dict) -> list[Target]:
    """Every PromQL expression of panels (nested ones too) and annotations."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append(
                    Target(
                        f"{panel_name(panel)} target {target.get('refId')}",
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


def parse_label_values(query: str) -> tuple[str, str] | None:
    """(selector, label) of a `label_values(selector, label)` variable query, else None."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, flags=re.DOTALL)
    return (match.group(1), match.group(2)) if match else None


def promql_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression in panels, annotations and variables
    (a `label_values` variable contributes its selector)."""
    found = [(target.where, target.expr) for target in dashboard_targets(dashboard)]
    for variable in query_variables(dashboard):
        query = variable_query(variable)
        parsed = parse_label_values(query)
        found.append((f"variable {variable['name']}", parsed[0] if parsed else query))
    return found


def grafana_regex_escape(value: str) -> str:
    """How Grafana's Prometheus data source escapes a multi-value variable's value for a
    regex matcher inside a PromQL string (backslash doubled for the string literal)."""
    return re.sub(r"[\\$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(), value)


def grafana_regex_value(values: list[str]) -> str:
    escaped = [grafana_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def grafana_builtins(scrape_interval: float) -> dict[str, str]:
    """Grafana's built-in variables for a data source with this scrape interval (s):
    $__rate_interval is max($__interval + scrape interval, 4 * scrape interval)."""
    return {
        "__rate_interval": f"{4 * scrape_interval:g}s",
        "__interval_ms": f"{scrape_interval * 1000:g}",
        "__interval": f"{scrape_interval:g}s",
        "__range_ms": "60000",
        "__range_s": "60",
        "__range": "1m",
    }


def substitute(expr: str, values: dict[str, str], builtins: dict[str, str]) -> str:
    """``expr`` with every Grafana variable replaced; an unknown variable fails."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in builtins:
            return builtins[name]
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


def has_data(result: list[dict]) -> bool:
    """At least one sample that is a number (Grafana draws NaN as a gap)."""
    for series in result:
        samples = series.get("values") or [series.get("value")]
        if any(s and not math.isnan(float(s[1])) for s in samples):
            return True
    return False
