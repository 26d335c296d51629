"""A fake RS485 client: the read plan's view of a bus, over a frozen simulated stack."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from pylontech_exporter.errors import ResponseTimeout
from pylontech_exporter.rs485.client import RequestStats


class FakeClient:
    """The poller's view of a client, over a frozen simulated stack, with a clock the
    test controls (every request takes ``step`` seconds) and scripted failures."""

    def __init__(self, stack, clock: list[float], *, step: float = 0.01) -> None:
        self.stack = stack
        self.clock = clock
        self.step = step
        self.stats = RequestStats()
        self.calls: list[str] = []
        #: Command names that fail (ResponseTimeout) the next ``n`` times: name -> n.
        self.fail: dict[str, int] = {}
        self.bank_supported = True

    def _call(self, name: str) -> None:
        self.calls.append(name)
        self.stats.requests += 1
        self.clock[0] += self.step
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            self.stats.failures["timeout"] += 1
            raise ResponseTimeout(f"{name}: no answer")

    @contextlib.contextmanager
    def deadline(self, when: float):
        yield

    def discover(self, group: int = 0, *, timeout: float | None = None) -> list[int]:
        self._call("discover")
        return [m.address for m in self.stack.modules]

    def get_values_bank(self, group: int = 0):
        self._call("values_bank")
        if not self.bank_supported:
            raise ResponseTimeout("FF ignored")
        return SimpleNamespace(modules=[m.values() for m in self.stack.modules])

    def get_values_single(self, address: int):
        self._call("values")
        return self.stack.module(address).values()

    def get_alarm_info_bank(self, group: int = 0):
        self._call("alarms_bank")
        if not self.bank_supported:
            raise ResponseTimeout("FF ignored")
        return [m.alarms() for m in self.stack.modules]

    def get_alarm_info(self, address: int):
        self._call("alarms")
        return self.stack.module(address).alarms()

    def get_management_info(self, address: int):
        self._call("management")
        return self.stack.module(address).management()

    def get_system_parameters(self, address: int):
        self._call("parameters")
        return self.stack.module(address).model.parameters

    def get_module_serial_number(self, address: int):
        self._call("serial")
        return self.stack.module(address).serial()

    def get_software_version(self, address: int):
        self._call("software")
        return self.stack.module(address).software()

    def get_manufacturer_info(self, address: int):
        self._call("manufacturer")
        return self.stack.master(0).manufacturer()

    def get_protocol_version(self, address: int):
        self._call("protocol")
        return None

    def close(self) -> None:
        pass
