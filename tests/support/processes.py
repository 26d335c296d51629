"""Programs the tests run as their users would: the exporter (and its commands) as a
process, Prometheus."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import REPO
from .metrics import Key, parse


class Process:
    """A subprocess whose output goes to a log file; ``stop()`` terminates, then kills."""

    def __init__(self, name: str, command: list[str], log: Path, **kwargs: Any) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as stream:
            self.popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                **kwargs,
            )

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def output(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.running() else f"exited {self.popen.returncode}"
        return f"--- {self.name} ({state}), last lines of {self.log} ---\n{self.output()}"


def exporter_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pylontech_exporter.cli", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any PYLONTECH_EXPORTER_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYLONTECH_EXPORTER_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30):
    """Run the CLI to completion; returns the CompletedProcess (text)."""
    return subprocess.run(
        exporter_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
    )


class Exporter:
    """``pylontech-exporter`` serving on 127.0.0.1 at a port the OS picks."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, ready: bool = True) -> None:
        """``ready``: return once /-/ready says every bank is known (its modules and
        static data), so that the first scrape has everything."""
        #: With --web.listen-address given, startup is noticed by connecting (the log line
        #: that names the address may be filtered by --log.level).
        self.fixed = next(
            (a for i, a in enumerate(args) if args[i - 1] == "--web.listen-address"), None
        )
        listen = [] if self.fixed else ["--web.listen-address", "127.0.0.1:0"]
        self.process = subprocess.Popen(
            exporter_command(*args, *listen),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=env if env is not None else clean_env(),
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.address = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self.fixed:
            self._wait_connectable(self.fixed)
        if not self._listening.wait(20):
            self.stop()
            raise AssertionError("exporter did not start:\n" + "\n".join(self.lines))
        self.base = f"http://{self.address}"
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.get("/-/ready")[0] != 200:
            if time.monotonic() > deadline or not self.running():
                self.stop()
                raise AssertionError("exporter did not get ready:\n" + self.describe())
            time.sleep(0.05)

    def _wait_connectable(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), 0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            self.address = address
            self._listening.set()
            return

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"msg=listening address=(\S+)", line) or re.search(
                r'"msg": "listening".*"address": "([^"]+)"', line
            )
            if match:
                self.address = match.group(1)
                self._listening.set()

    def get(
        self, path: str = "/metrics", headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def scrape(self, timeout_header: float | None = None) -> dict[Key, float]:
        headers = {}
        if timeout_header is not None:
            headers["X-Prometheus-Scrape-Timeout-Seconds"] = str(timeout_header)
        status, _, body = self.get("/metrics", headers)
        assert status == 200
        return parse(body.decode())

    def running(self) -> bool:
        return self.process.poll() is None

    def describe(self) -> str:
        state = "running" if self.running() else f"exited {self.process.returncode}"
        return f"--- exporter ({state}), last lines of its log ---\n" + "\n".join(self.lines[-40:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
