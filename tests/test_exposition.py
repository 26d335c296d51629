"""The /metrics body: one render per snapshot and format, gzip, and a measured offset."""

from __future__ import annotations

import gzip
import time

from prometheus_client import CollectorRegistry

from pylontech_exporter.collector import PylontechCollector
from pylontech_exporter.exposition import OFFSET_MARGIN, Exposition
from pylontech_exporter.snapshot import BankReading, Snapshot

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _exposition(snapshots: list[Snapshot]) -> Exposition:
    registry = CollectorRegistry()
    registry.register(PylontechCollector(lambda deadline: snapshots[-1], ttl=5))
    return Exposition(registry, lambda deadline: snapshots[-1])


def _snapshot() -> Snapshot:
    return Snapshot(banks=[BankReading(name="0", group=0, port="p")], finished=time.monotonic())


def test_each_format_is_rendered_once_per_snapshot():
    snapshots = [_snapshot()]
    exposition = _exposition(snapshots)
    text, text_type = exposition.body(0, "", False)
    assert exposition.body(0, "", False)[0] is text and exposition.renders == 1
    assert text_type.startswith("text/plain") and b'pylontech_up{bank="0"} 0.0' in text
    zipped, _ = exposition.body(0, "", True)
    assert gzip.decompress(zipped) == text and exposition.renders == 2
    open_metrics, content_type = exposition.body(0, OPENMETRICS, False)
    assert content_type.startswith("application/openmetrics-text")
    assert open_metrics.endswith(b"# EOF\n") and exposition.renders == 3
    snapshots.append(_snapshot())  # a new reading: rendered anew
    assert exposition.body(0, "", False)[0] is not text and exposition.renders == 4


def test_a_name_selection_renders_only_those_metrics():
    exposition = _exposition([_snapshot()])
    body, _ = exposition.body(0, "", False, names=["pylontech_up"])
    assert b"pylontech_up{" in body and b"pylontech_scrape_duration_seconds" not in body


def test_the_offset_follows_the_measured_render_time():
    exposition = _exposition([_snapshot()])
    exposition.render_seconds = 0.2
    assert exposition.offset() == OFFSET_MARGIN + 0.4
