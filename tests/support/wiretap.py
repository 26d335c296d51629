"""A wiretap on a serial line: a relay between a program and a virtual device (a TCP
port or a pty) that records both directions, so a test reads exactly what the program
sent and what the device printed, and can silence the device or add noise on the line."""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import threading
import tty
from pathlib import Path


class Wiretap:
    """The recording and the line controls, shared by both kinds of relay.

    ``sent``: every byte the program wrote; ``heard``: every byte that reached the program
    (what the device wrote, and noise). While ``mute`` what the device writes is lost: a
    silent line."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.heard = bytearray()
        self.mute = False
        self.lock = threading.Lock()
        self._program: int | None = None  # the fd towards the program, once connected
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> Wiretap:
        self._thread.start()
        return self

    def stop(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._close()

    def __enter__(self) -> Wiretap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mark(self) -> tuple[int, int]:
        """Where the recordings are now (sent, heard): slice them from here later."""
        with self.lock:
            return len(self.sent), len(self.heard)

    def inject(self, noise: bytes) -> None:
        """Put ``noise`` on the line towards the program, as if the device printed it."""
        with self.lock:
            if self._program is not None:
                _write_all(self._program, noise)

    # -- the relay ------------------------------------------------------------------

    def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _pump(self, program: int, device: int, selector: selectors.BaseSelector) -> bool:
        """Relay between ``program`` and ``device`` until one side closes (False) or the
        tap stops (True)."""
        with self.lock:
            self._program = program
        selector.register(program, selectors.EVENT_READ, "program")
        selector.register(device, selectors.EVENT_READ, "device")
        try:
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        return True
                    try:
                        data = os.read(key.fd, 4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # one side hung up
                        return False
                    with self.lock:
                        if key.data == "program":
                            self.sent += data
                            _write_all(device, data)
                        elif not self.mute:
                            self.heard += data
                            _write_all(program, data)
        finally:
            with self.lock:
                self._program = None
            selector.unregister(program)
            selector.unregister(device)


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data``; what the other side does not take within a second is lost, as on
    a real line (and so is everything once it hung up)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if not select.select([], [fd], [], 1.0)[1]:
                return
        except OSError:
            return


class TcpWiretap(Wiretap):
    """A TCP relay in front of ``socket://HOST:PORT``: the program connects to ``url``
    (one client at a time; each gets its own connection to the device)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while True:
                selector.register(self._listener, selectors.EVENT_READ, "listener")
                if any(key.data == "wake" for key, _ in selector.select()):
                    return
                selector.unregister(self._listener)  # one client at a time
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    continue
                with client, socket.create_connection(self.upstream, 5) as device:
                    if self._pump(client.fileno(), device.fileno(), selector):
                        return

    def _close(self) -> None:
        self._listener.close()


class PtyWiretap(Wiretap):
    """A pty relay in front of the pty at ``device``: the program opens ``link`` (and may
    close and reopen it: the relay holds the slave side open)."""

    def __init__(self, device: str | os.PathLike[str], link: Path) -> None:
        super().__init__()
        self._device = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._device)
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.link = link
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.ttyname(self._slave))

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._pump(self._master, self._device, selector)

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self.link.unlink()
        for fd in (self._device, self._master, self._slave):
            os.close(fd)
