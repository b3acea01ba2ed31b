"""The per-request fast paths must answer exactly what the general paths answer.

``FrameDecoder.take_request`` (a read that is one whole request frame) against ``feed`` and
``decode_body``; the batched id generator and the table-driven timestamps against the
formats they replace.
"""

from __future__ import annotations

import struct
import uuid
from decimal import Decimal

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storeserver.errors import ProtocolError
from storeserver.protocol import (
    FrameDecoder,
    Hello,
    Request,
    Result,
    decode_body,
    encode,
    encode_request,
)
from storeserver.records import IdGenerator, Timestamps, format_timestamp


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_a_lone_request_frame_is_taken_as_feed_decodes_it() -> None:
    data = encode_request(7, "get", {"table": "t", "id": "a", "n": Decimal("1.50")})
    taken = FrameDecoder().take_request(data)
    assert taken is not None
    _, rid, command, args = taken
    assert Request(rid, command, args, len(data) - 4) == FrameDecoder().feed(data)[0]
    assert type(args["n"]) is Decimal and str(args["n"]) == "1.50"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00",
        encode_request(1, "get", {})[:-1],  # a part of a frame
        encode_request(1, "get", {}) * 2,  # two frames
        encode_request(1, "get", {}) + b"\x00",  # a frame and a part
        frame(b""),  # an empty body: feed reports it
        encode(Hello(1, None)),
        encode(Result(1, None)),
        frame(msgpack.packb([0, -1, "get", {}])),  # a malformed request
        frame(msgpack.packb([False, 1, "get", {}])),
        frame(msgpack.packb([0, 1, "get", []])),
    ],
)
def test_anything_else_is_left_to_feed(data: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.take_request(data) is None
    assert decoder.buffered == 0  # nothing consumed


def test_nothing_is_taken_after_buffered_bytes() -> None:
    data = encode_request(1, "get", {})
    decoder = FrameDecoder()
    assert decoder.feed(data[:2]) == []
    assert decoder.take_request(data) is None
    assert decoder.buffered == 2


def test_a_frame_over_the_limit_is_left_to_feed() -> None:
    data = encode_request(1, "get", {"id": "x" * 100})
    decoder = FrameDecoder(max_frame_size=50)
    assert decoder.take_request(data) is None
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(data)


def test_an_undecodable_frame_raises_what_feed_reports() -> None:
    data = frame(b"\xc1\xc1\xc1")
    _, error = FrameDecoder().feed_until_error(data)
    with pytest.raises(ProtocolError) as raised:
        FrameDecoder().take_request(data)
    assert error is not None and raised.value.message == error.message


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_random_bodies_are_taken_only_as_the_request_decode_body_makes(body: bytes) -> None:
    data = frame(body)
    try:
        expected = decode_body(body)
    except ProtocolError as exc:
        # Raised with the same message, or left to feed (an empty body, or bytes that
        # decode to something that is not a message: feed raises then).
        try:
            assert FrameDecoder().take_request(data) is None
        except ProtocolError as raised:
            assert raised.message == exc.message
        return
    taken = FrameDecoder().take_request(data)
    if type(expected) is Request:
        assert taken is not None
        assert Request(taken[1], taken[2], taken[3], len(body)) == expected
    else:
        assert taken is None


def test_generated_ids_are_uuid4_strings() -> None:
    ids = [IdGenerator()() for _ in range(3)] + IdGenerator._make(2048)
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize(
    "now", [0.0, 1.0, 1.000001, 1763896426.850545, 1763896426.000999, 1763896426.999999]
)
def test_timestamps_are_formatted_as_format_timestamp(now: float) -> None:
    stamp = Timestamps(lambda: now)
    first, second = stamp(), stamp()  # the clock stands still: +1 µs
    micros = max(int(now * 1_000_000), 1)
    assert first == format_timestamp(micros)
    assert second == format_timestamp(micros + 1)
