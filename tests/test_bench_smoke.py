"""The benchmark harness (``python -m bench``) still runs: one tiny configuration, no
peers, no exporter process. Its figures are not checked here (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_a_tiny_configuration(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--modules",
            "2",
            "--groups",
            "1",
            "--bauds",
            "115200",
            "--reps",
            "1",
            "--latency",
            "0.01",
            "--no-peers",
            "--no-exporter",
            "--json",
            str(tmp_path / "results.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "| 2 | 1 | 115200 | 4 |" in result.stdout  # 0x42 FF, 0x44 FF, 2 x 0x92
    assert "frames/s" in result.stdout
    assert (tmp_path / "results.json").stat().st_size > 0
