"""The frame envelope against the V3.3 specification's worked examples."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pylontech_exporter.errors import (
    ChecksumError,
    FrameError,
    PylontechError,
    ResponseError,
    WriteCommandRefused,
)
from pylontech_exporter.rs485.frame import (
    Command,
    Frame,
    ReturnCode,
    check_envelope,
    decode_frame,
    encode_frame,
    encode_request,
    frame_checksum,
    length_checksum,
)

# Section 4 of the spec: a 74 Ah module, master address 2. The PDF prints the response's
# CHKSUM as E1A2; the sum of its characters gives E27A.
SPEC_REQUEST = b"~20024642E00202FD33\r"
SPEC_RESPONSE_BODY = (
    b"20024600F07A11020F0D450D440D450D440D450D440D3E0D450D4A0D4A0D4B0D4A0D4A0D4A0D4A"
    b"050BC30BC30BC30BCD0BCD0000C725FFFF04FFFF000200CA58012110"
)


def test_spec_request_is_encoded_byte_for_byte():
    assert encode_request(0x02, Command.ANALOG_VALUES, b"\x02") == SPEC_REQUEST


def test_spec_response_checksum_is_E27A_not_the_printed_E1A2():
    assert frame_checksum(SPEC_RESPONSE_BODY) == 0xE27A
    frame = decode_frame(b"~" + SPEC_RESPONSE_BODY + b"E27A\r")
    assert (frame.version, frame.address, frame.cid1, frame.cid2) == (0x20, 0x02, 0x46, 0x00)
    assert len(frame.info) == 0x7A // 2
    with pytest.raises(ChecksumError, match="E1A2"):
        decode_frame(b"~" + SPEC_RESPONSE_BODY + b"E1A2\r")


def test_spec_checksum_rule():
    # 2.3.3 sums "1203400456ABCEFE" to 038E and prints FC72 (= ~038E + 1). The rule is
    # right, the sum is not: the characters add up to 038F, so the checksum is FC71.
    assert sum(b"1203400456ABCEFE") == 0x038F
    assert frame_checksum(b"1203400456ABCEFE") == 0xFC71


@pytest.mark.parametrize(
    ("lenid", "lchksum"),
    [(18, 0xD), (0, 0), (2, 0xE), (0x7A, 0xF), (0xFFF, 0x3)],
)
def test_length_checksum(lenid, lchksum):
    # 2.3.2: LENID 18 -> LENGTH D012; the worked example's response has LENGTH F07A.
    assert length_checksum(lenid) == lchksum


def test_empty_info_gives_length_0000():
    assert encode_request(0x02, Command.PROTOCOL_VERSION) == b"~2002464F0000FD98\r"


@pytest.mark.parametrize("command", [0x94, 0x95])
def test_write_commands_are_refused(command):
    with pytest.raises(WriteCommandRefused, match="read-only"):
        encode_request(0x02, command, b"\x02")


def test_unknown_commands_and_reserved_addresses_are_refused():
    with pytest.raises(ValueError, match="not a read command"):
        encode_request(0x02, 0x43)
    with pytest.raises(ValueError, match="reserved"):
        encode_request(0x00, Command.ANALOG_VALUES, b"\x00")
    with pytest.raises(ValueError, match="reserved"):
        encode_request(0xFF, Command.ANALOG_VALUES, b"\xff")


def _with_body(body: bytes) -> bytes:
    return b"~" + body + b"%04X\r" % frame_checksum(body)


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (b"20024600E00211", FrameError, "too short"),
        (b"~2002460000" + b"00FDAF", FrameError, "too short"),
        (b"~20024600E00211FD2A", FrameError, "must start"),
        (_with_body(b"20024600E00211").replace(b"~", b"#"), FrameError, "must start"),
        (_with_body(b"20024600F00211"), ChecksumError, "LCHKSUM"),
        (_with_body(b"20024600C00411"), FrameError, "LENID says 4"),
        (_with_body(b"20024600D0031FF"), FrameError, "odd number"),
        (_with_body(b"200246G0E00211"), FrameError, "non hex"),
    ],
)
def test_malformed_frames_raise_typed_errors(raw, error, message):
    with pytest.raises(error, match=message):
        decode_frame(raw)


@pytest.mark.parametrize("code", list(ReturnCode)[1:])
def test_every_return_code_names_itself(code):
    error = ResponseError(code, 0x05)
    assert f"(0x{code:02X})" in str(error)
    assert code.description in str(error)
    assert "0x05" in str(error)


def test_adr_error_message():
    assert str(ResponseError(0x90)) == "ADR error (0x90)"
    assert str(ResponseError(0x42)) == "unknown return code (0x42)"


@given(
    version=st.integers(0, 255),
    address=st.integers(0, 255),
    cid2=st.integers(0, 255),
    info=st.binary(max_size=300),
)
def test_encode_then_decode_is_identity(version, address, cid2, info):
    frame = Frame(version, address, 0x46, cid2, info)
    assert decode_frame(encode_frame(frame)) == frame


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_frame_or_a_typed_error(raw):
    with contextlib.suppress(PylontechError):
        decode_frame(raw)


hex_text = st.text("0123456789ABCDEF", max_size=80).map(str.encode)


@given(hex_text)
def test_frame_shaped_hex_gives_a_frame_or_a_typed_error(body):
    # Past the SOI/EOI and hex checks, into the length and checksum guards.
    with contextlib.suppress(PylontechError):
        frame = decode_frame(b"~" + body + b"\r")
        assert encode_frame(frame) == b"~" + body + b"\r"


@given(st.binary(min_size=1, max_size=60), st.integers(0, 10_000))
def test_a_flipped_character_is_always_detected(info, position):
    raw = bytearray(encode_frame(Frame(0x20, 0x02, 0x46, 0x00, info)))
    index = 1 + position % (len(raw) - 2)
    original = raw[index]
    raw[index] = ord("0") if original != ord("0") else ord("1")
    with pytest.raises(FrameError):
        decode_frame(bytes(raw))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Frame(0x20, 0x02, 0x4A, 0x00), "answer with CID1 0x4A, not a battery's (0x46)"),
        (Frame(0x10, 0x02, 0x46, 0x00), "answer with VER 0x10, not protocol version 2.x"),
        (Frame(0x35, 0x02, 0x46, 0x00), "answer with VER 0x35"),
    ],
)
def test_an_answer_from_another_protocol_on_the_bus_is_refused(frame, message):
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_envelope(frame)
    check_envelope(Frame(0x25, 0x02, 0x46, 0x00))  # 2.5: a battery's
