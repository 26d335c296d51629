"""A fake RS485 client: the read plan's view of a bus, over a frozen simulated stack, with
a clock the test moves (every request takes ``step`` seconds, or what ``steps`` says for
its name) and scripted failures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

from pylontech_exporter.deadline import Deadline
from pylontech_exporter.errors import DeadlinePassed, ResponseTimeout
from pylontech_exporter.rs485.client import RequestStats
from pylontech_exporter.simulator import BatteryStack


class FakeClient:
    """Answers from ``stack`` (present modules only); ``calls`` lists what was asked."""

    def __init__(self, stack: BatteryStack, clock: list[float], *, step: float = 0.01) -> None:
        self.stack = stack
        self.clock = clock
        self.step = step
        #: Seconds a request of this name takes instead of ``step``: name -> seconds.
        self.steps: dict[str, float] = {}
        self.stats = RequestStats()
        self.calls: list[str] = []
        #: Command names that fail (ResponseTimeout) the next ``n`` times: name -> n.
        self.fail: dict[str, int] = {}
        self.bank_supported = True
        #: Modules the bank-wide answers list beyond the stack's (an inflated answer).
        self.phantoms = 0
        self.transport = SimpleNamespace(is_open=True, generation=1, baudrate=115200)
        self.versions: dict[int, int] = {}
        self._deadline: Deadline | None = None

    def _call(self, name: str, address: int | None = None) -> None:
        if self._deadline is not None and self._deadline.passed():
            raise DeadlinePassed(f"{name}: the deadline passed before the request")
        self.calls.append(name)
        self.stats.requests += 1
        self.clock[0] += self.steps.get(name, self.step)
        if self._deadline is not None and self._deadline.passed():
            raise DeadlinePassed(f"{name}: the deadline came before the answer")
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            self.stats.failures["timeout"] += 1
            raise ResponseTimeout(f"{name}: no answer")
        if address is not None and self.stack.present(address) is None:
            self.stats.failures["timeout"] += 1
            raise ResponseTimeout(f"{name}: nobody at 0x{address:02X}")
        if address is not None:
            self.versions[address] = 0x20

    @contextlib.contextmanager
    def deadline(self, when: Deadline | float) -> Iterator[None]:
        previous = self._deadline
        self._deadline = (
            when if isinstance(when, Deadline) else Deadline(when, lambda: self.clock[0])
        )
        try:
            yield
        finally:
            self._deadline = previous

    def probe(self, address: int, timeout: float | None = None, *, ending: bool = False):
        if self._deadline is not None and self._deadline.passed():
            raise DeadlinePassed("probe: the deadline passed")
        self.calls.append("probe")
        self.stats.requests += 1
        self.clock[0] += self.step
        module = self.stack.present(address)
        return None if module is None else module.serial()

    def _members(self) -> list:
        members = self.stack.group_modules(0)
        return members + [members[-1]] * self.phantoms

    def get_values_bank(self, group: int = 0):
        self._call("values_bank")
        if not self.bank_supported:
            raise ResponseTimeout("FF ignored")
        return SimpleNamespace(
            modules=[replace(m.values(), address=2 + i) for i, m in enumerate(self._members())]
        )

    def get_values_single(self, address: int):
        self._call("values", address)
        return self.stack.module(address).values()

    def get_alarm_info_bank(self, group: int = 0):
        self._call("alarms_bank")
        if not self.bank_supported:
            raise ResponseTimeout("FF ignored")
        return [replace(m.alarms(), address=2 + i) for i, m in enumerate(self._members())]

    def get_alarm_info(self, address: int):
        self._call("alarms", address)
        return self.stack.module(address).alarms()

    def get_management_info(self, address: int):
        self._call("management", address)
        return self.stack.module(address).management()

    def get_system_parameters(self, address: int):
        self._call("parameters", address)
        return self.stack.module(address).model.parameters

    def get_module_serial_number(self, address: int):
        self._call("serial", address)
        return self.stack.module(address).serial()

    def get_software_version(self, address: int):
        self._call("software", address)
        return self.stack.module(address).software()

    def get_manufacturer_info(self, address: int):
        self._call("manufacturer", address)
        return self.stack.master(0).manufacturer()

    def close(self) -> None:
        pass
