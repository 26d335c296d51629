"""A real Prometheus: started on a free port, and its HTTP API."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .dashboard import dashboard_targets, grafana_builtins, has_data, substitute
from .net import free_port, http_get
from .processes import Process
from .rules import metric_names_in_promql, require_binary


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

    def samples(self, selector: str, seconds: int) -> list[dict]:
        """The raw samples of ``selector`` over the last ``seconds`` (a range vector)."""
        data = self.api("query", query=f"{selector}[{seconds}s]")
        assert data["resultType"] == "matrix", f"{selector}: {data['resultType']} result"
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


def start_prometheus(config: Path, tmp: Path) -> Prometheus:
    """A real Prometheus with ``config``, its data and log in ``tmp``, once it is ready."""
    binary = require_binary("prometheus")
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


#: Dashboard expressions that are legitimately empty on a healthy stack: where -> reason.
#: They must still run without error, and must indeed be empty while healthy (anything
#: else means the entry is stale and the expression belongs with the others).
HEALTHY_EMPTY = {
    "panel 27 'Alarms and protections, bank $bank' target F": (
        "lists only the modules with an active alarm (`> 0`); none has one on a healthy stack"
    ),
    "panel 33 'Charge and discharge enabled, bank $management_bank' target C": (
        "lists only the modules that refuse charging (`== 0`)"
    ),
    "panel 33 'Charge and discharge enabled, bank $management_bank' target D": (
        "lists only the modules that refuse discharging (`== 0`)"
    ),
    "panel 35 'Reachability' target D": "lists only the modules that are down (`== 0`)",
    "annotation 'Pylontech alerts'": (
        "firing Pylontech alerts only; test_cell_drift_fires_the_imbalance_alerts checks "
        "that it returns them once alerts fire"
    ),
}


def dashboard_problems(
    prometheus: Prometheus,
    dashboard: dict,
    values: dict[str, str],
    interval: float,
    *,
    healthy: bool = True,
    absent: Collection[str] = (),
) -> list[str]:
    """Every dashboard target run as Grafana runs it (range queries over the last 10 s
    and an instant query) with the variables ``values``: what fails or has no data.
    ``healthy``: the stack is known to be healthy, so HEALTHY_EMPTY must be empty (else
    those only have to run). ``absent``: metric families the data source does not export
    (the console has no 0x92 data, RS485 no console-only data): a target that uses one
    only has to run."""
    builtins = grafana_builtins(interval)
    targets = dashboard_targets(dashboard)
    stale = sorted(set(HEALTHY_EMPTY) - {t.where for t in targets})
    problems = (
        [f"HEALTHY_EMPTY names targets the dashboard no longer has: {stale}"] if stale else []
    )
    for target in targets:
        expr = substitute(target.expr, values, builtins)
        try:
            data = has_data(prometheus.query(expr))
            if not target.instant:
                end = time.time()
                data = data and has_data(prometheus.query_range(expr, end - 10, end, interval))
        except QueryError as error:
            problems.append(f"{target.where}: query failed: {error}\n    {target.expr}")
            continue
        if metric_names_in_promql(target.expr) & set(absent):
            continue
        if target.where in HEALTHY_EMPTY:
            if data and healthy:
                problems.append(
                    f"{target.where}: listed in HEALTHY_EMPTY but returns data on a healthy "
                    f"stack; drop the entry\n    {expr}"
                )
        elif not data:
            problems.append(f"{target.where}: no data\n    {expr}")
    return problems
