"""The other Python libraries a user would pick, run as their users run them.

- ``python-pylontech`` 0.3.3 (module ``pylontech.pylontech``): ``get_values()`` (0x42 FF)
  plus ``get_management_info()`` (0x92) per module. It reads with ``readline()``, which
  waits for a LF that Pylontech frames never carry, so every read lasts its serial
  timeout (2 s by default). Default settings, as a user runs it.
- ``pylontech`` 0.1.3 (module ``pylontech.pylontech_stack``): ``PylontechStack.update()``,
  i.e. per module 0x42, 0x92, 0x44 (2-byte INFO, answered as real firmware does), then
  0x47. It sets RTS around each write to drive the transceiver of a USB adapter, which a
  pty refuses, so it reads through a TCP gateway.

Both packages install into the same ``pylontech`` directory (whichever is installed last
owns ``__init__.py``), so the modules are imported by their own file names.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator


def available() -> dict[str, str | None]:
    """Peer name -> None when importable, else why not."""
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


def python_pylontech(
    link: str, baudrate: int, modules: int, mark: Callable[[], None]
) -> tuple[float, float]:
    """One read of the stack with python-pylontech: (wall seconds, CPU seconds)."""
    from pylontech.pylontech import Pylontech

    peer = Pylontech(link, baudrate)  # timeout=2 s, its default
    try:
        mark()
        start, cpu = time.monotonic(), time.thread_time()
        values = peer.get_values()
        for address in range(2, 2 + modules):
            peer.get_management_info(address)  # prints the frame: see quiet()
        wall, cpu = time.monotonic() - start, time.thread_time() - cpu
        if values.NumberOfModules != modules:
            raise RuntimeError(f"python-pylontech read {values.NumberOfModules} modules")
        return wall, cpu
    finally:
        peer.s.close()


def pylontech_stack(
    link: str, baudrate: int, modules: int, mark: Callable[[], None]
) -> tuple[float, float]:
    """One ``PylontechStack.update()``: (wall seconds, CPU seconds). The constructor (it
    polls every module's serial number) is not counted."""
    from pylontech.pylontech_stack import PylontechStack

    stack = PylontechStack(link, baud=baudrate, manualBattcountLimit=modules)
    try:
        mark()
        start, cpu = time.monotonic(), time.thread_time()
        data = stack.update()
        wall, cpu = time.monotonic() - start, time.thread_time() - cpu
    finally:
        stack.pylon.close()
    if len(data["AnaloglList"]) != modules:
        raise RuntimeError(f"pylontech read {len(data['AnaloglList'])} modules")
    return wall, cpu


PEERS = {"python-pylontech": python_pylontech, "pylontech": pylontech_stack}
