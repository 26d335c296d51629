"""Put a responder (the virtual stack speaking one protocol) on a wire: a pseudo-terminal
or a TCP port.

Both servers run one background thread (``start()``/``stop()`` or ``with``), cut incoming
bytes into requests with the responder's framer (for RS485: on CR, resynchronising on
``~``), answer requests one at a time like a single bus, and can emulate the
line: ``latency`` seconds to the first byte (0.07 like real modules; pass 0 in tests)
and ``baudrate`` pacing (10 bits per byte; None = as fast as possible). A fault's delay
comes on top of the latency. Before each answer the stack catches up with the wall
clock if :meth:`BatteryStack.follow_clock` was called.

With an ``inverter`` (:class:`~.inverter.Inverter`) the server is also the bus master:
every poll period it puts the inverter's requests on the line and the stack's answers
after them, as a listener on a real bus beside an inverter hears them. ``received``
counts the bytes clients sent: on a listen-only client's line it must stay 0.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import selectors
import socket
import threading
import time
import tty
from typing import Callable, TypeVar

from ..transport import Framer
from .inverter import Inverter
from .responder import Responder

#: Pacing granularity: bytes are handed to the OS in slices of about this many seconds.
PACING_SLICE = 0.005

log = logging.getLogger(__name__)

_S = TypeVar("_S", bound="_Server")


class _Server:
    """The thread, the stop logic and the line emulation shared by both servers."""

    def __init__(
        self,
        responder: Responder,
        *,
        baudrate: int | None = None,
        latency: float = 0.07,
        inverter: Inverter | None = None,
    ) -> None:
        self.responder = responder
        self.stack = responder.stack
        self.baudrate = baudrate
        self.latency = latency
        self.inverter = inverter
        #: Requests answered or deliberately ignored so far (frames seen).
        self.requests = 0
        #: Bytes received from clients (what they sent on the "bus").
        self.received = 0
        self._next_cycle = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    def start(self: _S) -> _S:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._open()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release every fd; safe to call twice."""
        if self._thread is None:
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._close()

    def __enter__(self: _S) -> _S:
        """Starts the server unless :func:`serve_pty`/:func:`serve_tcp` already did."""
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def _answer(self, request: bytes, write: Callable[[bytes], None]) -> None:
        """Answer one framed request through ``write``, with latency and pacing."""
        self.requests += 1
        try:
            self.stack.sync()
            reply = self.responder.handle(request)
        except Exception:  # a state the codec cannot encode must not kill the server
            log.exception("answering %r failed; staying silent", request[:40])
            return
        if reply.data is None:
            return
        if self._stopping.wait(self.latency + reply.delay):
            return
        self._transmit(reply.data, write, reply.pace)

    def _transmit(self, data: bytes, write: Callable[[bytes], None], pace: float = 0.0) -> None:
        """Put ``data`` on the line through ``write``, paced at the baud rate (or at
        ``pace`` seconds per byte, a slow trickle, when that is slower)."""
        per_byte = max(10.0 / self.baudrate if self.baudrate else 0.0, pace)
        if not per_byte:
            write(data)
            return
        size = max(1, int(PACING_SLICE / per_byte))
        started = time.monotonic()
        for offset in range(0, len(data), size):
            piece = data[offset : offset + size]
            due = started + (offset + len(piece)) * per_byte
            if self._stopping.wait(max(0.0, due - time.monotonic())):
                return
            write(piece)

    def _until_cycle(self) -> float | None:
        """Seconds until the inverter's next poll cycle is due (None: no inverter)."""
        if self.inverter is None:
            return None
        return max(0.0, self._next_cycle - time.monotonic())

    def _play_cycle(self, write: Callable[[bytes], None]) -> None:
        """One poll cycle of the inverter: each request on the line, then its answer."""
        assert self.inverter is not None
        started = time.monotonic()
        for request in self.inverter.cycle():
            if self._stopping.is_set():
                return
            self._transmit(request, write)
            self._answer(request, write)
            self._stopping.wait(self.inverter.profile.gap)
        self._next_cycle = max(started + self.inverter.period, time.monotonic())


class PtySimulator(_Server):
    """Serves on a pseudo-terminal; ``link`` becomes a symlink to its slave device, so
    ``serial.Serial(link)`` or any serial program can open it.

    Both ends are put in raw mode. The simulator keeps the slave open itself, so the
    link works while no client has it open and a client may close and reopen it at will.
    An existing symlink at ``link`` is replaced; anything else there is an error.
    Bytes nobody reads are dropped when the pty buffer is full, as on a real line.
    """

    def __init__(
        self,
        responder: Responder,
        link: str | os.PathLike[str],
        *,
        baudrate: int | None = None,
        latency: float = 0.07,
        inverter: Inverter | None = None,
    ) -> None:
        super().__init__(responder, baudrate=baudrate, latency=latency, inverter=inverter)
        self.link = os.fspath(link)
        #: The slave device (e.g. /dev/pts/5) once started.
        self.device = ""
        self._master = self._slave = -1

    def _open(self) -> None:
        if os.path.lexists(self.link) and not os.path.islink(self.link):
            raise FileExistsError(f"{self.link} exists and is not a symlink")
        self._master, self._slave = os.openpty()
        try:
            tty.setraw(self._master)
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.device = os.ttyname(self._slave)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
            os.symlink(self.device, self.link)
        except OSError:
            os.close(self._master)
            os.close(self._slave)
            raise

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            if os.readlink(self.link) == self.device:
                os.unlink(self.link)
        os.close(self._master)
        os.close(self._slave)

    def _write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self._master, data) :]
            except BlockingIOError:
                return  # nobody reads: the rest is lost, like on a real line

    def _run(self) -> None:
        framer = self.responder.framer()
        with selectors.DefaultSelector() as selector:
            selector.register(self._master, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if self._until_cycle() == 0.0:
                    self._play_cycle(self._write)
                for key, _ in selector.select(self._until_cycle()):
                    if key.fd == self._wake_r:
                        return
                    try:
                        data = os.read(self._master, 4096)
                    except BlockingIOError:
                        continue
                    except OSError as error:  # EIO: no slave open (cannot happen while
                        if error.errno != errno.EIO:  # we hold it, but be safe)
                            raise
                        self._stopping.wait(0.05)
                        continue
                    self.received += len(data)
                    for frame in framer.feed(data):
                        self._answer(frame, self._write)


#: ``broadcast``: every client sees everything on the bus; ``private``: its own answers.
GATEWAY_MODES = ("broadcast", "private")


class TcpSimulator(_Server):
    """Serves on TCP like an RS485-to-Ethernet gateway; ``port=0`` picks a free port.

    Any number of clients may be connected at once, sequentially or concurrently, and
    requests are answered one at a time as on one bus. A real gateway is a dumb bridge,
    so in ``broadcast`` mode (the default) every client receives all bus traffic: the
    other clients' requests and every answer. ``private`` sends each client only the
    answers to its own requests.
    """

    def __init__(
        self,
        responder: Responder,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        baudrate: int | None = None,
        latency: float = 0.07,
        gateway: str = "broadcast",
        inverter: Inverter | None = None,
    ) -> None:
        if gateway not in GATEWAY_MODES:
            raise ValueError(f"gateway must be one of {', '.join(GATEWAY_MODES)}, not {gateway!r}")
        if inverter is not None and gateway != "broadcast":
            raise ValueError("an inverter's traffic is heard through a broadcast gateway only")
        super().__init__(responder, baudrate=baudrate, latency=latency, inverter=inverter)
        self.host = host
        self.port = port
        self.gateway = gateway
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        """A pyserial URL for the server, ``socket://HOST:PORT``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"socket://{host}:{self.port}"

    def _open(self) -> None:
        self._listener = socket.create_server((self.host, self.port))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _run(self) -> None:
        assert self._listener is not None
        clients: dict[socket.socket, Framer] = {}

        def drop(conn: socket.socket) -> None:
            selector.unregister(conn)
            del clients[conn]
            conn.close()

        def send(conns: list[socket.socket], data: bytes) -> None:
            for conn in conns:
                try:
                    conn.sendall(data)
                except OSError:
                    drop(conn)

        def reply_to(asker: socket.socket | None, data: bytes) -> None:
            """The answer goes on the bus: through a broadcast gateway everybody hears it."""
            if self.gateway == "broadcast" or asker is None:
                send(list(clients), data)
            elif asker in clients:
                send([asker], data)

        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    if self._until_cycle() == 0.0:
                        self._play_cycle(functools.partial(reply_to, None))
                    for key, _ in selector.select(self._until_cycle()):
                        if key.fd == self._wake_r:
                            return
                        if key.fileobj is self._listener:
                            with contextlib.suppress(BlockingIOError):
                                conn, _ = self._listener.accept()
                                conn.settimeout(5.0)
                                clients[conn] = self.responder.framer()
                                selector.register(conn, selectors.EVENT_READ)
                            continue
                        conn = key.fileobj  # type: ignore[assignment]
                        if conn not in clients:  # dropped while sending to it
                            continue
                        try:
                            data = conn.recv(4096)
                        except OSError:
                            data = b""
                        if not data:
                            drop(conn)
                            continue
                        self.received += len(data)
                        framer = clients[conn]
                        if self.gateway == "broadcast":
                            send([c for c in clients if c is not conn], data)
                        for frame in framer.feed(data):
                            self._answer(frame, functools.partial(reply_to, conn))
            finally:
                for conn in clients:
                    conn.close()


def serve_pty(
    responder: Responder,
    link: str | os.PathLike[str],
    *,
    baudrate: int | None = None,
    latency: float = 0.07,
    inverter: Inverter | None = None,
) -> PtySimulator:
    """Start a :class:`PtySimulator`; stop it with ``.stop()`` or use it in ``with``."""
    server = PtySimulator(responder, link, baudrate=baudrate, latency=latency, inverter=inverter)
    server.start()
    return server


def serve_tcp(
    responder: Responder,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    baudrate: int | None = None,
    latency: float = 0.07,
    gateway: str = "broadcast",
    inverter: Inverter | None = None,
) -> TcpSimulator:
    """Start a :class:`TcpSimulator`; ``.url`` tells where it listens."""
    server = TcpSimulator(
        responder,
        host,
        port,
        baudrate=baudrate,
        latency=latency,
        gateway=gateway,
        inverter=inverter,
    )
    server.start()
    return server
