"""Long reads run as jobs (``builds.ChunkedRead``) through the server, with the world changing
between their steps: rows written, indexes dropped and re-created, schemas set, a snapshot
forked, the client gone, the store stopping. Each answers as of its start, or is abandoned."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from storeserver import __version__
from storeserver import connection as connection_module
from storeserver import scheduler as scheduler_module
from storeserver.builds import CHUNK, ChunkedRead
from storeserver.client import StoreClient
from storeserver.connection import StoreConnection
from storeserver.datadir import DataDir
from storeserver.engine import Engine
from storeserver.errors import StoreBusy, StoreTimeout
from storeserver.protocol import (
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Request,
    encode,
    encode_request,
)
from storeserver.scans import MAX_SCAN_IDS, scan_ids_for
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.storeserver.jobs import (
    HeldReads,
    RecordingTransport,
    connect,
    finish,
    sent_ids,
    wait_until,
)

BIG = CHUNK * 2 + 7


# -- helpers -------------------------------------------------------------------------------


def _insert(rid: int, ident: str) -> bytes:
    return encode_request(rid, "insert", {"table": "t", "record": {"id": ident}})


def _filled_engine(rows: int = BIG) -> Engine:
    engine = Engine(journal=False, max_batch=rows)
    engine.execute(
        "batch",
        {
            "ops": [
                {"op": "insert", "table": "t", "record": {"id": f"r{i}", "n": i % 100}}
                for i in range(rows)
            ]
        },
    )
    return engine


async def test_chunked_reads_of_a_dropped_connection_are_abandoned(sock_dir) -> None:
    """A long read whose client has gone is aborted at once (``connection_lost``), rather
    than stepped to its end (each job holds a copy of its candidate rows) for a reply nobody
    reads."""
    engine = Engine(journal=False)
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=engine)
    await server.start()
    stepped = 0
    release = False

    def long_read() -> Any:  # a find over a huge table: a step per loop turn, for long
        nonlocal stepped
        while not release:
            stepped += 1
            yield
        return {"items": [], "total": 0}

    real_execute = engine.execute

    def execute(command: str, args: dict[str, Any], **kw: Any) -> Any:
        if command == "find":
            return ChunkedRead("find", long_read())
        return real_execute(command, args, **kw)

    engine.execute = execute  # type: ignore[method-assign]
    try:
        _reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
        writer.write(encode(Hello(PROTOCOL_VERSION, None)))
        writer.write(b"".join(encode_request(i, "find", {"table": "t"}) for i in range(1, 6)))
        await writer.drain()
        await wait_until(lambda: server.jobs == 5)
        writer.close()
        await wait_until(lambda: not server.connections)
        at_close = stepped
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        assert stepped - at_close <= 5, f"{stepped - at_close} steps ran for a closed connection"
        assert server.jobs == 0
    finally:
        release = True
        await wait_until(lambda: server.jobs == 0)
        await server.shutdown()


# -- shutdown with a job in progress -----------------------------------------------------------


async def test_shutdown_does_not_leave_a_job_running_past_the_final_snapshot(
    sock_dir, tmp_path, monkeypatch
) -> None:
    """Shutdown aborts the jobs still running before the final snapshot: none goes on to
    journal into the closed log (a ``create_index`` once did, setting off a persistence
    failure after the store had stopped)."""
    from storeserver import builds
    from storeserver import definitions as definitions_module
    from storeserver.client import StoreClient
    from storeserver.errors import StoreUnavailable

    monkeypatch.setattr(builds, "CHUNK", 2)
    monkeypatch.setattr(definitions_module, "CHUNK", 2)
    monkeypatch.setattr(scheduler_module, "JOB_BUDGET", 0.0)  # a step per loop turn: slow
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="no")
    server = StoreServer(settings)
    await server.start()
    client = StoreClient(f"unix:{settings.socket}", timeout=5.0)
    await client.connect()
    for _ in range(10):  # 10,000 rows, 5,000 steps: still building when the stop comes
        ops = [{"op": "insert", "table": "t", "record": {"k": i % 7}} for i in range(1000)]
        await client.call("batch", {"ops": ops})
    build = asyncio.ensure_future(client.call("create_index", {"table": "t", "field": "k"}))
    for _ in range(10_000):
        if server.jobs:
            break
        await asyncio.sleep(0)
    assert server.jobs == 1
    await server.shutdown()
    running_after_shutdown = server.jobs
    await wait_until(lambda: server.jobs == 0)  # the job goes on to its end regardless
    await asyncio.sleep(0.05)
    with pytest.raises(StoreUnavailable, match="stopping"):  # aborted: never applied
        await build
    await client.close()
    assert server.durability is not None
    assert running_after_shutdown == 0, "a job was still running after shutdown"
    assert server.durability.error is None, server.durability.error


# -- answers as of the start -------------------------------------------------------------------


def _users_engine() -> Engine:
    """``users``: BIG rows with a hidden ``password_hash``, a hash index on ``team`` (two
    buckets over a chunk each) and a unique casefold ``email``."""
    engine = Engine(journal=False, max_batch=BIG)
    engine.execute(
        "create_table",
        {
            "table": "users",
            "indexes": [{"field": "team"}, {"field": "email", "unique": True, "casefold": True}],
            "hidden": ["password_hash"],
        },
    )
    engine.execute(
        "batch",
        {
            "ops": [
                {
                    "op": "insert",
                    "table": "users",
                    "record": {
                        "id": f"u{i}",
                        "email": f"u{i}@x",
                        "team": "a" if i % 2 else "b",
                        "score": i % 17,
                        "password_hash": f"secret{i}",
                    },
                }
                for i in range(BIG)
            ]
        },
    )
    return engine


def _mess_with(engine: Engine) -> None:
    """Writes and schema changes a chunked read must survive between its steps."""
    engine.execute("delete", {"table": "users", "id": "u1"})
    engine.execute("delete", {"table": "users", "id": "u19999"})
    engine.execute("patch", {"table": "users", "id": "u3", "changes": {"team": "b", "score": 99}})
    engine.execute("insert", {"table": "users", "record": {"id": "late", "team": "a", "score": 0}})
    engine.execute("drop_index", {"table": "users", "field": "team"})
    engine.run_job(engine.execute("create_index", {"table": "users", "field": "score"}))
    engine.execute("create_table", {"table": "users", "indexes": [{"field": "team"}]})
    engine.run_job(engine.execute("set_schema", {"table": "users", "schema": {"type": "object"}}))


FINDS: list[dict[str, Any]] = [
    # through a live index bucket (team = "a": > CHUNK ids), sorted, a page across a chunk edge
    {"where": [["team", "eq", "a"]], "sort": [["score", "desc"]], "offset": 9_998, "limit": 5},
    # newest first, filtered, projected
    {
        "where": [["score", "gte", 10]],
        "sort": [["created_at", "desc"]],
        "offset": 4_000,
        "limit": 3,
        "fields": ["email", "score"],
    },
    # a mixed-direction sort with a deep page (sorted runs merged)
    {"sort": [["team", "asc"], ["score", "desc"]], "offset": 12_000, "limit": 4},
    # include_hidden: the one caller allowed to see the hash
    {
        "where": [["team", "in", ["a", "b"]]],
        "sort": [["email", "asc"]],
        "include_hidden": True,
        "offset": 15_000,
        "limit": 2,
    },
]


@pytest.mark.parametrize("find", FINDS)
def test_a_chunked_find_answers_as_of_its_start_whatever_happens_between_steps(find) -> None:
    engine = _users_engine()
    args = {"table": "users", **find}
    expected = engine.run_job(engine.execute("find", args))
    job = engine.execute("find", args)
    assert isinstance(job, ChunkedRead)
    assert engine.advance(job) == (False, None)
    _mess_with(engine)
    _, result = finish(engine, job)
    assert result == expected
    for item in result["items"]:
        assert ("password_hash" in item) is bool(find.get("include_hidden"))
        if "fields" in find:
            assert set(item) == {"id", *find["fields"]}


@pytest.mark.parametrize("stepped", [True, False])
def test_a_chunked_find_does_not_answer_a_projected_field_hidden_between_its_steps(
    stepped: bool,
) -> None:
    """Also hidden before its first step, a loop turn after the find was read (review)."""
    engine = _users_engine()
    args = {"table": "users", "where": [["score", "gte", 0]], "fields": ["email", "score"]}
    job = engine.execute("find", args)
    assert isinstance(job, ChunkedRead)
    if stepped:
        assert engine.advance(job) == (False, None)
    engine.execute("create_table", {"table": "users", "hidden": ["score"]})
    _, result = finish(engine, job)
    assert result["items"] and all(set(item) == {"id", "email"} for item in result["items"])


def test_chunked_count_aggregate_and_join_survive_schema_changes_between_steps() -> None:
    engine = _users_engine()
    count = {"table": "users", "where": [["team", "eq", "a"], ["score", "lt", 5]]}
    aggregate = {
        "table": "users",
        "where": [["team", "eq", "a"]],
        "group_by": ["score"],
        "metrics": [{"op": "count", "as": "n"}],
        "sort": [["n", "desc"], ["score", "asc"]],
    }
    join = {"left": "users", "right": "users", "left_field": "id", "right_field": "id"}
    expected = [
        engine.run_job(engine.execute(name, args))
        for name, args in (("count", count), ("aggregate", aggregate), ("join", join))
    ]
    jobs = [
        engine.execute(name, args)
        for name, args in (("count", count), ("aggregate", aggregate), ("join", join))
    ]
    for job in jobs:
        assert isinstance(job, ChunkedRead)
        assert engine.advance(job) == (False, None)
    _mess_with(engine)
    got = [finish(engine, job)[1] for job in jobs]
    assert got[0] == expected[0] and got[1] == expected[1]
    # The join probes the live id map: u0's pair was counted in the first step (one row:
    # builds.Pace), u1 and u19999 (in later slices) are gone when their slice is read.
    assert got[2]["total"] == expected[2]["total"] - 2
    for left, right in got[2]["items"]:
        assert "password_hash" not in left and "password_hash" not in right


async def test_concurrent_chunked_reads_and_a_snapshot_fork_through_the_server(
    sock_dir, tmp_path, monkeypatch
) -> None:
    """Several chunked reads in flight on one connection, writes between their steps and a
    snapshot forked while they run: each read answers as of its start, the snapshot and the
    log together give the state back."""
    # All five reads start in the turn that reads them: on a loaded machine the 2 ms turn
    # could end after three (the rest start a turn later, which this test does not count on).
    monkeypatch.setattr(connection_module, "TURN_BUDGET", 60.0)
    settings = StoreSettings(socket=sock_dir / "s.sock", data_dir=tmp_path / "data", fsync="no")
    server = StoreServer(settings)
    dur = server.durability
    assert dur is not None
    dur.load()
    dur.start(asyncio.get_running_loop())
    transport = RecordingTransport()
    conn = StoreConnection(server)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(encode(Hello(PROTOCOL_VERSION, None)))
    try:
        for start in range(0, BIG, 1000):
            ops = [
                {"op": "insert", "table": "t", "record": {"id": f"r{i}", "n": i % 100}}
                for i in range(start, min(start + 1000, BIG))
            ]
            conn.data_received(encode_request(1, "batch", {"ops": ops}))
        await asyncio.sleep(0)
        reads = [
            ("find", {"table": "t", "sort": [["n", "desc"]], "offset": 12_345, "limit": 7}),
            ("find", {"table": "t", "where": [["n", "lt", 3]], "sort": [["created_at", "desc"]]}),
            ("count", {"table": "t", "where": [["n", "gte", 50]]}),
            (
                "aggregate",
                {"table": "t", "group_by": ["n"], "metrics": [{"op": "count", "as": "c"}]},
            ),
            (
                "join",
                {
                    "left": "t",
                    "right": "t",
                    "left_field": "n",
                    "right_field": "n",
                    "where": [["n", "eq", 7]],
                    "offset": 500,
                    "limit": 3,
                },
            ),
        ]
        expected = {
            100 + i: server.engine.run_job(server.engine.execute(name, dict(args)))
            for i, (name, args) in enumerate(reads)
        }
        transport.data.clear()
        conn.data_received(
            b"".join(encode_request(100 + i, name, args) for i, (name, args) in enumerate(reads))
            + encode_request(200, "snapshot", {})
        )
        assert server.jobs == len(reads)
        for i in range(20):  # writes between the steps
            conn.data_received(_insert(300 + i, f"w{i}"))
            await asyncio.sleep(0)
        conn.data_received(encode_request(400, "delete", {"table": "t", "id": "r7"}))

        def answered() -> dict[int, Any]:
            return {m.request_id: m.value for m in FrameDecoder().feed(bytes(transport.data))}

        await wait_until(lambda: {*expected, 200, 400} <= answered().keys())
        got = answered()
        for rid, value in expected.items():
            assert got[rid] == value, reads[rid - 100]
        assert server.jobs == 0
        assert got[200]["generation"] >= 1
        await asyncio.sleep(0.05)
        replayed = Engine()
        DataDir(dur.dir.root).load(replayed.apply_change)
        assert list(replayed.iter_state()) == list(server.engine.iter_state())
    finally:
        dur.close()


# -- turns: at most SCAN_JOBS long reads at once ----------------------------------------------


async def _open(server: StoreServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(server.settings.socket))
    writer.write(encode(Hello(PROTOCOL_VERSION, None)))
    await writer.drain()
    return reader, writer


async def _replies(reader: asyncio.StreamReader, count: int) -> dict[int, Any]:
    """The next ``count`` replies (after the server's hello), by request id."""
    decoder, out = FrameDecoder(), {}
    while len(out) < count:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "the server closed the connection"
        for message in decoder.feed(data):
            if not isinstance(message, Hello):
                out[message.request_id] = message
    return out


async def _serving_held_reads(
    sock_dir: Any, monkeypatch: pytest.MonkeyPatch, read_jobs: int
) -> tuple[StoreServer, HeldReads]:
    monkeypatch.setattr(scheduler_module, "SCAN_JOBS", read_jobs)
    engine = Engine(journal=False)
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=engine)
    held = HeldReads(engine)
    await server.start()
    return server, held


def _finds(rids: range) -> bytes:
    """A held read per request id (its ``total`` will be the id)."""
    return b"".join(encode_request(i, "find", {"table": "t", "n": i}) for i in rids)


async def test_long_reads_past_the_cap_wait_as_requests_and_all_answer(
    sock_dir, monkeypatch
) -> None:
    """Two long reads run; three more wait as requests (their row lists dropped at once),
    start as turns free up, and every one answers its own request."""
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 2)
    try:
        reader, writer = await _open(server)
        writer.write(_finds(range(1, 6)))
        await writer.drain()
        await wait_until(lambda: held.executed == 5)
        await asyncio.sleep(0.05)  # turns for the running reads: the waiting stay waiting
        assert server.jobs == 2
        assert len(server.waiting) == 3
        assert server.server_stats()["jobs_waiting"] == 3
        assert held.alive == 2  # the waiting hold no row list
        held.release = True
        replies = await _replies(reader, 5)
        assert {rid: reply.value["total"] for rid, reply in replies.items()} == {
            i: i for i in range(1, 6)
        }
        assert held.executed == 8  # each waiting read ran again when it got its turn
        assert server.jobs == 0 and not server.waiting
        assert server.op_stats.as_dict()["find"]["count"] == 5  # counted once each
        writer.close()
    finally:
        held.release = True
        await server.shutdown()


async def test_past_the_waiting_cap_long_reads_are_refused_busy_and_the_client_raises(
    sock_dir, monkeypatch
) -> None:
    monkeypatch.setattr(scheduler_module, "WAITING_SCANS", 2)
    monkeypatch.setattr(scheduler_module, "WAITING_PER_CONNECTION", 1)
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    client = StoreClient(f"unix:{server.settings.socket}", timeout=5.0)
    try:
        reader, writer = await _open(server)
        writer.write(_finds(range(1, 6)))
        await writer.drain()
        refused = await _replies(reader, 2)
        assert sorted(refused) == [4, 5]
        for reply in refused.values():
            assert isinstance(reply, Error)
            assert reply.code == "STORE_BUSY"
            assert reply.details == {"max": 2}
        assert server.jobs == 1 and len(server.waiting) == 2
        # Another connection still gets one place, then is refused as the first was.
        waiting = asyncio.create_task(client.call("find", {"table": "t", "n": 8}))
        await wait_until(lambda: len(server.waiting) == 3)
        with pytest.raises(StoreBusy):  # not retried: that would add to the queue
            await client.call("find", {"table": "t", "n": 9})
        assert held.executed == 7
        assert await client.call("ping") == {"pong": True, "ready": True, "version": __version__}
        held.release = True
        assert sorted(await _replies(reader, 3)) == [1, 2, 3]
        assert (await waiting)["total"] == 8
        writer.close()
    finally:
        held.release = True
        await client.close()
        await server.shutdown()


async def test_waiting_reads_of_a_dropped_connection_are_dropped(sock_dir, monkeypatch) -> None:
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    try:
        _reader, leaving = await _open(server)
        staying_reader, staying = await _open(server)
        leaving.write(_finds(range(1, 4)))
        await leaving.drain()
        await wait_until(lambda: len(server.waiting) == 2)
        staying.write(_finds(range(7, 8)))
        await staying.drain()
        await wait_until(lambda: len(server.waiting) == 3)
        leaving.close()
        await wait_until(lambda: len(server.connections) == 1)
        assert not server.waiting  # the staying read has the turn now
        assert server.jobs == 1
        held.release = True
        replies = await _replies(staying_reader, 1)
        assert replies[7].value["total"] == 7
        assert held.executed == 5  # 3 + 1, and the staying read once more: none of the dropped
        staying.close()
    finally:
        held.release = True
        await server.shutdown()


async def test_a_waiting_read_answers_as_of_when_it_starts(sock_dir, monkeypatch) -> None:
    """On the real engine: the first long read answers as of its start; the second waited,
    so it sees the insert sent after both (it started after that insert ran)."""
    monkeypatch.setattr(scheduler_module, "SCAN_JOBS", 1)
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=_filled_engine())
    await server.start()
    try:
        reader, writer = await _open(server)
        where = [["n", "lt", 50]]  # no index on n: a scan of every row, in chunks
        writer.write(
            encode_request(1, "find", {"table": "t", "where": where, "limit": 1})
            + encode_request(2, "find", {"table": "t", "where": where, "limit": 1})
            + encode_request(3, "insert", {"table": "t", "record": {"id": "new", "n": 1}})
        )
        await writer.drain()
        replies = await _replies(reader, 3)
        before = sum(1 for i in range(BIG) if i % 100 < 50)
        assert replies[1].value["total"] == before
        assert replies[2].value["total"] == before + 1
        assert replies[3].value["id"] == "new"
        writer.close()
    finally:
        await server.shutdown()


def _connection(server: StoreServer) -> StoreConnection:
    conn = StoreConnection(server)
    conn.connection_made(RecordingTransport())  # type: ignore[arg-type]
    conn.greeted = True
    return conn


def _find(rid: int) -> Request:
    return Request(rid, "find", {"table": "t", "n": rid})


async def test_a_turn_freed_by_a_closed_connection_goes_to_the_waiting_read(
    sock_dir, monkeypatch
) -> None:
    """Waiting reads start in arrival order, also when the turn is freed by a client leaving
    (``cancel_jobs``): a long read arriving in the same loop turn waits behind them."""
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    leaving, waiting, newcomer = (_connection(server) for _ in range(3))
    try:
        assert server.handle(_find(1), leaving) is None  # runs
        assert server.handle(_find(2), waiting) is None  # waits for the turn
        assert [w.request.request_id for w in server.waiting] == [2]
        leaving.connection_lost(None)  # its read is cancelled: the turn is free
        assert server.handle(_find(3), newcomer) is None  # arrives in the same loop turn
        # the read that waited should have the turn; the newcomer should wait behind it
        assert [w.request.request_id for w in server.waiting] == [3]
    finally:
        held.release = True
        await server.shutdown()


async def test_a_freed_turn_goes_to_a_connection_with_fewer_long_reads_running(
    sock_dir, monkeypatch
) -> None:
    """QA: one client that sent 1,100 long counts (never stalled: their replies were small)
    took every turn in arrival order, and another client's one count waited 6-26 s. A freed
    turn goes to the first waiting read of the connections with the fewest running."""
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 2)
    released: set[int] = set()

    def read(n: int) -> Any:
        held.alive += 1
        try:
            while not held.release and n not in released:
                yield
            return {"items": [], "total": n}
        finally:
            held.alive -= 1

    held._read = read  # type: ignore[method-assign]
    busy, other = _connection(server), _connection(server)
    try:
        for rid in range(1, 6):  # 1 and 2 run, 3-5 wait
            assert server.handle(_find(rid), busy) is None
        assert server.handle(_find(6), other) is None  # waits behind them
        assert [w.request.request_id for w in server.waiting] == [3, 4, 5, 6]
        released.add(1)
        await wait_until(lambda: sent_ids(busy.transport) == [1])
        assert [w.request.request_id for w in server.waiting] == [3, 4, 5]  # 6 runs
        released.add(6)
        await wait_until(lambda: sent_ids(other.transport) == [6])
        assert [w.request.request_id for w in server.waiting] == [4, 5]  # then busy's next
        held.release = True
        await wait_until(lambda: sent_ids(busy.transport) == [1, 2, 3, 4, 5])
    finally:
        held.release = True
        await server.shutdown()


async def test_a_stop_answers_what_it_did_not_run_as_unavailable(sock_dir, monkeypatch) -> None:
    """QA: a clean stop closed the connections on requests read and not run, and long ones
    running or waiting: a write's client saw an unknown outcome. Each is answered
    STORE_UNAVAILABLE (never applied: safe to send again); what ran keeps its answer."""
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    monkeypatch.setattr(connection_module, "TURN_BUDGET", 0.0)  # one request per turn
    reads, writes = _connection(server), _connection(server)
    try:
        assert server.handle(_find(1), reads) is None  # runs
        assert server.handle(_find(2), reads) is None  # waits for a turn
        frames = [
            encode_request(i, "insert", {"table": "w", "record": {"id": f"w{i}"}})
            for i in range(10, 80)  # more than a turn decodes: the rest stay bytes
        ]
        writes.data_received(b"".join(frames))  # the first runs, the rest wait
        await server.shutdown()
    finally:
        held.release = True
    ran = FrameDecoder().feed(bytes(writes.transport.data))  # type: ignore[attr-defined]
    assert [m.request_id for m in ran] == list(range(10, 80))
    assert not isinstance(ran[0], Error)
    refused = [m for m in ran[1:] if isinstance(m, Error) and m.code == "STORE_UNAVAILABLE"]
    assert len(refused) == 69
    assert server.engine.execute("count", {"table": "w"}) == 1
    long_ones = FrameDecoder().feed(bytes(reads.transport.data))  # type: ignore[attr-defined]
    assert [(m.request_id, m.code) for m in long_ones] == [
        (1, "STORE_UNAVAILABLE"),
        (2, "STORE_UNAVAILABLE"),
    ]


async def test_a_client_that_does_not_read_starts_no_more_long_reads_until_it_does(
    sock_dir, monkeypatch
) -> None:
    """QA: 150 pipelined long finds never read held 191 MB: each waiting read started as a
    turn freed and added its whole reply to the buffer. A waiting read of a connection whose
    transport is full stays first in line while another connection's goes ahead; it starts
    once its client reads again."""
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    stalled, other = _connection(server), _connection(server)
    try:
        assert server.handle(_find(1), stalled) is None  # runs
        assert server.handle(_find(2), stalled) is None  # waits
        assert server.handle(_find(3), other) is None  # waits behind it
        stalled.pause_writing()  # its client stopped reading
        held.release = True
        await wait_until(lambda: server.jobs == 0)
        assert sent_ids(other.transport) == [3]
        assert sent_ids(stalled.transport) == [1]  # it was running
        assert [w.request.request_id for w in server.waiting] == [2]
        stalled.resume_writing()
        await wait_until(lambda: sent_ids(stalled.transport) == [1, 2])
        assert not server.waiting
    finally:
        held.release = True
        await server.shutdown()


async def test_clients_that_do_not_read_do_not_take_the_waiting_places_of_those_that_do(
    sock_dir, monkeypatch
) -> None:
    """Review: eight connections pipelining long finds and never reading filled all 1,024
    waiting places for as long as they stayed, and every other client's long read past the
    running ones was STORE_BUSY. Theirs no longer count; a connection has at most
    ``WAITING_PER_CONNECTION`` waiting once the places are full."""
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    monkeypatch.setattr(scheduler_module, "WAITING_SCANS", 4)
    monkeypatch.setattr(scheduler_module, "WAITING_PER_CONNECTION", 2)
    stalled, reading = _connection(server), _connection(server)
    try:
        for rid in range(1, 6):  # 1 runs, 2-5 wait: every place taken
            assert server.handle(_find(rid), stalled) is None
        stalled.pause_writing()
        assert server.handle(_find(6), reading) is None  # waits: the stalled ones do not count
        assert server.handle(_find(7), reading) is None
        busy = FrameDecoder().feed(server.handle(_find(8), reading))  # its own 2: the most
        assert busy[0].code == "STORE_BUSY"
        assert [w.request.request_id for w in server.waiting] == [2, 3, 4, 5, 6, 7]
        held.release = True
        await wait_until(lambda: sent_ids(reading.transport) == [6, 7])
        assert [w.request.request_id for w in server.waiting] == [2, 3, 4, 5]
    finally:
        held.release = True
        await server.shutdown()


async def test_one_reading_connection_does_not_take_every_waiting_place(
    sock_dir, monkeypatch
) -> None:
    """QA: a connection that reads its replies pipelined 1,100 long reads and held all 1,024
    waiting places; another connection's one long read was STORE_BUSY. Once the places are
    full, the connection with ``WAITING_PER_CONNECTION`` waiting is refused, not the others."""
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    monkeypatch.setattr(scheduler_module, "WAITING_SCANS", 4)
    monkeypatch.setattr(scheduler_module, "WAITING_PER_CONNECTION", 2)
    busy, other = _connection(server), _connection(server)
    try:
        for rid in range(1, 6):  # 1 runs, 2-5 wait: every place taken, by one connection
            assert server.handle(_find(rid), busy) is None
        refused = FrameDecoder().feed(server.handle(_find(6), busy))
        assert refused[0].code == "STORE_BUSY"
        assert server.handle(_find(7), other) is None  # waits all the same
        assert server.handle(_find(8), other) is None
        refused = FrameDecoder().feed(server.handle(_find(9), other))  # its own 2 now
        assert refused[0].code == "STORE_BUSY"
        assert [w.request.request_id for w in server.waiting] == [2, 3, 4, 5, 7, 8]
        held.release = True
        # Turns go first to the connection with the fewest running: the other one's.
        await wait_until(lambda: sent_ids(other.transport) == [7, 8])
    finally:
        held.release = True
        await server.shutdown()


async def test_long_reads_a_client_never_reads_hold_a_few_replies_not_all(sock_dir) -> None:
    """Over a socket: 60 long finds of ~100 KB each sent and not read run only until the
    buffers are full (the few already running finish); all answer once the client reads."""
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=_filled_engine())
    await server.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    sent = 60
    try:
        await loop.sock_connect(sock, str(server.settings.socket))
        await loop.sock_sendall(sock, encode(Hello(PROTOCOL_VERSION, None)))
        where = [["n", "lt", 50]]  # no index on n: a scan of every row, a long read
        await loop.sock_sendall(
            sock,
            b"".join(
                encode_request(i, "find", {"table": "t", "where": where, "limit": 1000})
                for i in range(1, sent + 1)
            ),
        )
        await wait_until(lambda: server.jobs == 0 and len(server.waiting) > 0)
        await asyncio.sleep(0.2)  # turns enough for any read that would still start
        answered = sent - len(server.waiting)
        # The reads running when the buffers filled finish; the rest wait (was: all 60).
        assert answered <= scheduler_module.SCAN_JOBS + 4
        decoder, got = FrameDecoder(), []
        while len(got) < sent + 1:
            got += decoder.feed(await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10))
        assert sorted(m.request_id for m in got[1:]) == list(range(1, sent + 1))
        assert all(len(m.value["items"]) == 1000 for m in got[1:])
    finally:
        sock.close()
        await server.shutdown()


async def test_a_read_that_waited_is_counted_once_in_the_engine_ops(sock_dir, monkeypatch) -> None:
    """``stats``: a read that waited (its request handled twice) counts once in the engine's
    ``ops`` as in the server's ``commands``."""
    monkeypatch.setattr(scheduler_module, "SCAN_JOBS", 1)
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=_filled_engine())
    conn = _connection(server)
    try:
        for rid in (1, 2):  # an unindexed filter over every row: a long read each
            request = Request(rid, "find", {"table": "t", "where": [["n", "lt", 50]]})
            assert server.handle(request, conn) is None
        assert len(server.waiting) == 1
        await wait_until(lambda: server.jobs == 0 and not server.waiting)
        stats = server.server_stats()
        assert stats["commands"]["find"]["count"] == 2
        assert stats["ops"]["find"] == 2  # two find requests
    finally:
        server.cancel_jobs()


async def test_a_cancelled_or_abandoned_read_is_counted_in_the_commands_as_in_the_ops(
    sock_dir, monkeypatch
) -> None:
    """QA: ``stats`` counted a cancelled long read in the engine's ``ops`` and never in the
    server's ``commands``; nor one whose client left."""
    monkeypatch.setattr(scheduler_module, "SCAN_JOBS", 1)
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=_filled_engine())
    conn, leaving = _connection(server), _connection(server)
    try:
        for rid, owner in ((1, conn), (2, leaving)):  # 1 runs, 2 waits
            request = Request(rid, "find", {"table": "t", "where": [["n", "lt", 50]]})
            assert server.handle(request, owner) is None
        server.cancel(conn, Request(0, "cancel", {"request": 1}))  # 2 starts
        leaving.connection_lost(None)  # and is abandoned
        assert server.jobs == 0 and not server.waiting
        stats = server.server_stats()
        assert stats["ops"]["find"] == 2
        assert stats["commands"]["find"]["count"] == 2
    finally:
        server.cancel_jobs()


# -- cancel: the client gave up on a request ----------------------------------------------


async def test_cancel_stops_a_running_or_waiting_long_command_of_that_connection_only(
    sock_dir, monkeypatch
) -> None:
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 1)
    try:
        reader, writer = await _open(server)
        _other_reader, other = await _open(server)
        writer.write(_finds(range(1, 4)))  # 1 runs, 2 and 3 wait
        await writer.drain()
        await wait_until(lambda: len(server.waiting) == 2)
        # Another connection's cancel of the same ids touches nothing.
        other.write(encode_request(0, "cancel", {"request": 1}))
        await other.drain()
        writer.write(
            encode_request(10, "cancel", {"request": 2})  # waiting
            + encode_request(11, "cancel", {"request": 1})  # running: 3 gets the turn
            + encode_request(12, "cancel", {"request": 99})  # no such request
            + encode_request(13, "cancel", {"request": "1"})
        )
        await writer.drain()
        replies = await _replies(reader, 4)
        assert replies[10].value == {"cancelled": True}
        assert replies[11].value == {"cancelled": True}
        assert replies[12].value == {"cancelled": False}
        assert isinstance(replies[13], Error) and replies[13].code == "BAD_REQUEST"
        assert server.jobs == 1 and not server.waiting
        assert held.alive == 1  # request 1's read was closed, 3 holds the turn
        assert server.server_stats()["jobs_cancelled"] == 2
        held.release = True
        rest = await _replies(reader, 1)
        assert list(rest) == [3]  # 1 and 2 never answer
        writer.close()
        other.close()
    finally:
        held.release = True
        await server.shutdown()


async def test_a_client_that_times_out_or_is_cancelled_cancels_its_long_read(
    sock_dir, monkeypatch
) -> None:
    server, held = await _serving_held_reads(sock_dir, monkeypatch, 8)
    client = StoreClient(f"unix:{server.settings.socket}", timeout=0.1)
    try:
        with pytest.raises(StoreTimeout):
            await client.call("find", {"table": "t", "n": 1})
        await wait_until(lambda: server.jobs == 0)
        assert held.executed == 1 and held.alive == 0
        task = asyncio.ensure_future(client.call("find", {"table": "t", "n": 2}, timeout=30))
        await wait_until(lambda: server.jobs == 1)
        task.cancel()
        await wait_until(lambda: server.jobs == 0)
        assert held.alive == 0 and server.cancelled == 2
        # The connection is fine: the cancels' own replies were dropped, nothing else mixed up.
        assert (await client.call("ping"))["pong"] is True
    finally:
        held.release = True
        await client.close()
        await server.shutdown()


async def test_a_cancelled_index_build_or_where_write_leaves_the_table_as_it_was(
    sock_dir,
) -> None:
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"), engine=_filled_engine())
    await server.start()
    conn = _connection(server)
    try:
        build = Request(1, "create_index", {"table": "t", "field": "n"})
        where = [["n", "lt", 50]]
        update = Request(2, "update_where", {"table": "t", "where": where, "changes": {"x": 1}})
        assert server.handle(build, conn) is None and server.handle(update, conn) is None
        assert server.jobs == 2
        for rid in (1, 2):
            server.cancel(conn, Request(0, "cancel", {"request": rid}))
        assert server.jobs == 0
        await asyncio.sleep(0.05)  # no step of either runs after the cancel
        engine = server.engine
        assert engine.execute("list_indexes", {"table": "t"}) == []
        rows = engine._catalog.tables["t"].rows.values()
        assert not any("x" in record for record in rows)
        assert finish(engine, engine.execute("create_index", {"table": "t", "field": "n"}))[1] == {
            "created": True
        }
    finally:
        await server.shutdown()


async def test_a_cancel_read_with_its_request_takes_it_back_says_so_and_no_other(sock_dir) -> None:
    """QA: a request and its cancel read together: the request was skipped, but the cancel
    answered ``cancelled: false`` (as for one already answered), so a client could wait for a
    reply that never comes; and a later request reusing the id was skipped too."""
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"))
    await server.start()
    try:
        conn, transport = connect(server)
        conn.data_received(
            encode_request(10, "insert", {"table": "t", "record": {"id": "r1"}})
            + encode_request(11, "cancel", {"request": 10})
            + encode_request(12, "insert", {"table": "t", "record": {"id": "r2"}})
            + encode_request(13, "cancel", {"request": 12})
            + encode_request(12, "insert", {"table": "t", "record": {"id": "r3"}})  # id reused
            + encode_request(14, "cancel", {"request": 10})  # taken back already
            + encode_request(15, "find", {"table": "t"})
        )
        replies = [m for m in FrameDecoder().feed(bytes(transport.data)) if type(m) is not Hello]
        by_id = {reply.request_id: reply.value for reply in replies}
        assert [reply.request_id for reply in replies] == [11, 13, 12, 14, 15]
        assert by_id[11] == by_id[13] == {"cancelled": True}
        assert by_id[12]["id"] == "r3"
        assert by_id[14] == {"cancelled": False}
        assert [row["id"] for row in by_id[15]["items"]] == ["r3"]
    finally:
        await server.shutdown()


async def test_a_cancel_left_for_a_later_turn_still_says_it_took_its_request_back(
    sock_dir, monkeypatch
) -> None:
    """Review: the turn's budget spent between a request and its cancel (read together), the
    request was skipped but the cancel, run in the next turn, answered ``false``."""
    monkeypatch.setattr(connection_module, "TURN_REPLY_BYTES", 1)  # a turn per reply
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"))
    await server.start()
    try:
        server.engine.execute("create_table", {"table": "t"})
        conn, transport = connect(server)
        conn.data_received(
            encode_request(10, "insert", {"table": "t", "record": {"id": "r1"}})
            + encode_request(20, "ping", {})
            + encode_request(11, "cancel", {"request": 10})
        )

        def replies() -> dict[int, Any]:
            messages = FrameDecoder().feed(bytes(transport.data))
            return {m.request_id: m.value for m in messages if type(m) is not Hello}

        await wait_until(lambda: 11 in replies())
        assert replies()[11] == {"cancelled": True}
        assert sorted(replies()) == [11, 20]
        assert server.engine.execute("count", {"table": "t"}) == 0
    finally:
        await server.shutdown()


@pytest.mark.parametrize("calls", [33, 100, 300])
async def test_cancels_behind_many_requests_still_take_them_back(sock_dir, calls) -> None:
    """QA: after a stall a client's cancels come behind all its timed-out requests; a cancel
    took back its request only when both were decoded in one turn's batch (64 frames), so of
    100 ``rate_hit`` calls cancelled in a SIGSTOP all 100 were counted on SIGCONT."""
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock"))
    await server.start()
    try:
        conn, transport = connect(server)
        hit = {"key": "k", "limit": 1000, "window": 60}
        conn.data_received(
            b"".join(encode_request(i, "rate_hit", hit) for i in range(1, calls + 1))
            + b"".join(encode_request(0, "cancel", {"request": i}) for i in range(1, calls + 1))
            + encode_request(calls + 1, "rate_hit", hit)
        )

        def replies() -> list[Any]:
            return [m for m in FrameDecoder().feed(bytes(transport.data)) if type(m) is not Hello]

        await wait_until(lambda: any(m.request_id == calls + 1 for m in replies()))
        got = replies()
        assert [m.value for m in got if m.request_id == 0] == [{"cancelled": True}] * calls
        assert [m.request_id for m in got if m.request_id] == [calls + 1]
        assert got[-1].value["remaining"] == 999  # the one hit not taken back
    finally:
        await server.shutdown()


def replies_of(transport: RecordingTransport) -> list[Any]:
    return [m for m in FrameDecoder().feed(bytes(transport.data)) if type(m) is not Hello]


async def test_a_long_read_stops_once_the_memory_in_use_is_a_quarter_past_the_limit(
    sock_dir,
) -> None:
    """QA: eight aggregates over 245,000 rows took the store to 2.8 times STORE_MAX_MEMORY
    (their groups are in use until they end). A long read now stops with MEMORY_LIMIT at a
    step taken while the memory in use is a quarter past the limit; others go on after."""
    server = StoreServer(StoreSettings(socket=sock_dir / "s.sock", max_memory=250_000_000))
    await server.start()
    try:
        held = HeldReads(server.engine)
        conn, transport = connect(server)
        conn.data_received(encode_request(1, "find", {"table": "t", "n": 1}))
        await wait_until(lambda: held.executed == 1 and server.jobs == 1)
        server.memory.reads_over = lambda: True  # type: ignore[method-assign]
        await wait_until(lambda: any(m.request_id == 1 for m in replies_of(transport)))
        [reply] = [m for m in replies_of(transport) if m.request_id == 1]
        assert reply.code == "MEMORY_LIMIT" and "long read stopped" in reply.message
        assert held.alive == 0 and server.jobs == 0  # its generator closed: its memory freed
        server.memory.reads_over = lambda: False  # type: ignore[method-assign]
        held.release = True
        conn.data_received(encode_request(2, "find", {"table": "t", "n": 2}))
        await wait_until(lambda: any(m.request_id == 2 for m in replies_of(transport)))
        [answer] = [m for m in replies_of(transport) if m.request_id == 2]
        assert answer.value == {"items": [], "total": 2}
    finally:
        await server.shutdown()


def test_open_cursors_hold_an_eighth_of_the_memory_limit_in_ids() -> None:
    """QA: 100 stalled dumps of a 245,000-row table held ~150 MB past a 250 MB limit (the
    ids of every open cursor, capped at 20M, 160 MB, whatever the limit)."""
    assert scan_ids_for(0) == MAX_SCAN_IDS
    assert scan_ids_for(256 * 2**20) == 256 * 2**20 // 64  # 4M ids, 32 MiB
    assert scan_ids_for(2**40) == MAX_SCAN_IDS
    engine = Engine(max_scan_ids=150)
    engine.execute(
        "batch", {"ops": [{"op": "insert", "table": "t", "record": {}} for _ in range(100)]}
    )
    first = engine.execute("scan", {"table": "t", "limit": 1})
    assert first["cursor"]  # one cursor alone may pass the cap
    with pytest.raises(StoreBusy, match="too many ids"):
        engine.execute("scan", {"table": "t", "limit": 1})
