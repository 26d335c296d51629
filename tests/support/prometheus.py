"""A real Prometheus: started on a free port, and its HTTP API."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .net import free_port, http_get
from .processes import Process
from .rules import require_binary


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
