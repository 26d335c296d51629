"""Walking the Grafana dashboard: its panels, PromQL targets and template variables, how
Grafana repeats and lays out panels, and what it does to an expression before it queries
Prometheus; node for the checks that run Grafana's own packages."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import REPO

DASHBOARD = REPO / "grafana" / "pylontech.json"
#: The npm project with the schema check (check.mjs) and Grafana's display code
#: (display.mjs).
SCHEMA_CHECK = REPO / "tests" / "grafana_schema"
#: Where a Grafana variable may appear in an expression: $name, ${name}, ${name:format},
#: [[name]] (deprecated form).
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
#: Panels that query nothing.
NON_QUERY_PANELS = frozenset({"row", "text", "dashlist", "news"})


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def require_grafana_node() -> str:
    """The path of node once SCHEMA_CHECK's packages are installed (`npm ci` there);
    skips the test without them, or fails it with PYLONTECH_REQUIRE_GRAFANA_SCHEMA=1 (as
    in CI)."""
    node = shutil.which("node")
    if node is None:
        missing = "node is not on PATH"
    elif not (SCHEMA_CHECK / "node_modules" / "@grafana" / "schema").is_dir():
        missing = f"the npm packages are not installed: run `npm ci` in {SCHEMA_CHECK}"
    else:
        return node
    if os.environ.get("PYLONTECH_REQUIRE_GRAFANA_SCHEMA") == "1":
        pytest.fail(f"{missing} and PYLONTECH_REQUIRE_GRAFANA_SCHEMA=1")
    pytest.skip(f"{missing}; set PYLONTECH_REQUIRE_GRAFANA_SCHEMA=1 to make this a failure")


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
        expr = annotation_expr(annotation)
        if expr:
            found.append(Target(f"annotation {annotation.get('name')!r}", expr, False))
    return found


def annotation_expr(annotation: dict) -> str:
    """A Prometheus annotation's query: in `target` (as Grafana saves it since its
    Prometheus data source moved it there) or, in older dashboards, at the top."""
    return str((annotation.get("target") or {}).get("expr") or annotation.get("expr") or "")


#: Grafana's grid: 24 columns; a unit of height is 30 px, with 8 px between panels.
GRID_COLUMNS = 24
GRID_UNIT_PX = 30
GRID_MARGIN_PX = 8
#: What Grafana repeats a panel up to per line when the panel does not say (maxPerRow).
DEFAULT_MAX_PER_ROW = 4
#: The value of a repeat's variable in the one copy Grafana draws when the variable has
#: no value (its repeaters' placeholder, titled as "All"): a row repeated over the banks
#: that have some data is still drawn once where no bank has it, its panels empty.
PLACEHOLDER = ""


def height_px(h: int) -> int:
    """The height in pixels of a panel ``h`` grid units high."""
    return h * GRID_UNIT_PX + (h - 1) * GRID_MARGIN_PX


@dataclass
class PanelCopy:
    """A panel as Grafana lays it out: a repeated panel, or one in a repeated row, once
    per selected value of the variable (PLACEHOLDER without one); ``scope`` holds the
    variables of the copy (each set to its one value), ``width`` its width in grid
    columns, ``collapsed`` whether it is in a collapsed row (not drawn until opened)."""

    panel: dict
    scope: dict[str, str]
    width: int
    collapsed: bool

    @property
    def placeholder(self) -> bool:
        """Drawn for want of a value of its variable (or its row's)."""
        return PLACEHOLDER in self.scope.values()

    @property
    def name(self) -> str:
        title = str(self.panel.get("title", ""))
        shown = {k: v if v != PLACEHOLDER else "All" for k, v in self.scope.items()}
        for variable, value in shown.items():
            title = title.replace(f"${{{variable}}}", value).replace(f"${variable}", value)
        scope = ", ".join(f"{k} {v}" for k, v in shown.items())
        return f"panel {self.panel.get('id')} {title!r}" + (f" ({scope})" if scope else "")


def panels_by_row(dashboard: dict) -> list[tuple[dict | None, dict]]:
    """(row, panel) for every panel that is not a row, with the row it sits in: the
    collapsed row that holds it, or the last row above it (None above the first row)."""
    found: list[tuple[dict | None, dict]] = []
    row = None
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            row = panel
            found.extend((row, nested) for nested in panel.get("panels", []))
        else:
            found.append((row, panel))
    return found


def panel_copies(dashboard: dict, options: dict[str, list[str]]) -> list[PanelCopy]:
    """Every panel copy Grafana shows when the variables have ``options`` selected: a
    repeat makes a copy per value of its variable, or one PLACEHOLDER copy without a
    value (as Grafana's DashboardGridItem and RowRepeaterBehavior do)."""
    copies = []
    for row, panel in panels_by_row(dashboard):
        row_variable = row.get("repeat") if row else None
        collapsed = bool(row and row.get("collapsed"))
        for row_value in repeat_values(options, row_variable) if row_variable else [None]:
            scope = {row_variable: row_value} if row_variable and row_value is not None else {}
            variable = panel.get("repeat")
            width = int(panel["gridPos"]["w"])
            if not variable:
                copies.append(PanelCopy(panel, scope, width, collapsed))
                continue
            values = repeat_values(options, variable)
            if panel.get("repeatDirection", "h") == "h":
                per_row = panel.get("maxPerRow") or DEFAULT_MAX_PER_ROW
                width = max(GRID_COLUMNS // len(values), GRID_COLUMNS // per_row)
            copies.extend(
                PanelCopy(panel, {**scope, variable: v}, width, collapsed) for v in values
            )
    return copies


def repeat_values(options: dict[str, list[str]], variable: str) -> list[str]:
    """The values Grafana repeats over: the variable's, else its placeholder."""
    return options[variable] or [PLACEHOLDER]


def render_legend(legend_format: str, labels: dict[str, str]) -> str:
    """A series' name as Grafana shows it: the target's legendFormat with each
    ``{{label}}`` replaced (missing labels by nothing), else the series' selector."""
    if not legend_format or legend_format == "__auto":
        name = labels.get("__name__", "")
        rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{name}{{{rest}}}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), legend_format)


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


def variable_label(variable: dict) -> str | None:
    """The label a `label_values` variable lists (``bank`` for both the bank and the
    console bank variable), else None."""
    parsed = parse_label_values(variable_query(variable))
    return parsed[1] if parsed else None


def bank_variables(dashboard: dict) -> set[str]:
    """The variables whose values are banks: a copy per one of them is one bank's."""
    return {v["name"] for v in query_variables(dashboard) if variable_label(v) == "bank"}


#: (selector, label) -> the label's values on the series the selector matches.
LabelValues = Callable[[str, str], Sequence[str]]


def variable_options(
    dashboard: dict, values: Mapping[str, str], label_values: LabelValues
) -> dict[str, list[str]]:
    """Each query variable's options as Grafana finds them: its `label_values` selector
    with the variables before it set to ``values`` (Grafana's regex values), in the
    dashboard's natural order ("2" before "10")."""
    options = {}
    for variable in query_variables(dashboard):
        parsed = parse_label_values(variable_query(variable))
        assert parsed, f"variable {variable['name']} is not label_values(selector, label)"
        found = label_values(substitute(parsed[0], dict(values), {}), parsed[1])
        options[variable["name"]] = sorted(found, key=lambda v: (len(v), v))
    return options


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
