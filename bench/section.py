"""What every benchmark section shares: the options it is run with and what it returns.

A section is a function ``run(options: Options) -> Result``, registered by name in
:data:`bench.run.SECTIONS`. ``Result.markdown`` is printed under the section's heading
(and goes into docs/benchmarks.md as it is); ``Result.data`` is written to the JSON file;
``Result.failures`` lists outcomes that are wrong (not slow: wrong), which make
``python -m bench`` exit 1.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .line import LATENCY

REPO = Path(__file__).resolve().parent.parent

#: Modules per group, baud rates, group counts and scrape timeouts of the full run.
MODULES = (1, 4, 8, 16)
BAUDS = (115200, 9600)
GROUPS = (1, 2)
TIMEOUTS = (1.0, 2.0, 5.0, 10.0)
#: Batteries on the RS232 console (one stack).
BATTERIES = (1, 2, 4, 8, 16)


@dataclass
class Options:
    quick: bool = False
    latency: float = LATENCY
    modules: tuple[int, ...] = MODULES
    bauds: tuple[int, ...] = BAUDS
    groups: tuple[int, ...] = GROUPS
    timeouts: tuple[float, ...] = TIMEOUTS
    batteries: tuple[int, ...] = BATTERIES
    #: Scrapes of the soak (real scrapes, counted over all real scrapers).
    soak_scrapes: int = 10_000
    #: Concurrent scrapes released at once against the largest stack.
    concurrent: int = 100
    sequential_peers: bool = False


@dataclass
class Result:
    markdown: str
    data: Any = None
    failures: list[str] = field(default_factory=list)


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for row in cpuinfo:
            if row.startswith("model name"):
                model = row.partition(":")[2].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit(),
    }


def commit() -> str:
    """The checkout measured: its commit, ``-dirty`` when it has changes."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return described.stdout.strip() or "unknown (not a git checkout)"


def load() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; ``align`` has one character per column, ``l`` or ``r``."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
