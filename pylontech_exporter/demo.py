"""``--simulate``: the exporter against the built-in virtual stack, in-process.

The stack (US3000C-like modules, values moving with the wall clock) is served on a TCP
port on 127.0.0.1 chosen by the OS, and the exporter reads it through the ordinary
client over ``socket://``, so everything but the cable is the real code path. With an
inverter profile, a virtual inverter polls the stack through that broadcast gateway and
the exporter only listens (``--serial.listen-only``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from .config import DEFAULT_LISTEN_MAX_AGE, BankConfig, Config, SerialSettings
from .logging_setup import kv

log = logging.getLogger(__name__)

SIMULATED_MODEL = "US3000C"
#: Time to the first byte of an answer, as on real modules.
SIMULATED_LATENCY = 0.07


@contextlib.contextmanager
def simulated_config(
    groups: list[int] | None = None,
    modules: int = 3,
    *,
    timeout: float = 1.0,
    latency: float = SIMULATED_LATENCY,
    inverter: str | None = None,
    listen_max_age: float = DEFAULT_LISTEN_MAX_AGE,
    protocol: str = "rs485",
) -> Iterator[Config]:
    """Start a virtual stack of ``modules`` modules in each of ``groups`` (default
    ``[0]``) and yield a config whose banks read it; stop it on exit. ``inverter`` names
    a poll profile: a virtual inverter is the master and the banks only listen. With
    ``protocol`` ``console`` the stack (one group) is read through its RS232 console."""
    from .simulator import BatteryStack, Responder, Rs485Responder
    from .simulator.console import ConsoleResponder
    from .simulator.inverter import Inverter, get_profile
    from .simulator.serve import serve_tcp

    groups = groups or [0]
    stack = BatteryStack(modules=modules, groups=groups, model=SIMULATED_MODEL)
    stack.follow_clock()
    master = Inverter(stack, get_profile(inverter)) if inverter else None
    responder: Responder = (
        ConsoleResponder(stack) if protocol == "console" else Rs485Responder(stack)
    )
    server = serve_tcp(responder, "127.0.0.1", 0, latency=latency, inverter=master)
    try:
        serial = SerialSettings(
            port=server.url,
            timeout=timeout,
            listen_only=master is not None,
            listen_max_age=listen_max_age,
            protocol=protocol,
        )
        banks = [BankConfig(name=str(g), serial=serial, group=g) for g in groups]
        log.info(
            "simulating a battery stack",
            extra=kv(
                url=server.url,
                groups=",".join(map(str, groups)),
                modules=modules,
                model=SIMULATED_MODEL,
                inverter=inverter or "none",
                protocol=protocol,
            ),
        )
        yield Config(banks=banks, source="--simulate")
    finally:
        server.stop()
