"""The exporter in-process (the same wiring as ``pylontech-exporter``, built by
``cli.build_server``) and resource counts of a process from /proc."""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import urllib.error
import urllib.request
from typing import Any

from pylontech_exporter.cli import build_server
from pylontech_exporter.config import BankConfig, Config, SerialSettings
from pylontech_exporter.poller import Poller

from .metrics import Key, parse
from .waiting import wait_for


def settled(poller: Poller) -> Poller:
    """``poller`` started, once every bank is known (modules and static data)."""
    poller.start()
    assert wait_for(lambda: all(b.settled for b in poller.banks), 20), "banks not learnt"
    return poller


def bank(port: str, *, name: str = "0", group: int = 0, timeout: float = 0.1, **kw: Any):
    return BankConfig(
        name=name, serial=SerialSettings(port=port, timeout=timeout), group=group, **kw
    )


class InProcessExporter:
    """The exporter serving on 127.0.0.1 in a thread of this process."""

    def __init__(
        self, *banks: BankConfig, cache_ttl: float = 0.0, ready: bool = True, **options: Any
    ) -> None:
        """``ready``: return once every bank is known (modules and static data)."""
        self.server, self.poller = build_server(
            Config(banks=list(banks)),
            address=("127.0.0.1", 0),
            cache_ttl=cache_ttl,
            exporter_metrics=False,
            **options,
        )
        self.base = f"{self.server.scheme}://127.0.0.1:{self.server.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        if ready and not wait_for(lambda: all(b.settled for b in self.poller.banks), 30):
            self.stop()
            raise AssertionError("the exporter did not learn its banks")

    def get(
        self,
        path: str = "/metrics",
        headers: dict[str, str] | None = None,
        method: str = "GET",
        context: ssl.SSLContext | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def scrape(self, **kw: Any) -> dict[Key, float]:
        status, _, body = self.get("/metrics", **kw)
        assert status == 200, status
        return parse(body.decode())

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.poller.close()
        self._thread.join(5)

    def __enter__(self) -> InProcessExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def handler_threads() -> int:
    """Connection threads of in-process exporters (ThreadingHTTPServer names them so)."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def resources(pid: int | str = "self") -> dict[str, int]:
    """Threads, open file descriptors and resident memory (kB) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_kb": rss,
    }


def fd_targets(pid: int | str) -> list[str]:
    """What the process's file descriptors point to (paths, socket:[inode], pipe:[...])."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets
