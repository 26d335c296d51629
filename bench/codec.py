"""CPU-bound parts: decoding a bank-wide answer, and rendering ``/metrics``.

- Decoding: ``decode_frame`` + ``payloads.ANALOG_VALUES_BANK.parse`` against
  python-pylontech's ``_decode_hw_frame`` + ``_decode_frame`` + ``get_values_fmt.parse``,
  on the same bank-wide 0x42 frame of 16 modules x 16 cells.
- Rendering: the exporter's :class:`~pylontech_exporter.exposition.Exposition` (the
  collector and prometheus_client's encoders) of a snapshot of 4 groups x 16 modules x 16
  cells, read by the exporter's poller from the virtual stack: text, OpenMetrics and
  gzipped text, each rendered afresh (a snapshot is rendered once per format and shared
  by its scrapers; this is that once).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from prometheus_client.registry import CollectorRegistry

from pylontech_exporter.collector import PylontechCollector
from pylontech_exporter.config import BankConfig, SerialSettings
from pylontech_exporter.exposition import Exposition
from pylontech_exporter.poller import Poller
from pylontech_exporter.rs485 import payloads
from pylontech_exporter.rs485.frame import decode_frame, encode_request
from pylontech_exporter.simulator import Rs485Responder
from pylontech_exporter.snapshot import Snapshot

from .exporter import PROMETHEUS_ACCEPT
from .line import make_stack, simulated
from .section import Options, Result

FORMATS = {
    "text": ("text/plain", False),
    "OpenMetrics": (PROMETHEUS_ACCEPT, False),
    "text, gzip": ("text/plain", True),
}


def measure_decode() -> dict[str, float]:
    """Frames per second for a bank-wide 0x42 answer of 16 modules x 16 cells."""
    stack = make_stack(16, 1)
    raw = Rs485Responder(stack).respond(encode_request(2, 0x42, bytes([payloads.ALL_MODULES])))
    assert raw is not None

    def ours() -> object:
        return payloads.ANALOG_VALUES_BANK.parse(decode_frame(raw).info, 0)

    result = {"frame_bytes": float(len(raw)), "ours_fps": _rate(ours)}
    with contextlib.suppress(ImportError):
        from pylontech.pylontech import Pylontech as Theirs

        theirs_client = Theirs.__new__(Theirs)  # no port: only the decoder

        def theirs() -> object:
            frame = theirs_client._decode_frame(theirs_client._decode_hw_frame(raw))
            return Theirs.get_values_fmt.parse(frame.info[1:])

        assert len(theirs().Module) == len(ours())  # type: ignore[arg-type]
        result["python_pylontech_fps"] = _rate(theirs)
    return result


def _rate(function: Callable[[], object]) -> float:
    number = 1
    while timeit.timeit(function, number=number) < 0.05:
        number *= 2
    return number / min(timeit.repeat(function, number=number, repeat=7))


def read_snapshot(modules: int, groups: int) -> Snapshot:
    """A complete snapshot of the stack, read by the exporter's poller (unpaced TCP)."""
    with simulated(modules, groups, baudrate=None, tcp=True) as (line, url):
        serial = SerialSettings(port=url)
        poller = Poller([BankConfig(str(g), serial, group=g) for g in line.stack.groups])
        try:
            poller.start()
            deadline = time.monotonic() + 60
            while not all(b.settled for b in poller.banks):
                if time.monotonic() > deadline:
                    raise RuntimeError("the banks were not learnt in 60 s")
                time.sleep(0.05)
            snapshot = poller.read(time.monotonic() + 60)
        finally:
            poller.close()
    if not snapshot.complete or not all(m.up for b in snapshot.banks for m in b.modules):
        raise RuntimeError("the snapshot to render is not complete")
    return snapshot


def measure_render(snapshot: Snapshot, reps: int) -> dict[str, dict[str, float]]:
    registry = CollectorRegistry()
    registry.register(PylontechCollector(lambda deadline: snapshot, 5.0))
    current = snapshot
    exposition = Exposition(registry, lambda deadline: current)
    results = {}
    for name, (accept, gzipped) in FORMATS.items():
        walls = []
        for _ in range(reps):
            current = copy.copy(snapshot)  # a new snapshot: rendered, not served from memory
            start = time.perf_counter()
            body, _ = exposition.body(time.monotonic() + 10, accept, gzipped)
            walls.append(time.perf_counter() - start)
        results[name] = {"ms": statistics.median(walls) * 1000, "bytes": len(body)}
    return results


def run(options: Options) -> Result:
    print("codec: decode, render", file=sys.stderr, flush=True)
    decode = measure_decode()
    groups, modules = (1, 4) if options.quick else (4, 16)
    snapshot = read_snapshot(modules, groups)
    render = measure_render(snapshot, 3 if options.quick else 15)
    samples = sum(
        len(m.values.cell_voltages) for b in snapshot.banks for m in b.modules if m.values
    )
    data: dict[str, Any] = {"decode": decode, "render": render, "stack": [groups, modules]}
    line = f"- decode, bank-wide 0x42 of 16 modules ({decode['frame_bytes']:.0f} bytes): "
    line += f"ours {decode['ours_fps']:.0f} frames/s"
    if "python_pylontech_fps" in decode:
        line += (
            f", python-pylontech {decode['python_pylontech_fps']:.0f} frames/s, "
            f"{decode['ours_fps'] / decode['python_pylontech_fps']:.1f}x"
        )
    out = [line]
    for name, figures in render.items():
        out.append(
            f"- `/metrics` render, {groups} x {modules} modules ({samples} cells), {name}: "
            f"{figures['ms']:.1f} ms, {figures['bytes'] / 1024:.0f} KiB"
        )
    return Result("\n".join(out), data)
