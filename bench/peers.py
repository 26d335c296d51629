"""The other Python libraries a user would pick, run as their users run them.

- ``python-pylontech`` 0.3.3 (module ``pylontech.pylontech``): ``get_values()`` (0x42 FF)
  plus ``get_management_info()`` (0x92) per module, default settings. It reads with
  ``readline()``, which waits for a LF that Pylontech frames never carry, so every read
  lasts its serial timeout (2 s by default). Measured as shipped, and once more with that
  one line fixed at run time here (``read_until(b"\\r")`` in place of ``readline()``, in a
  subclass: the installed package is not touched): its design, without the bug.
- ``pylontech`` 0.1.3 (module ``pylontech.pylontech_stack``): ``PylontechStack.update()``,
  i.e. per module 0x42, 0x92, 0x44, then 0x47. It sets RTS around each write to drive
  the transceiver of a USB adapter, which a pty refuses, so it reads through a TCP
  gateway, as its users with an Ethernet converter do.

Nothing the peers send is rewritten: the simulator answers their requests as real
firmware does (e.g. a 2-byte INFO). Next to each, "ours" is this package's client reading
the same information on the same kind of line. Both packages install into the same
``pylontech`` directory (whichever is installed last owns ``__init__.py``), so the modules
are imported by their own file names.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pylontech_exporter.rs485.client import Pylontech

from .line import simulated
from .section import Options, Result, table

QUICK = ((1,), (115200,))


def available() -> dict[str, str | None]:
    """Peer package -> None when importable, else why not."""
    found: dict[str, str | None] = {}
    for name, module in (
        ("python-pylontech", "pylontech.pylontech"),
        ("pylontech", "pylontech.pylontech_stack"),
    ):
        try:
            __import__(module)
            found[name] = None
        except Exception as error:  # any failure means "not usable"
            found[name] = f"{type(error).__name__}: {error}"
    return found


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Both peers print as they read; around all peer runs (not per thread: the
    redirection is process-wide)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _python_pylontech(fixed: bool) -> type[Any]:
    from pylontech.pylontech import Pylontech as Theirs

    if not fixed:
        return Theirs

    class Fixed(Theirs):  # type: ignore[misc, valid-type]
        """``read_frame`` with the one-line fix: a frame ends at CR, not at a LF."""

        def read_frame(self) -> Any:
            raw_frame = self.s.read_until(b"\r")  # was: self.s.readline()
            return self._decode_frame(self._decode_hw_frame(raw_frame=raw_frame))

    return Fixed


def python_pylontech(link: str, baudrate: int, modules: int, fixed: bool) -> float:
    """One read of the stack with python-pylontech: wall seconds."""
    peer = _python_pylontech(fixed)(link, baudrate)  # timeout=2 s, its default
    try:
        start = time.monotonic()
        values = peer.get_values()
        for address in range(2, 2 + modules):
            peer.get_management_info(address)  # prints the frame: see quiet()
        wall = time.monotonic() - start
    finally:
        peer.s.close()
    if values.NumberOfModules != modules:
        raise RuntimeError(f"python-pylontech read {values.NumberOfModules} modules")
    return wall


def pylontech_stack(link: str, baudrate: int, modules: int, fixed: bool) -> float:
    """One ``PylontechStack.update()``: wall seconds. The constructor (it polls every
    module's serial number) is not counted."""
    from pylontech.pylontech_stack import PylontechStack

    stack = PylontechStack(link, baud=baudrate, manualBattcountLimit=modules)
    try:
        start = time.monotonic()
        data = stack.update()
        wall = time.monotonic() - start
    finally:
        stack.pylon.close()
    if len(data["AnaloglList"]) != modules:
        raise RuntimeError(f"pylontech read {len(data['AnaloglList'])} modules")
    return wall


def ours(link: str, baudrate: int, modules: int, like: str) -> float:
    """This package's client reading what ``like`` reads: wall seconds."""
    with Pylontech(link, baudrate) as client:
        client.get_manufacturer_info(2)  # open the port outside the measurement
        start = time.monotonic()
        client.get_values_bank(0)
        if like == "pylontech":
            client.get_alarm_info_bank(0)
        for address in range(2, 2 + modules):
            client.get_management_info(address)
        if like == "pylontech":
            client.get_system_parameters(2)
        return time.monotonic() - start


@dataclass(frozen=True)
class Variant:
    name: str
    package: str
    read: Callable[[str, int, int, bool], float]
    fixed: bool = False
    #: pylontech 0.1.3 needs a port that takes RTS: a TCP gateway.
    tcp: bool = False
    #: Whose read set "ours" repeats.
    like: str = "python-pylontech"


VARIANTS = (
    Variant("python-pylontech 0.3.3, as shipped", "python-pylontech", python_pylontech),
    Variant(
        "python-pylontech 0.3.3, LF bug fixed", "python-pylontech", python_pylontech, fixed=True
    ),
    Variant("pylontech 0.1.3", "pylontech", pylontech_stack, tcp=True, like="pylontech"),
)


@dataclass
class PeerRun:
    variant: str
    modules: int
    baud: int
    wall: float = 0.0
    requests: int = 0
    floor: float = 0.0
    ours: float = 0.0
    ours_requests: int = 0
    error: str | None = None


def measure(variant: Variant, modules: int, baud: int, latency: float) -> PeerRun:
    run = PeerRun(variant.name, modules, baud)
    with simulated(modules, 1, baudrate=baud, latency=latency, tcp=variant.tcp) as (line, link):
        try:
            line.reset()
            run.wall = variant.read(link, baud, modules, variant.fixed)
        except Exception as error:  # reported in the table
            run.error = f"{type(error).__name__}: {error}"
            return run
        # The peers' constructors probe the bus before the read: count from the read on.
        exchanges = [e for e in line.reset() if e.command != 0x93]
        run.requests, run.floor = len(exchanges), line.floor(exchanges)
    return run


def measure_ours(run: PeerRun, like: str, latency: float) -> None:
    with simulated(run.modules, 1, baudrate=run.baud, latency=latency) as (line, link):
        line.reset()
        run.ours = ours(link, run.baud, run.modules, like)
        run.ours_requests = len([e for e in line.reset() if e.command != 0x51])


def run(options: Options) -> Result:
    status = available()
    modules, bauds = QUICK if options.quick else (options.modules, options.bauds)
    variants = [v for v in VARIANTS if status[v.package] is None]
    configs = [(v, m, b) for v in variants for b in bauds for m in modules]
    print(f"peers: {len(configs)} runs", file=sys.stderr, flush=True)
    with quiet():
        if options.sequential_peers:
            runs = [measure(v, m, b, options.latency) for v, m, b in configs]
        else:  # they spend their time asleep in read timeouts: each on its own line
            with ThreadPoolExecutor(max_workers=len(configs) or 1) as pool:
                runs = list(pool.map(lambda c: measure(*c, options.latency), configs))
    for (variant, _, _), peer_run in zip(configs, runs):
        if peer_run.error is None:
            measure_ours(peer_run, variant.like, options.latency)
    failures = [f"peer {r.variant} failed: {r.error}" for r in runs if r.error]
    return Result(
        report(runs, status), {"status": status, "runs": [r.__dict__ for r in runs]}, failures
    )


def report(runs: list[PeerRun], status: dict[str, str | None]) -> str:
    out = [f"- {name}: not installed ({why})" for name, why in status.items() if why]
    if out:
        out.append("")
    rows = []
    for r in runs:
        if r.error:
            rows.append([r.variant, str(r.modules), str(r.baud), f"failed: {r.error}"] + [""] * 5)
            continue
        rows.append(
            [
                r.variant,
                str(r.modules),
                str(r.baud),
                str(r.requests),
                f"{r.wall:.3f}",
                f"{r.floor:.3f}",
                str(r.ours_requests),
                f"{r.ours:.3f}",
                f"{r.wall / r.ours:.1f}x",
            ]
        )
    header = [
        "peer",
        "modules",
        "Bd",
        "peer requests",
        "peer s",
        "peer floor s",
        "ours requests",
        "ours s",
        "peer / ours",
    ]
    out.append(table(header, rows))
    return "\n".join(out)
