"""Cutting a noisy byte stream into frames."""

from hypothesis import given
from hypothesis import strategies as st

from pylontech_exporter.rs485.frame import Frame, encode_frame
from pylontech_exporter.rs485.stream import MAX_FRAME_BYTES, FrameSplitter

A = encode_frame(Frame(0x20, 0x02, 0x46, 0x00, b"\x11\x02"))
B = encode_frame(Frame(0x20, 0x03, 0x46, 0x00, b"\x11\x03"))


def test_junk_before_a_frame_and_trailing_nuls_are_skipped():
    splitter = FrameSplitter()
    assert splitter.feed(b"\x00\xff garbage" + A + b"\x00\x00\x00") == [A]
    assert splitter.feed(B) == [B]


def test_two_frames_in_one_read():
    assert FrameSplitter().feed(A + B) == [A, B]


def test_a_frame_split_across_reads():
    splitter = FrameSplitter()
    assert splitter.feed(A[:7]) == []
    assert splitter.feed(A[7:-1]) == []
    assert splitter.feed(A[-1:] + B[:3]) == [A]
    assert splitter.feed(B[3:]) == [B]


def test_a_truncated_frame_is_dropped_when_the_next_one_starts():
    assert FrameSplitter().feed(A[:20] + B) == [B]


def test_an_endless_frame_does_not_grow_the_buffer_forever():
    splitter = FrameSplitter()
    for _ in range(3):
        splitter.feed(b"~" + b"0" * MAX_FRAME_BYTES)
        assert splitter.buffered <= MAX_FRAME_BYTES
    assert splitter.feed(A) == [A]


@given(
    st.lists(st.sampled_from([A, B, b"\x00", b"junk", A[:9], b"\r", b"~"]), max_size=20),
    st.lists(st.integers(1, 50), max_size=30),
)
def test_any_chunking_yields_the_same_frames(pieces, cuts):
    stream = b"".join(pieces)
    whole = FrameSplitter().feed(stream)
    splitter, chunked, position = FrameSplitter(), [], 0
    for cut in cuts:
        chunked += splitter.feed(stream[position : position + cut])
        position += cut
    chunked += splitter.feed(stream[position:])
    assert chunked == whole
    for frame in whole:
        assert frame.startswith(b"~") and frame.endswith(b"\r")
        assert frame.count(b"~") == 1 and frame.count(b"\r") == 1
    # Whatever junk surrounds them, every intact frame sent is found, in order.
    assert [f for f in whole if f in (A, B)] == [p for p in pieces if p in (A, B)]


@given(st.binary(max_size=500))
def test_arbitrary_bytes_never_raise(data):
    for frame in FrameSplitter().feed(data):
        assert frame[:1] == b"~" and frame[-1:] == b"\r"
