"""The ``/metrics`` body: rendered once per snapshot and format, shared by its scrapers.

Every scraper served the same snapshot (waiting for one bus read together, or from the
cache) gets the same bytes: the text, OpenMetrics and gzip forms are each encoded once
and kept until the next snapshot, so twenty concurrent scrapers cost one render, not
twenty in a row. The time a render takes is measured: the scrape budget leaves room for
it (see :meth:`Exposition.offset`).
"""

from __future__ import annotations

import gzip
import threading
import time
from typing import Callable

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from .collector import serving
from .snapshot import Snapshot

#: gzip level: 9 costs much more time than it saves bytes on metric text.
GZIP_LEVEL = 6
#: Room left for the render and the answer before Prometheus' timeout: this much plus
#: twice the measured render time.
OFFSET_MARGIN = 0.05
#: The render time assumed before the first one is measured.
FIRST_RENDER_GUESS = 0.05


class _Body:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: bytes | None = None


class Exposition:
    """Snapshot -> the bytes of its exposition, per content type and encoding."""

    def __init__(
        self, registry: CollectorRegistry, get_snapshot: Callable[[float], Snapshot]
    ) -> None:
        self.registry = registry
        self._get_snapshot = get_snapshot
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._bodies: dict[tuple[str, bool], _Body] = {}
        #: Smoothed seconds one render takes.
        self.render_seconds = FIRST_RENDER_GUESS
        #: Renders done (for tests: concurrent scrapers of one snapshot share one).
        self.renders = 0

    def offset(self) -> float:
        """Seconds to keep free before Prometheus' scrape timeout: the render's time."""
        return OFFSET_MARGIN + 2 * self.render_seconds

    def body(
        self, deadline: float, accept: str, gzipped: bool, names: list[str] | None = None
    ) -> tuple[bytes, str]:
        """(body, content type) of the snapshot for a scrape with ``deadline``."""
        snapshot = self._get_snapshot(deadline)
        encoder, content_type = choose_encoder(accept)
        if names:  # ?name[]=...: a selection, rendered for this request alone
            return self._render(
                snapshot, self.registry.restricted_registry(names), encoder, gzipped
            ), content_type
        with self._lock:
            if snapshot is not self._snapshot:
                self._snapshot, self._bodies = snapshot, {}
            body = self._bodies.setdefault((content_type, gzipped), _Body())
        with body.lock:
            if body.data is None:
                body.data = self._render(snapshot, self.registry, encoder, gzipped)
            return body.data, content_type

    def _render(
        self,
        snapshot: Snapshot,
        registry: Collector,
        encoder: Callable[[Collector], bytes],
        gzipped: bool,
    ) -> bytes:
        started = time.monotonic()
        token = serving.set(snapshot)
        try:
            data = encoder(registry)
        finally:
            serving.reset(token)
        if gzipped:
            data = gzip.compress(data, compresslevel=GZIP_LEVEL)
        self.render_seconds = 0.8 * self.render_seconds + 0.2 * (time.monotonic() - started)
        self.renders += 1
        return data
