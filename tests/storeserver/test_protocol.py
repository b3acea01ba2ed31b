"""Codec tests: one table of (message, frame bytes) used for encode and decode."""

from __future__ import annotations

import itertools
import struct
from decimal import Decimal

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storeserver.errors import ProtocolError
from storeserver.protocol import (
    ERROR_MESSAGE_CUT,
    HANDSHAKE_FRAME_SIZE,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Request,
    Result,
    decode_body,
    encode,
    encode_error,
    handshake_frame_size,
)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# Expected bytes are written out by hand (msgpack spec), not produced by the code under test.
CASES = [
    (Hello(1, None), frame(b"\x93\xa5HELLO\x01\xc0")),
    (Hello(1, "s3cret"), frame(b"\x93\xa5HELLO\x01\xa6s3cret")),
    (Request(7, "get", {"id": "a"}), frame(b"\x94\x00\x07\xa3get\x81\xa2id\xa1a")),
    (Request(1, "ping", {}), frame(b"\x94\x00\x01\xa4ping\x80")),
    (Result(7, None), frame(b"\x93\x01\x07\xc0")),
    (Result(2, [1, True]), frame(b"\x93\x01\x02\x92\x01\xc3")),
    (Result(3, Decimal("9.99")), frame(b"\x93\x01\x03\xd6\x01" + b"9.99")),
    (
        Error(9, "NOT_FOUND", "gone", {"id": "x"}),
        frame(b"\x95\x02\x09\xa9NOT_FOUND\xa4gone\x81\xa2id\xa1x"),
    ),
]


@pytest.mark.parametrize(("message", "data"), CASES)
def test_encode(message, data):
    assert encode(message) == data


@pytest.mark.parametrize(("message", "data"), CASES)
def test_decode_whole(message, data):
    assert FrameDecoder().feed(data) == [message]


@pytest.mark.parametrize(("message", "data"), CASES)
def test_decode_byte_by_byte(message, data):
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == [message]
    assert decoder.buffered == 0


@pytest.mark.parametrize(("message", "data"), CASES)
def test_decode_with_trailing_bytes(message, data):
    decoder = FrameDecoder()
    assert decoder.feed(data + data[:3]) == [message]
    assert decoder.buffered == 3
    assert decoder.feed(data[3:]) == [message]
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk_keep_order():
    messages = [Request(i, "get", {"n": i}) for i in range(1, 50)]
    data = b"".join(encode(m) for m in messages)
    assert FrameDecoder().feed(data) == messages


def test_oversized_frame_is_refused_from_its_header():
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", 101))


def test_oversized_frame_after_buffered_bytes_is_refused_from_its_header():
    data = encode(Request(1, "get", {"id": "a"}))
    decoder = FrameDecoder(max_frame_size=100)
    assert decoder.feed(data[:5]) == []
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(data[5:] + struct.pack(">I", 101))


class CopyCountingBuffer(bytearray):
    """A decoder buffer that counts the bytes copied into it and out of it."""

    copied = 0

    def __iadd__(self, data):
        self.copied += len(data)
        return super().__iadd__(data)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if isinstance(index, slice):
            self.copied += len(item)
        return item

    def __bytes__(self):
        self.copied += len(self)
        return bytes(bytearray(self))


def test_a_frame_arriving_in_small_pieces_is_copied_a_bounded_number_of_times():
    # Copying the buffered prefix on every piece made a frame in n pieces cost O(n * size):
    # a peer could dribble a 16 MiB frame to hold the store's loop for seconds.
    message = Request(1, "insert", {"blob": "x" * 100_000})
    data = encode(message)
    decoder = FrameDecoder()
    decoder._buffer = buffer = CopyCountingBuffer()
    out = []
    for i in range(0, len(data), 100):
        out += decoder.feed(data[i : i + 100])
    assert out == [message]
    assert decoder.buffered == 0
    assert buffer.copied <= 2 * len(data)  # each byte appended once, the body sliced out once


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=1000), max_size=12), st.integers(1, 20))
def test_a_stream_split_anywhere_decodes_to_the_same_messages(cuts, count):
    sent = [Request(i, "get", {"pad": "p" * (i * 37 % 90)}) for i in range(count)]
    data = b"".join(encode(m) for m in sent)
    decoder = FrameDecoder()
    out = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        out += decoder.feed(data[start:end])
    assert out == sent
    assert decoder.buffered == 0


def test_frame_at_the_limit_is_accepted():
    body = msgpack.packb([1, 1, "x" * 80])
    decoder = FrameDecoder(max_frame_size=len(body))
    assert decoder.feed(frame(body)) == [Result(1, "x" * 80)]


def test_a_raised_limit_applies_to_the_frames_after_it():
    # The server starts a connection at a small limit and raises it once the peer is greeted.
    body = msgpack.packb([1, 1, "x" * 150])
    decoder = FrameDecoder(max_frame_size=100)
    with pytest.raises(ProtocolError, match="exceeds the limit of 100"):
        decoder.feed(frame(body))
    decoder = FrameDecoder(max_frame_size=100)
    decoder.max_frame_size = len(body)
    assert decoder.max_frame_size == len(body)
    assert decoder.feed(frame(body)) == [Result(1, "x" * 150)]


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty frame
        b"\xc1",  # reserved msgpack byte
        msgpack.packb({"not": "a list"}),
        msgpack.packb([]),
        msgpack.packb([0, 1, "get"]),  # request without args
        msgpack.packb([0, -1, "get", {}]),  # negative request id
        msgpack.packb([0, 1, "get", []]),  # args not a map
        msgpack.packb([0, 1, 5, {}]),  # command not a string
        msgpack.packb([9, 1, None]),  # unknown kind
        msgpack.packb([0, 1, "get", {1: "x"}]),  # non-string map key
        msgpack.packb([1, 1, msgpack.ExtType(5, b"x")]),  # unknown extension
        msgpack.packb([1, 1, msgpack.ExtType(1, b"NaN")]),  # non-finite decimal
        msgpack.packb([1, 1, msgpack.ExtType(1, b"1.2.3")]),  # malformed decimal
        msgpack.packb([1, 1, msgpack.ExtType(1, b"\xff")]),  # not ascii
        msgpack.packb([1, 1, None]) + b"\x00",  # trailing bytes inside the frame
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than msgpack allows
        msgpack.packb([0.0, 1, "ping", {}]),  # kinds are ints: 0.0 == 0 in Python, not here
        msgpack.packb([False, 1, "ping", {}]),
        msgpack.packb([True, 1, None]),
        msgpack.packb([2.0, 1, "X", "m", {}]),
    ],
)
def test_malformed_bodies_raise_protocol_error(body):
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(frame(body))


def test_messages_before_a_bad_frame_come_back_with_its_error():
    hello, request = Hello(1, None), Request(1, "ping", {})
    data = encode(hello) + encode(request) + frame(b"\xc1") + encode(request)
    messages, error = FrameDecoder().feed_until_error(data)
    assert messages == [hello, request]
    assert isinstance(error, ProtocolError)
    assert FrameDecoder().feed_until_error(encode(request)) == ([request], None)


def test_an_error_over_the_frame_limit_is_cut_to_fit():
    """A message or details quoting a client's huge value would pass the frame limit, and
    the client would drop the connection with every call in flight on it."""
    big = "x" * 2_000_000
    details = {"table": "t", "id": big, "n": 1}
    data = encode_error(5, "NOT_FOUND", f"no record {big!r}", details, max_size=1 << 20)
    assert len(data) - 4 <= 1 << 20
    (error,) = FrameDecoder().feed(data)
    assert error.request_id == 5 and error.code == "NOT_FOUND"
    assert error.message == "no record '" + "x" * (ERROR_MESSAGE_CUT - 11) + "... (cut)"
    assert error.details == {"truncated": True, "table": "t", "n": 1}
    # Within the limit an error is sent as it is.
    small = encode_error(5, "NOT_FOUND", "gone", {"id": "a"}, max_size=1 << 20)
    assert small == encode(Error(5, "NOT_FOUND", "gone", {"id": "a"}))


def test_the_handshake_limit_fits_the_secret():
    assert handshake_frame_size(None) == HANDSHAKE_FRAME_SIZE == 4096
    secret = "s" * 10_000
    hello = encode(Hello(PROTOCOL_VERSION, secret))
    assert handshake_frame_size(secret) == len(hello) - 4
    assert FrameDecoder(handshake_frame_size(secret)).feed(hello) == [Hello(1, secret)]


def test_encode_refuses_values_the_wire_cannot_carry():
    with pytest.raises(ProtocolError):
        encode(Result(1, {"x": {1, 2}}))
    with pytest.raises(ProtocolError):
        encode(Result(1, 2**70))
    with pytest.raises(ProtocolError):
        encode(Result(1, Decimal("Infinity")))


def test_decimal_round_trip_is_exact():
    value = Decimal("12345678901234567890.000000000000000001")
    assert decode_body(encode(Result(1, value))[4:]) == Result(1, value)


def test_version_is_an_int():
    assert isinstance(PROTOCOL_VERSION, int)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_protocol_error(data):
    decoder = FrameDecoder(max_frame_size=1024)
    try:
        messages = decoder.feed(data)
    except ProtocolError:
        return
    assert all(isinstance(m, Hello | Request | Result | Error) for m in messages)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_random_frame_bodies_decode_or_raise_protocol_error(body):
    try:
        message = decode_body(body)
    except ProtocolError:
        return
    assert isinstance(message, Hello | Request | Result | Error)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**63 - 1), st.text(max_size=20), values)
def test_request_and_result_round_trip(rid, command, value):
    decoder = FrameDecoder()
    sent = [Request(rid, command, {"v": value}), Result(rid, value)]
    assert decoder.feed(b"".join(encode(m) for m in sent)) == sent


def test_may_hold_cancel_looks_only_at_bytes_buffered_since_it_last_looked():
    decoder = FrameDecoder()
    cancel = encode(Request(0, "cancel", {"request": 1}))
    pings = b"".join(encode(Request(i, "ping", {})) for i in range(1, 4))
    assert decoder.may_hold_cancel() is False  # nothing buffered
    decoder.feed_until_error(pings + cancel, 1)  # two pings and the cancel stay buffered
    assert decoder.may_hold_cancel() is True
    assert decoder.may_hold_cancel() is False  # not grown since: not searched again
    decoder.feed_until_error(b"", 5)  # decoded, the buffer empty
    decoder.feed_until_error(pings, 1)
    assert decoder.may_hold_cancel() is False  # grown, but with no cancel
    decoder.feed_until_error(cancel[:5], 0)
    decoder.feed_until_error(cancel[5:], 0)
    assert decoder.may_hold_cancel() is True  # its name split across two reads
