"""Whether to ask a group's master for every module at once (the FF form of 0x42/0x44).

Most firmwares answer the bank-wide query; some (US2000C, some US3000C and US5000) ignore
it and must be read module by module. Which one a bank has is learnt, per command: the
client's ``get_values`` and the exporter's read plan both ask this one policy.
"""

from __future__ import annotations

import time
from typing import Callable

#: ``auto``: use the bank-wide query while the firmware answers it; ``on``: only bank-wide;
#: ``off``: only per module.
MODES = ("auto", "on", "off")
#: A query marked unsupported is tried again after this many seconds: the failure may have
#: been a lost answer rather than a firmware that ignores FF.
REPROBE_SECONDS = 300.0


class BankQueryPolicy:
    """What is known about one group's firmware and one command's FF form."""

    def __init__(
        self,
        mode: str = "auto",
        *,
        reprobe_after: float = REPROBE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"bank query mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.reprobe_after = reprobe_after
        self._clock = clock
        #: True = answered, False = ignored (since ``_off_since``), None = not known.
        self.supported: bool | None = None
        self._off_since = 0.0

    @property
    def learning(self) -> bool:
        """Whether answers and failures change what is known (only in ``auto``)."""
        return self.mode == "auto"

    def should_ask(self) -> bool:
        if self.mode != "auto":
            return self.mode == "on"
        if self.supported is False:
            if self._clock() - self._off_since < self.reprobe_after:
                return False
            self.supported = None
        return True

    def answered(self) -> None:
        if self.learning:
            self.supported = True

    def failed(self) -> bool | None:
        """Record a failed bank-wide query; returns what was known before. One that worked
        before is a passing hiccup (asked again next time); one never seen to work may be
        ignored by the firmware (not asked again for a while)."""
        previous = self.supported
        if self.learning:
            if previous:
                self.supported = None
            else:
                self.supported = False
                self._off_since = self._clock()
        return previous

    def forget(self) -> None:
        """Probe again next time (after a discovery, or when the per-module reads fail as
        well: then the bank was down, the FF query not necessarily unsupported)."""
        if self.learning:
            self.supported = None
