"""Shared fixtures: a virtual stack and the simulator servers in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.pki import make_pki

from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator


@pytest.fixture
def stack() -> BatteryStack:
    """Three US3000C modules in group 0 (addresses 2, 3, 4), seed 7, time not running."""
    return BatteryStack(modules=3, model="US3000C", seed=7)


@pytest.fixture
def tcp_simulator(stack: BatteryStack) -> Iterator[TcpSimulator]:
    """``stack`` on an ephemeral TCP port, no latency; ``.url`` is the pyserial URL."""
    with TcpSimulator(Rs485Responder(stack), latency=0) as server:
        yield server


@pytest.fixture
def pty_simulator(stack: BatteryStack, tmp_path: Path) -> Iterator[PtySimulator]:
    """``stack`` on a pty linked at ``.link``, no latency."""
    with PtySimulator(Rs485Responder(stack), tmp_path / "battery", latency=0) as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Certificates in a temporary directory, see :func:`support.pki.make_pki`."""
    return make_pki(ca, tmp_path_factory.mktemp("pki"))
