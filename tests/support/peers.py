"""The published clients written by others, each in a place of its own: python-pylontech
0.3.3 and pylontech 0.1.3 both install into a ``pylontech`` package directory, so the
second is installed with ``pip --target`` into ``.peers/`` and run in a subprocess whose
``sys.path`` starts there. Their code is run as published, never patched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from . import REPO

PEERS = REPO / ".peers"
PYLONTECH_0_1_3 = "pylontech==0.1.3"

#: Runs in the subprocess: PylontechStack (constructor: serial numbers, then update()),
#: prints what it read as JSON, and how update() ended.
_STACK_DRIVER = """
import json, sys
from pylontech.pylontech_stack import PylontechStack
url, group, modules = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stack = PylontechStack(url, baud=115200, manualBattcountLimit=modules, group=group)
try:
    stack.update()
    error = None
except Exception as failure:
    cause = failure.__cause__
    error = [str(failure), type(cause).__name__ if cause else None]
finally:
    stack.pylon.close()
data = stack.pylonData
sys.stderr.write("RESULT " + json.dumps({"data": data, "error": error}, default=str) + "\\n")
"""


def _install(requirement: str) -> Path:
    target = PEERS / requirement.replace("==", "-")
    if not (target / "pylontech").is_dir():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
             requirement],
            capture_output=True,
            text=True,
            timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"cannot install {requirement} for the interop test:\n{result.stderr}")
    return target


def pylontech_stack(url: str, group: int, modules: int) -> dict[str, Any]:
    """pylontech 0.1.3's ``PylontechStack`` against ``url``: {"data": pylonData, "error":
    None or [message, cause type]}."""
    target = _install(PYLONTECH_0_1_3)
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", _STACK_DRIVER, url, str(group), str(modules)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    for line in result.stderr.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    raise AssertionError(f"pylontech 0.1.3 did not finish:\n{result.stdout}\n{result.stderr}")
