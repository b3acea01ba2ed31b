"""A server's decoder bounds the entries of each frame while decoding it (``max_entries``,
``protocol.MAX_REQUEST_ENTRIES``): before, a 16 MiB frame of empty maps was decoded into 16
million dicts (~1 GB, seconds of the store's only thread) before the store's own value count
(``records.MAX_VALUES``) could refuse it."""

from __future__ import annotations

import asyncio
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from storeserver.errors import NotFound, ProtocolError
from storeserver.protocol import (
    MAX_REQUEST_ENTRIES,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Request,
    Result,
    encode,
    encode_request,
)
from storeserver.records import MAX_VALUES

LIMIT = 100  # frames of more than 50 bytes are counted


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def entries(value: Any) -> int:
    """The entries of ``value`` as the module doc defines them, counted independently: each
    map, list and Decimal once, and each item of a list or pair of a map once."""
    if type(value) is list:
        return 1 + len(value) + sum(map(entries, value))
    if type(value) is dict:
        return 1 + len(value) + sum(map(entries, value.values()))
    return 1 if type(value) is Decimal else 0


def request_of(value: Any) -> bytes:
    """A request frame whose args hold ``value``."""
    return encode_request(1, "insert", {"v": value})


def request_entries(value: Any) -> int:
    return entries([0, 1, "insert", {"v": value}])


def padded(count: int) -> list[Any]:
    """A value whose request frame holds exactly ``count`` entries: empty maps (two each, as
    an item and as a map) and a zero if one more is needed."""
    base = request_entries([])
    value: list[Any] = [{}] * ((count - base) // 2) + [0] * ((count - base) % 2)
    assert request_entries(value) == count
    return value


def test_a_frame_of_exactly_the_limit_decodes_and_one_more_entry_is_refused() -> None:
    at_limit = padded(LIMIT)
    assert FrameDecoder(max_entries=LIMIT).feed(request_of(at_limit)) == [
        Request(1, "insert", {"v": at_limit}, len(request_of(at_limit)) - 4)
    ]
    with pytest.raises(ProtocolError, match=f"more than {LIMIT} entries"):
        FrameDecoder(max_entries=LIMIT).feed(request_of(padded(LIMIT + 1)))


@pytest.mark.parametrize(
    "value",
    [
        [[{}] * 30, [{}] * 30, [{}] * 30],  # no list too long, and many maps in all
        [[[[{}] * 30] * 2] * 2],  # nested: each map counts when it is complete
        [Decimal("1.5")] * 60,  # a Decimal is counted before it is made
        {f"k{n}": {} for n in range(60)},
        [[0] * 40, [0] * 40, [0] * 40],  # scalars count with their list
    ],
    ids=["sibling lists of maps", "nested lists of maps", "decimals", "map of maps", "ints"],
)
def test_a_frame_of_too_many_entries_is_refused_in_any_shape(value: Any) -> None:
    assert request_entries(value) > LIMIT
    data = request_of(value)
    decoder = FrameDecoder(max_entries=LIMIT)
    assert decoder.take_request(data) is None  # not the fast path's: nothing consumed
    messages, error = decoder.feed_until_error(encode(Request(5, "ping", {})) + data)
    assert messages == [Request(5, "ping", {}, 9)]  # what came before it is decoded
    assert error is not None and f"more than {LIMIT}" in error.message


def test_one_map_or_list_longer_than_the_limit_is_refused_from_its_header() -> None:
    with pytest.raises(ProtocolError, match=f"a map or list of more than {LIMIT} items"):
        FrameDecoder(max_entries=LIMIT).feed(request_of([0] * (LIMIT + 1)))
    # A header announcing 65,535 items, with only 60 after it: refused before any is built.
    body = b"\x94\x00\x01\xa6insert\x81\xa1v\xdc\xff\xff" + b"\x00" * 60
    with pytest.raises(ProtocolError, match=f"a map or list of more than {LIMIT} items"):
        FrameDecoder(max_entries=LIMIT).feed(frame(body))


def test_small_frames_are_not_counted_and_a_client_decoder_counts_nothing() -> None:
    """A frame of at most ``max_entries // 2`` bytes cannot hold more entries (each takes at
    least half a byte): it takes the fast path. A reply may hold many records at their own
    limit: a client's decoder has no bound."""
    small = request_of([{}] * 10)
    assert len(small) - 4 <= LIMIT // 2 and request_entries([{}] * 10) < LIMIT
    assert FrameDecoder(max_entries=LIMIT).take_request(small) == [0, 1, "insert", {"v": [{}] * 10}]
    big = request_of([{}] * 1000)
    (request,) = FrameDecoder().feed(big)
    assert isinstance(request, Request) and len(request.args["v"]) == 1000


def test_the_servers_limit_holds_any_request_the_store_takes() -> None:
    """A record, patch or operand of ``MAX_VALUES`` values takes at most two entries a value
    (a map in a list is an item and a map): two of them, with what wraps them, fit."""
    record: dict[str, Any] = {"v": [{}] * (MAX_VALUES - 2)}  # exactly MAX_VALUES values: all maps
    args = {"table": "t", "changes": record, "where": [["v", "eq", record["v"]]]}
    assert entries(record) < 2 * MAX_VALUES
    assert entries([0, 1, "update_where", args]) <= MAX_REQUEST_ENTRIES
    data = encode_request(1, "update_where", args)
    (request,) = FrameDecoder(max_entries=MAX_REQUEST_ENTRIES).feed(data)
    assert isinstance(request, Request) and len(request.args["changes"]["v"]) == MAX_VALUES - 2


def test_a_16_mib_frame_of_empty_maps_is_refused() -> None:
    """QA's frame: 16 million empty maps, here in lists that each pass the per-list limit."""
    per, lists = 1_000_000, 16
    body = b"\xdc" + struct.pack(">H", lists)
    body += (b"\xdd" + struct.pack(">I", per) + b"\x80" * per) * lists
    with pytest.raises(ProtocolError, match=f"more than {MAX_REQUEST_ENTRIES} entries"):
        FrameDecoder(max_entries=MAX_REQUEST_ENTRIES).feed(frame(body))
    # The same maps one list deeper each time: each is counted when it is complete.
    nested = b"".join(b"\xdd" + struct.pack(">I", per + 1) + b"\x80" * per for _ in range(lists))
    with pytest.raises(ProtocolError, match=f"more than {MAX_REQUEST_ENTRIES} entries"):
        FrameDecoder(max_entries=MAX_REQUEST_ENTRIES).feed(frame(nested + b"\x90"))


async def test_the_server_drops_a_connection_sending_too_many_entries(server, client) -> None:
    """As for any malformed frame: the requests before it are answered, the reason is logged
    and sent, and only that connection is closed."""
    per = 1_000_000
    body = b"\x94\x00\x02\xa6insert\x81\xa6record\x81\xa1v\x93"
    body += (b"\xdd" + struct.pack(">I", per) + b"\x80" * per) * 3
    reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
    with capture_logs() as logs:
        writer.write(encode(Hello(PROTOCOL_VERSION, None)) + encode(Request(1, "ping", {})))
        writer.write(frame(body))
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), 10)  # until the server closes it
    writer.close()
    reason = (
        f"frame of more than {MAX_REQUEST_ENTRIES} entries (maps, lists, their items,"
        " decimals) after the handshake"
    )
    hello, pong, error = FrameDecoder().feed(closed)
    assert isinstance(hello, Hello) and isinstance(pong, Result) and pong.request_id == 1
    assert error == Error(0, "PROTOCOL_ERROR", reason, {})
    (dropped,) = [x for x in logs if x.get("event") == "client_dropped"]
    assert dropped["reason"] == reason
    assert (await client.call("ping"))["pong"]
    with pytest.raises(NotFound):  # nothing of it was run
        await client.call("count", {"table": "t"})


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.text(max_size=3)
    | st.decimals(-9, 9, places=1),
    lambda children: (
        st.lists(children, max_size=12)
        | st.dictionaries(st.text(max_size=2), children, max_size=12)
    ),
    max_leaves=60,
)


@settings(max_examples=300)
@given(values)
def test_a_frame_decodes_as_unbounded_within_the_limit_and_is_refused_past_it(value: Any) -> None:
    data = request_of(value)
    whole = FrameDecoder().feed(data)
    if len(data) - 4 > LIMIT // 2 and request_entries(value) > LIMIT:
        with pytest.raises(ProtocolError):
            FrameDecoder(max_entries=LIMIT).feed(data)
    else:
        assert FrameDecoder(max_entries=LIMIT).feed(data) == whole
