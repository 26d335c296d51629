"""Fuzzing the read path end to end: whatever bytes come back over a real pseudo-terminal,
every client method either returns a reading or raises a PylontechError, and never waits
past its timeout."""

from __future__ import annotations

import os
import threading
import time
import tty

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylontech_exporter.errors import PylontechError
from pylontech_exporter.rs485.client import Pylontech
from pylontech_exporter.rs485.frame import Frame, encode_frame

TIMEOUT = 0.05
CALLS = {
    "0x42": lambda c: c.get_values_single(2),
    "0x42 FF": lambda c: c.get_values_bank(0),
    "0x44": lambda c: c.get_alarm_info(2),
    "0x44 FF": lambda c: c.get_alarm_info_bank(0),
    "0x47": lambda c: c.get_system_parameters(2),
    "0x4F": lambda c: c.get_protocol_version(2),
    "0x51": lambda c: c.get_manufacturer_info(2),
    "0x92": lambda c: c.get_management_info(2),
    "0x93": lambda c: c.get_module_serial_number(2),
    "0x96": lambda c: c.get_software_version(2),
}

frames = st.builds(
    lambda info, rtn, address: encode_frame(Frame(0x20, address, 0x46, rtn, info)),
    st.one_of(
        st.binary(max_size=120),
        st.binary(max_size=60).map(lambda b: b"\x11\x02" + b),  # flag + the right address
        st.binary(max_size=60).map(lambda b: b"\x02" + b),
    ),
    st.sampled_from([0x00, 0x00, 0x00, 0x01, 0x02, 0x90, 0x91, 0x42, 0xFF]),
    st.sampled_from([0x02, 0x02, 0x03]),
)
answers = st.lists(
    st.one_of(
        st.binary(max_size=200),
        frames,
        frames.map(lambda f: f[: len(f) // 2]),
        st.sampled_from([b"~", b"\r", b"\x00" * 5, b"~20024600"]),
    ),
    max_size=4,
).map(b"".join)


class Peer:
    """The other end of the pty: answers every request with ``self.answer``."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.answer = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        os.set_blocking(self.master, False)
        pending = b""
        while not self._stop.is_set():
            try:
                pending += os.read(self.master, 4096)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            except OSError:
                return
            if b"\r" in pending:
                pending = b""
                if self.answer:
                    os.write(self.master, self.answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)


def test_any_answer_over_a_pty_gives_a_reading_or_a_typed_error_in_time():
    peer = Peer()
    client = Pylontech(peer.path, timeout=TIMEOUT, retries=0)
    outcomes: set[str] = set()

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(answer=answers, call=st.sampled_from(sorted(CALLS)))
    def exchange(answer: bytes, call: str) -> None:
        peer.answer = answer
        started = time.monotonic()
        try:
            CALLS[call](client)
            outcomes.add("reading")
        except PylontechError as error:
            outcomes.add(error.reason)
        elapsed = time.monotonic() - started
        assert elapsed < TIMEOUT + 0.5, f"{call} took {elapsed:.2f} s"

    try:
        exchange()
    finally:
        client.close()
        peer.close()
    assert "timeout" in outcomes and len(outcomes) >= 3, outcomes
