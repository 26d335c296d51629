"""The benchmark harness (``python -m bench --quick``) runs, and what it measured is right.

Its figures are not checked here (docs/benchmarks.md); its outcomes are: the issue's target
cell is up, concurrent scrapes share bus reads, python-pylontech's shipped reads wait out
their timeout and the fixed ones do not, the soak's hostile clients (tiny scrape
timeouts, idle and slow connections) never cost a real scrape its data, and the console's
scrapes sent what they should and are measured against a floor of the bytes they moved.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: python-pylontech's default serial timeout: what each of its reads waits for a LF.
PYTHON_PYLONTECH_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results = tmp_path_factory.mktemp("bench") / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(results.read_text())
    data["stdout"] = run.stdout
    data["by_name"] = {s["name"]: s for s in data["sections"]}
    return data


def test_every_section_runs_and_notes_the_load(quick: dict[str, Any]) -> None:
    assert list(quick["by_name"]) == ["scrape", "matrix", "peers", "codec", "soak", "console"]
    assert quick["stdout"].count("Load (1, 5, 15 min)") == 6
    assert all(not s["failures"] for s in quick["sections"])


def test_the_first_scrapes_reach_complete_data(quick: dict[str, Any]) -> None:
    (run,) = quick["by_name"]["scrape"]["data"]
    assert run["first_complete"] is not None and run["first_complete"] <= 3
    assert run["steady"] and all(s["requests"] > 0 for s in run["steady"])
    concurrent = run["concurrent"]
    assert concurrent["ok"] == concurrent["scrapes"]
    assert 1 <= concurrent["bus_reads"] < concurrent["scrapes"]  # they share reads


def test_the_target_cell_is_up(quick: dict[str, Any]) -> None:
    (cell,) = quick["by_name"]["matrix"]["data"]
    assert (cell["modules"], cell["baud"], cell["groups"], cell["timeout"]) == (8, 115200, 1, 1.0)
    assert cell["verdict"] == "up"
    first = next(s for s in cell["scrapes"] if s["state"] == "up")
    assert first["number"] <= 3
    assert all(s["state"] == "up" for s in cell["scrapes"][first["number"] :])
    assert "42@02 FF" in first["wire"] and "44@02 FF" in first["wire"]


def test_python_pylontech_waits_out_its_timeout_only_as_shipped(quick: dict[str, Any]) -> None:
    runs = {r["variant"]: r for r in quick["by_name"]["peers"]["data"]["runs"]}
    shipped = runs["python-pylontech 0.3.3, as shipped"]
    fixed = runs["python-pylontech 0.3.3, LF bug fixed"]
    assert shipped["error"] is None and fixed["error"] is None
    # The same requests on the wire: 0x42 FF and one 0x92 per module, nothing rewritten.
    assert shipped["requests"] == fixed["requests"] == 1 + shipped["modules"]
    assert shipped["wall"] >= shipped["requests"] * PYTHON_PYLONTECH_TIMEOUT
    assert fixed["wall"] < fixed["requests"] * PYTHON_PYLONTECH_TIMEOUT


def test_the_soak_survives_hostile_clients(quick: dict[str, Any]) -> None:
    soak = quick["by_name"]["soak"]["data"]
    assert soak["alive"] and soak["http_errors"] == 0
    # The attacker's tiny timeouts read nothing; the real scrapes keep their data.
    assert soak["attacker"].get("0.000001: up 0", 0) > 0
    assert soak["complete"] >= 0.95 * soak["scrapes"]
    assert soak["connections"]["idle: opened"] >= 10  # held open while the soak ran
    assert soak["connections"]["slow: opened"] >= 5
    assert soak["threads"]["end"] <= soak["threads"]["start"]
    assert soak["fds"]["end"] <= soak["fds"]["start"]


def test_the_console_scrapes_are_measured_against_the_bytes_they_moved(
    quick: dict[str, Any],
) -> None:
    console = quick["by_name"]["console"]["data"]
    baud = console["baud"]
    runs = {r["batteries"]: r for r in console["runs"]}
    assert list(runs) == [1, 2] and all(r["error"] is None for r in runs.values())
    assert not runs[1]["http"] and runs[2]["http"]  # an exporter process: the largest stack
    bat = console["bytes"]["16 cells, US5000-16S B69.26"]["bat N"]
    for batteries, run in runs.items():
        assert run["pwr"] and run["full"]
        for scrape in run["pwr"]:
            assert scrape["commands"] == ["pwr"]
        for scrape in run["full"] + run["http"]:  # the read plan: pwr, every battery's cells
            assert scrape["commands"] == ["pwr"] + [f"bat {n}" for n in range(1, batteries + 1)]
            assert scrape["bytes"] == run["pwr"][0]["bytes"] + batteries * bat
        for scrape in run["pwr"] + run["full"] + run["http"]:
            assert scrape["floor"] == pytest.approx(scrape["bytes"] * 10 / baud)
            assert scrape["seconds"] >= scrape["floor"]
    # A 1-battery pwr on the wire is what the byte table counts for it (typed line + echo).
    assert (
        runs[1]["pwr"][0]["bytes"]
        == console["bytes"]["16 cells, US5000-16S B69.26"]["pwr, 1 battery"]
    )
    slow = {row["baud"]: row for row in console["fits"] if row["basis"] == "floor"}
    pwr_bytes = runs[2]["pwr"][0]["bytes"]
    assert slow[1200]["pwr_s"] == pytest.approx(pwr_bytes * 10 / 1200)
    assert slow[1200]["fits"] == 0  # pwr alone takes over 20 s at 1200 Bd


def test_an_unknown_section_is_a_one_line_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nosuch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "unknown section(s) nosuch" in run.stderr
