"""The asyncio client each API worker uses to talk to the store.

One connection per client, multiplexed: every call gets a request id and a future, the reply is
matched by id, so any number of coroutines share the connection with requests in flight.
Open it in the worker (after gunicorn forks), never at import time.

Failure rules:
- The store unreachable (refused, lost, not yet reconnected) → ``StoreUnavailable``. After a
  failed connect the client waits with exponential backoff before it tries again, and calls in
  the meantime fail at once instead of piling up.
- No reply within the call's timeout → ``StoreTimeout``; a late reply is dropped, and the
  store is told to ``cancel`` the request: a long command (a chunked read, a ``*_where``
  still selecting, an index build) stops there instead of using the store for nobody. A call
  whose awaiting task is cancelled does the same.
- Reads (``READ_COMMANDS``) are retried with backoff and jitter inside a small time budget.
- A store that stops reading (stuck, or far behind): once ``MAX_UNSENT`` bytes of requests wait
  to be sent, a new call fails at once with ``StoreBusy``, not sent, instead of buffering
  without bound (see ``clientconnection.ClientConnection.send``).
- A store whose HELLO names another protocol version is refused (``StoreUnavailable``).
- The writes the store may run in chunks over a big table (``CHUNKED_WRITES``) wait
  ``long_timeout``, not ``timeout``: a timeout on a write leaves its outcome unknown, and such
  a write still lands after a short timeout.
  Writes are never retried once sent: the store may have applied them. A write that could not
  be sent because there was no connection fails with ``StoreUnavailable`` and is not sent later;
  one whose connection was lost after it was sent fails with ``OutcomeUnknown`` (a kind of
  ``StoreUnavailable``), and a timed-out one with a ``StoreTimeout`` whose details say
  ``{"outcome": "unknown"}``.
- ``on_connect`` failing in any way (a ``StoreError``, its own write lost in flight included;
  replies it cannot use: a ``TypeError`` in it) fails the connection attempt as a
  ``StoreUnavailable`` (the store's own kind when it answered one, a ``PersistenceError``; a
  plain one otherwise): the connection is closed and the next attempt waits out the backoff.
  Only a ``SetupRefused`` is the set-up's own verdict: the connection is closed and it
  reaches the caller as it is. An attempt runs as a task
  of its own, so a caller that gives up on it does not leave it half set up.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from .clientconnection import READ_COMMANDS, ClientConnection
from .errors import (
    BadRequest,
    LimitExceeded,
    OutcomeUnknown,
    ProtocolError,
    RecordTooLarge,
    SetupRefused,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from .protocol import (
    MAX_FRAME_SIZE,
    MAX_REQUEST_ENTRIES,
    PROTOCOL_VERSION,
    Hello,
    encode,
    encode_request,
    unpack_counted,
)
from .socketchecks import watch_peer

log = structlog.get_logger("storeserver.client")

# The API sets this per request; calls made in that context carry it to the store, which names
# it in its slow-command log lines (``_request_id``, removed before the engine sees the args).
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "store_request_id", default=None
)
REQUEST_ID_ARG = "_request_id"
# The API sets this per request to ``{"user_id": str|None, "role": str|None}``, with the
# token's ``credential`` when it has one; writes made in that context carry it (``_actor``):
# the store names the user in its audit entries and refuses a write whose credential has
# ended (``CredentialRevoked``). A store that does not say it checks credentials (an earlier
# release, whose ``_actor`` takes only the two names) gets the actor without it.
current_actor: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "store_actor", default=None
)
ACTOR_ARG = "_actor"


def without_credential(actor: dict[str, Any]) -> dict[str, Any]:
    """``actor`` naming its user and role only: for the audit, checked against nothing."""
    return {"user_id": actor.get("user_id"), "role": actor.get("role")}


_credentials_unchecked_told = False


def _warn_credentials_unchecked(address: str) -> None:
    """Once per process: a store of an earlier release does not check the credential a write
    carries, so a request running when its caller's session ends can still write (a
    guarantee the operator must know is off while such a store serves: deploy/README)."""
    global _credentials_unchecked_told
    if not _credentials_unchecked_told:
        _credentials_unchecked_told = True
        log.warning(
            "credentials_not_checked",
            store=address,
            message="the store does not check a write's credential (upgrade it): a request"
            " running when its session ends can still write",
        )


Caller = Callable[[str, dict[str, Any]], Awaitable[Any]]
OnConnect = Callable[[Caller], Awaitable[None]]

STORE_IDLE_S = 10
"""Over TCP, a connection to the store silent this long is probed; one whose probes go
unanswered, or whose requests go unacknowledged for ``STORE_UNACKED_S``, is ended by the
kernel and the next call reconnects (``socketchecks.watch_peer``). QA: a flow a firewall
forgot kept a worker answering 504 while the store was up, until TCP gave up (~15 min). The
store's own kernel acknowledges a request at once however busy the store is, so this never
ends a connection to a slow store."""
STORE_UNACKED_S = 15
CHUNKED_WRITES = frozenset({"create_index", "set_schema", "update_where", "delete_where"})
STREAM_COMMANDS = frozenset({"scan", "scan_close"})
"""A dump's or an export's pages: sent on a connection of their own (``StoreClient.call``).

The store runs one connection's requests in order, and its replies come back in order: on one
connection per worker, a single-record read waited behind every page of every export that
worker was streaming, and a page's call behind the others' (QA: 30 concurrent 12 MB CSV
exports held one-record GETs 3-4 s; at 60 some pages passed the 5 s timeout, and downloads
ended with a 504 or cut off). On their own connection the pages wait only for each other, with
``long_timeout``: a page waits its turn, it is not lost to a store that is slow."""


def _retrieved(attempt: asyncio.Task[Any]) -> None:
    """Mark a connection attempt's outcome seen: its callers may all have given up."""
    if not attempt.cancelled():
        attempt.exception()


MAX_UNIX_PATH_BYTES = 107  # sun_path holds 108 bytes, the last a NUL


def check_unix_path(path: str) -> str:
    """``path``, or ValueError if no Unix socket can be bound or reached there (too long)."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise ValueError(f"a Unix socket path has at most {MAX_UNIX_PATH_BYTES} bytes")
    return path


def parse_address(address: str) -> tuple[str, Any]:
    """``unix:/path``, ``/path`` or ``x.sock`` → ("unix", path); ``tcp://h:p`` or ``h:p`` → tcp."""
    scheme = address[: address.find(":") + 1].lower()
    if scheme == "unix:":
        return "unix", address[5:].removeprefix("//")
    if scheme == "tcp:" and address[4:6] == "//":
        address = address[6:]
    elif "://" in address:  # QA: http://h:80 and redis://... were taken as relative paths
        raise ValueError(f"not a store address (unix:/path or tcp://host:port): {address!r}")
    elif "/" in address or address.endswith(".sock"):
        return "unix", address
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not a store address: {address!r}")
    return "tcp", (host.strip("[]"), int(port))


def check_entries(frame: bytes) -> None:
    """Refuse a request the store would refuse by closing the connection: more entries (maps,
    lists and values; ``protocol.MAX_REQUEST_ENTRIES``) than it decodes. Closed, the connection
    would take every other call in flight on it along (QA: one 5 MB JSON record of 2.5 million
    numbers failed 15 of 200 other users' writes). Counted like the store does, only for the
    frames large enough to hold that many."""
    try:
        unpack_counted(memoryview(frame)[4:], MAX_REQUEST_ENTRIES)
    except ProtocolError as exc:
        raise LimitExceeded(
            f"the request holds more than {MAX_REQUEST_ENTRIES} values, maps and lists"
            " together: send less at once",
            {"max_entries": MAX_REQUEST_ENTRIES},
        ) from exc


class StoreClient:
    def __init__(
        self,
        address: str,
        *,
        timeout: float = 5.0,
        long_timeout: float = 120.0,
        connect_timeout: float = 1.0,
        secret: str | None = None,
        read_retry_budget: float = 0.5,
        max_frame_size: int = MAX_FRAME_SIZE,
        on_connect: OnConnect | None = None,
    ) -> None:
        """``on_connect(call)`` runs on every new connection before anything else may use it;
        ``call(command, args)`` sends on that connection. A store restarted without its data
        gets, say, its tables and indexes declared again before the first write reaches it."""
        self.address = address
        self._kind, self._target = parse_address(address)
        self.timeout = timeout
        self.long_timeout = long_timeout
        self.connect_timeout = connect_timeout
        self._secret = secret
        self._read_retry_budget = read_retry_budget
        self._max_frame_size = max_frame_size
        self._conn: ClientConnection | None = None
        self._connecting: asyncio.Task[ClientConnection] | None = None
        self._next_id = 1
        self._backoff = 0.0
        self._next_attempt_at = 0.0
        self._closed = False
        self._on_connect = on_connect
        self.server_info: dict[str, Any] = {}
        self._checks_credentials = False  # as its HELLO says (``current_actor``)
        # The largest request frame to send: ours, or the store's if its HELLO says less (a
        # frame past it closes the connection, failing every call in flight on it, QA).
        self._send_limit = max_frame_size
        self._greeted_at = 0.0  # time.monotonic() of the last server HELLO
        self._stalled_at = 0.0  # time.monotonic() of the last call the store left unanswered
        # When the connection was found lost (time.monotonic()), until one is open again: the
        # outage is told in two lines, not in one per failed call.
        self._lost_at: float | None = None
        self._streams: StoreClient | None = None  # STREAM_COMMANDS' connection, once used
        self._routes_streams = True  # False in that connection's own client

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def connect(self) -> None:
        """Connect now (ignoring any backoff); raises ``StoreUnavailable`` on failure."""
        self._next_attempt_at = 0.0
        await self._connection()

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()  # its connection, if open, is aborted
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            conn._fail(StoreUnavailable("the client was closed"))
        if self._streams is not None:
            await self._streams.close()

    def _stream_client(self) -> StoreClient:
        """The client of the pages' connection (``STREAM_COMMANDS``): the same store and
        secret, no set-up of its own (the tables a scan reads are this client's to declare)."""
        if self._streams is None:
            self._streams = StoreClient(
                self.address,
                timeout=self.long_timeout,
                long_timeout=self.long_timeout,
                connect_timeout=self.connect_timeout,
                secret=self._secret,
                read_retry_budget=self._read_retry_budget,
                max_frame_size=self._max_frame_size,
            )
            self._streams._routes_streams = False
        return self._streams

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run one store command and return its result, or raise its ``StoreError``."""
        if command in STREAM_COMMANDS and self._routes_streams and not self._closed:
            return await self._stream_client().call(command, args, timeout=timeout)
        if command not in READ_COMMANDS:
            if timeout is None and command in CHUNKED_WRITES:
                timeout = self.long_timeout
            return await self._call_once(command, args, timeout)
        deadline = time.monotonic() + self._read_retry_budget
        delay = 0.02
        while True:
            try:
                return await self._call_once(command, args, timeout)
            except StoreUnavailable:
                now = time.monotonic()
                if self._closed or now + delay > deadline:
                    raise
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay *= 2
                self._next_attempt_at = min(self._next_attempt_at, now + delay)

    async def _call_once(
        self, command: str, args: dict[str, Any] | None, timeout: float | None
    ) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return await self._send(conn, command, args, timeout)

    async def _send(
        self,
        conn: ClientConnection,
        command: str,
        args: dict[str, Any] | None,
        timeout: float | None,
    ) -> Any:
        rid = self._next_id
        self._next_id = rid + 1 if rid < 2**62 else 1
        request_id = current_request_id.get()
        if request_id is not None:
            args = {**args, REQUEST_ID_ARG: request_id} if args else {REQUEST_ID_ARG: request_id}
        actor = current_actor.get() if command not in READ_COMMANDS else None
        if actor is not None:  # only writes are audited: reads do without the bytes
            if "credential" in actor and not self._checks_credentials:
                actor = without_credential(actor)
                _warn_credentials_unchecked(self.address)
            args = {**args, ACTOR_ARG: actor} if args else {ACTOR_ARG: actor}
        try:
            frame = encode_request(rid, command, args if args is not None else {})
        except ProtocolError as exc:
            raise BadRequest(f"arguments cannot be sent to the store: {exc.message}") from exc
        if len(frame) - 4 > self._send_limit:
            # 413 through the API: a body MAX_BODY_BYTES let in (up to 1 GiB) but too large
            # to send was a 400 BAD_REQUEST, as if the client had sent something malformed.
            raise RecordTooLarge(
                f"the request is over the {self._send_limit}-byte store frame once"
                " encoded: send less at once",
                {"size": len(frame) - 4, "max_frame_bytes": self._send_limit},
            )
        if len(frame) - 4 > MAX_REQUEST_ENTRIES // 2:
            check_entries(frame)
        fut = conn.send(rid, frame, command, self.timeout if timeout is None else timeout)
        try:
            return await fut
        except StoreTimeout:
            self._stalled_at = time.monotonic()
            raise
        finally:
            if conn.pending.pop(rid, None) is not None and fut.cancelled():
                conn.cancel(rid)  # the caller gave up (its task was cancelled)

    async def _connection(self) -> ClientConnection:
        if self._closed:
            raise StoreUnavailable("the client is closed")
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._connecting is None:
            if self._conn is not None and self._lost_at is None:
                self._lost_at = time.monotonic()
                log.warning("store_connection_lost", store=self.address)
            if time.monotonic() < self._next_attempt_at:
                raise StoreUnavailable("the store is unavailable (reconnecting)")
            # A task of its own, not the first caller's: a caller that gives up (a timeout
            # around its call, as /metrics has) does not abandon the attempt half set up
            # (QA: with a slow ``on_connect``, each 1 s scrape left one more connection open
            # in the store, and the worker never finished reconnecting).
            # In a context of its own too: the set-up's writes are the service's, not made for
            # the caller that found the connection gone (whose ``current_actor`` a task would
            # copy: review found a caller with an ended session made the set-up refused).
            loop = asyncio.get_running_loop()
            attempt = loop.create_task(self._attempt(), context=contextvars.Context())
            attempt.add_done_callback(_retrieved)
            self._connecting = attempt
        attempt = self._connecting
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if attempt.cancelled() and (task is None or not task.cancelling()):
                # ``close`` cancelled the attempt, not this caller (QA: every caller waiting
                # on it got a CancelledError it could take for its own cancellation).
                raise StoreUnavailable("the client is closed") from None
            raise

    async def _attempt(self) -> ClientConnection:
        """Open and set up a connection; on failure, the next attempt waits out a backoff."""
        try:
            conn = await self._open()
            if self._on_connect is not None:
                await self._run_on_connect(conn)
            if self._closed:  # closed meanwhile: nobody is to use it
                if conn.transport is not None:
                    conn.transport.abort()
                raise StoreUnavailable("the client is closed")
        except StoreUnavailable:
            self._backoff = min(max(self._backoff * 2, 0.05), 1.0)
            self._next_attempt_at = time.monotonic() + self._backoff * (0.5 + random.random())
            raise
        else:
            self._backoff = 0.0
            self._conn = conn
            if self._lost_at is not None:
                down = time.monotonic() - self._lost_at
                log.info("store_reconnected", store=self.address, down_s=round(down, 3))
                self._lost_at = None
            return conn
        finally:
            self._connecting = None

    async def _run_on_connect(self, conn: ClientConnection) -> None:
        assert self._on_connect is not None

        async def call_on_this_connection(command: str, args: dict[str, Any]) -> Any:
            return await self._send(conn, command, args, None)

        try:
            await self._on_connect(call_on_this_connection)
        except BaseException as exc:
            if conn.transport is not None:
                conn.transport.abort()
            if not isinstance(exc, Exception):  # cancelled (the client is closing)
                raise
            if isinstance(exc, SetupRefused):
                raise  # the set-up's own verdict (the API's StoreRefusedSetup): not retried
            if isinstance(exc, StoreUnavailable) and not isinstance(exc, OutcomeUnknown):
                raise
            if not isinstance(exc, StoreError):
                # Anything else the set-up met: replies it cannot use (QA: a listener answering
                # nil to everything raised TypeError: 500s, no backoff, a leaked connection per
                # request), or data it cannot read (an admin hash of an unknown scheme).
                log.error("store_setup_failed", store=self.address, error=repr(exc)[:500])
                raise StoreUnavailable(f"connection set-up failed: {type(exc).__name__}") from exc
            # A set-up write lost in flight included (OutcomeUnknown): the caller's own
            # command was never sent, so its answer is a plain unavailability (QA: a
            # registration answered OUTCOME_UNKNOWN for a create_table of the set-up).
            raise StoreUnavailable(f"connection set-up failed: {exc.message}") from exc

    async def _open(self) -> ClientConnection:
        loop = asyncio.get_running_loop()

        def factory() -> ClientConnection:
            return ClientConnection(self._max_frame_size)

        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._kind == "unix":
                    transport, conn = await loop.create_unix_connection(factory, self._target)
                else:
                    host, port = self._target
                    transport, conn = await loop.create_connection(factory, host, port)
                    watch_peer(transport, STORE_IDLE_S, STORE_UNACKED_S)
                transport.write(encode(Hello(PROTOCOL_VERSION, self._secret)))
                info = await conn.hello
        except (OSError, TimeoutError, StoreUnavailable) as exc:
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]
            if isinstance(exc, StoreUnavailable):
                raise
            # A TimeoutError (connecting, or waiting for the store's HELLO) has no message.
            reason = (
                f"timed out after {self.connect_timeout:g} s"
                if isinstance(exc, TimeoutError)
                else str(exc) or type(exc).__name__
            )
            raise StoreUnavailable(f"cannot reach the store at {self.address}: {reason}") from exc
        except BaseException:  # cancelled (the client is closing): no half-open connection
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]
            raise
        self.server_info = info if isinstance(info, dict) else {}
        self._checks_credentials = self.server_info.get("checks_credentials") is True
        announced = self.server_info.get("max_frame_bytes")
        self._send_limit = self._max_frame_size
        if type(announced) is int and 0 < announced < self._max_frame_size:
            self._send_limit = announced
        self._greeted_at = time.monotonic()
        return conn

    def store_uptime(self) -> float | None:
        """Seconds the store has been serving, as its last HELLO said and time since, or since
        the last call it did not answer in time if later: a store that stalled (stopped,
        swapping) wrote no heartbeats either, as one restarting (QA: a store frozen 20 s,
        live workers' queued jobs were declared lost at once). 0 while disconnected (it may be
        restarting); ``None`` if the store does not say (older)."""
        uptime = self.server_info.get("uptime_s")
        if not isinstance(uptime, int | float) or isinstance(uptime, bool):
            return None
        if not self.connected:
            return 0.0
        now = time.monotonic()
        return min(float(uptime) + now - self._greeted_at, now - self._stalled_at)
