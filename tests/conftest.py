"""Shared fixtures: a virtual stack and the simulator servers in front of it, the
certificates of the TLS tests; and the Hypothesis settings every property test runs with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import settings
from support.pki import make_pki

from pylontech_exporter.simulator import BatteryStack, Rs485Responder
from pylontech_exporter.simulator.serve import PtySimulator, TcpSimulator

# No deadline: an example's wall time says nothing on a loaded 2-core CI machine (a
# DeadlineExceeded there is noise, not a finding); derandomized, so every run of the suite
# tries the same examples and a failure is reproducible.
settings.register_profile("pylontech", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("pylontech")


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
