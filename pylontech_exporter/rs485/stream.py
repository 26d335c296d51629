"""Cutting a byte stream into frames.

Real buses carry junk: noise before ``~``, trailing NULs, two frames in one read, a frame
cut short by a glitch. The splitter resynchronises on ``~`` and frames on CR; a frame
whose CR never came is dropped as soon as a new ``~`` starts.
"""

from __future__ import annotations

from .frame import EOI, MAX_LENID, MIN_FRAME_LENGTH, SOI

#: A frame longer than this cannot be valid (LENID is 12 bits); drop it rather than grow.
MAX_FRAME_BYTES = MIN_FRAME_LENGTH + MAX_LENID


class FrameSplitter:
    """Accumulates bytes and hands out candidate frames (``~`` .. CR inclusive).

    Candidates are not validated here: :func:`~pylontech_exporter.codec.frame.decode_frame`
    checks them.
    """

    max_frame_bytes = MAX_FRAME_BYTES

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete frames they finish, in order."""
        self._buffer += data
        frames: list[bytes] = []
        while True:
            start = self._buffer.find(SOI)
            if start < 0:
                self._buffer.clear()
                return frames
            del self._buffer[:start]
            end = self._buffer.find(EOI)
            restart = self._buffer.find(SOI, 1, end if end >= 0 else len(self._buffer))
            if restart > 0:  # a new frame began before this one ended: drop the partial
                del self._buffer[:restart]
                continue
            if end < 0:
                if len(self._buffer) > MAX_FRAME_BYTES:
                    self._buffer.clear()
                return frames
            frames.append(bytes(self._buffer[: end + 1]))
            del self._buffer[: end + 1]

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buffer)

    def clear(self) -> None:
        self._buffer.clear()
