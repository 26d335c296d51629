"""Listen-only: the banks of a port whose bus master is another device (an inverter).

Nothing here sends: the transport is opened listen-only (it raises on any write) and no
code path calls ``send``. The line is read all the time, from start to shutdown, one
short background step after another (the worker gives way to scrapes between them);
every frame goes through the :class:`~.passive.BusDecoder`, and each decoded answer
becomes the newest reading of the modules it covers, with the time it was heard. A
scrape does not touch the line: it exports what was heard, each reading while it is
younger than ``max_age`` (a module not heard for longer is down and has no readings:
never stale).

What the health metrics mean here: ``pylontech_up`` is 1 while at least one
module of the bank was heard within max-age (the inverter polls and the stack answers);
the bank is *discovering* until the master's poll cycle has gone round once (a request
heard twice) or max-age has passed. Modules are learned from the traffic (a bank-wide
answer covers modules 1..N in order); a configured module count fixes the set instead,
so that a module the inverter no longer hears shows as down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..bank import Bank
from ..config import SerialSettings
from ..deadline import Deadline
from ..errors import DeadlinePassed, ResponseTimeout, TransportError
from ..logging_setup import kv
from ..models import ProtocolVersion, master_address, module_position
from ..snapshot import BankReading, ListenStats
from ..transport import SerialTransport
from .passive import DECODE_FAILURES, Answer, BusDecoder
from .stream import FrameSplitter

log = logging.getLogger(__name__)

#: One background step listens this long at most, then lets a waiting scrape in.
LISTEN_STEP = 0.25
#: After the line failed (no adapter, gateway down), listening resumes this much later.
RETRY_SECONDS = 2.0
#: Parts of a module's data that are readings (exported while younger than max-age);
#: the other answers (serial, software, parameters) are static data, kept.
READINGS = ("values", "alarms", "management")


@dataclass(frozen=True)
class _Heard:
    reading: Any
    #: ``clock()`` and wall time when it was heard.
    at: float
    wall: float


def default_transport(settings: SerialSettings) -> SerialTransport:
    return SerialTransport(
        settings.port, settings.baudrate, framer=FrameSplitter(), listen_only=True
    )


class ListenSource:
    """The banks of one port, read by listening to another master's traffic."""

    def __init__(
        self,
        banks: list[Bank],
        transport_factory: Callable[[SerialSettings], SerialTransport] = default_transport,
    ) -> None:
        self.banks = banks
        settings = banks[0].config.serial
        self.max_age = settings.listen_max_age
        self.transport = transport_factory(settings)
        self.decoder = BusDecoder()
        self._by_group = {bank.group: bank for bank in banks}
        #: (group, position) -> part -> the newest reading heard.
        self._heard: dict[tuple[int, int], dict[str, _Heard]] = {}
        self._started: float | None = None
        self._line_error: str | None = None
        self._foreign_groups: set[int] = set()
        for bank in banks:
            bank.reads_static = False  # heard if the master asks for it, never asked

    # -- background: listening --------------------------------------------------------

    def background(self, deadline: Deadline) -> float:
        clock = self.banks[0].clock
        if self._started is None:
            self._started = clock()
        limit = time.monotonic() + LISTEN_STEP
        try:
            while True:
                raw = self.transport.read_frame(LISTEN_STEP, limit, deadline)
                self._hear(raw)
        except (ResponseTimeout, DeadlinePassed):
            pass  # the step is over (or a scrape wants the worker)
        except TransportError as error:
            if deadline.passed():  # cut: the line was closed under the read (shutting down)
                return RETRY_SECONDS
            if str(error) != self._line_error:
                log.warning("cannot listen to the line", extra=kv(err=str(error)))
            self._line_error = str(error)
            return RETRY_SECONDS
        if self._line_error is not None:
            log.info("listening to the line", extra=kv(port=self.transport.port))
            self._line_error = None
        self._end_discovery(clock())
        return 0.0

    def _hear(self, raw: bytes) -> None:
        bank = self.banks[0]
        answer = self.decoder.feed(raw, bank.clock())
        if answer is not None:
            self._keep(answer)

    def _keep(self, answer: Answer) -> None:
        bank = self._by_group.get(answer.group)
        if bank is None:
            if answer.group not in self._foreign_groups:
                self._foreign_groups.add(answer.group)
                log.info(
                    "heard a group no bank is configured for; add a bank with this group "
                    "to export it",
                    extra=kv(group=answer.group, port=self.transport.port),
                )
            return
        now, wall = bank.clock(), bank.wall()
        name = answer.command.name
        if answer.address == master_address(bank.group):
            bank.protocol_version = ProtocolVersion.from_ver(answer.version)
        if name in ("manufacturer", "protocol"):
            if name == "manufacturer":
                bank.manufacturer = answer.readings[answer.address]
            bank.bank_static_at = now
            return
        for address, reading in answer.readings.items():
            position = module_position(address, bank.group)
            if bank.config.modules and position not in bank.modules:
                continue  # the configured count fixes the set
            memory = bank.memory(position)
            memory.last_answer = now
            memory.success[name] = True
            if name in READINGS:
                self._heard.setdefault((bank.group, position), {})[name] = _Heard(
                    reading, now, wall
                )
                continue
            if name == "serial":
                if memory.serial_number not in (None, reading.serial_number):
                    log.warning(
                        "another module answers at this position",
                        extra=kv(bank=bank.name, module=position, serial=reading.serial_number),
                    )
                    memory.software_version = memory.parameters = None
                memory.serial_number = reading.serial_number
            elif name == "software":
                memory.software_version = reading.mainline_version
            elif name == "parameters":
                memory.parameters = reading
            memory.static_at, memory.static_wall = now, wall

    def _end_discovery(self, now: float) -> None:
        """A bank's modules are known once its master's poll cycle went round (a request
        heard again) or max-age passed; what was heard is what there is. Later, every
        max-age, modules silent for the bank's drop time are dropped."""
        assert self._started is not None
        for bank in self.banks:
            if bank.config.modules:
                continue
            if bank.discovering:
                traffic = self.decoder.traffic.get(bank.group)
                cycled = traffic is not None and max(traffic.polled.values(), default=0) > 1
                if not cycled and now - self._started < self.max_age:
                    continue
            elif now - (bank.last_discovery or 0.0) < self.max_age:
                continue
            bank.discovered(self._heard_within(bank, now))

    def _heard_within(self, bank: Bank, now: float) -> set[int]:
        return {
            position
            for (group, position), parts in self._heard.items()
            if group == bank.group and any(now - h.at <= self.max_age for h in parts.values())
        }

    # -- a scrape: what was heard -----------------------------------------------------

    def scrape(self, deadline: Deadline) -> list[BankReading]:
        if self._started is not None:
            self._end_discovery(self.banks[0].clock())
        return [self._reading(bank) for bank in self.banks]

    def _reading(self, bank: Bank) -> BankReading:
        now = bank.clock()
        reading = bank.begin()
        for position in bank.known:
            module = bank.reading(position)  # static data; no reading yet
            for part, heard in self._heard.get((bank.group, position), {}).items():
                if now - heard.at > self.max_age:
                    continue
                setattr(module, part, heard.reading)
                module.read_at[part] = heard.wall
            reading.modules.append(module)
        bank.answered({m.position for m in reading.modules if m.up})
        reading.listen = self._stats(bank)
        if not reading.up and not bank.discovering:
            reading.error = self._why_down(reading.listen)
        return bank.finish(reading, 0.0)

    def _stats(self, bank: Bank) -> ListenStats:
        traffic = self.decoder.group_traffic(bank.group)
        failures = dict(traffic.failures)
        if bank is self.banks[0]:  # frames no group could be told of count on the first
            for reason in DECODE_FAILURES:
                failures[reason] += self.decoder.unattributed[reason]
        return ListenStats(
            frames=dict(traffic.frames),
            decode_failures=failures,
            unanswered=traffic.unanswered,
            poll_periods=traffic.poll_periods(),
            polls=traffic.polls(),
        )

    def _why_down(self, stats: ListenStats) -> str:
        if self._line_error is not None:
            return f"cannot listen: {self._line_error}"
        heard = sum(stats.frames.values()) + sum(stats.decode_failures.values())
        if not heard:
            return (
                f"nothing heard for this group in {self.max_age:g} s: is the inverter "
                "polling the battery over RS485? (`pylontech-exporter dump "
                "--serial.listen-only` shows what the line carries)"
            )
        return (
            f"no module heard within the last {self.max_age:g} s "
            f"({stats.frames['answer']} answers, {sum(stats.decode_failures.values())} "
            "frames that did not decode so far)"
        )

    def close(self) -> None:
        self.transport.close()
