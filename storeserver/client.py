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
  without bound (see ``_Connection.send``).
- A store whose HELLO names another protocol version is refused (``StoreUnavailable``).
- The writes the store may run in chunks over a big table (``CHUNKED_WRITES``) wait
  ``long_timeout``, not ``timeout``: a timeout on a write leaves its outcome unknown, and such
  a write still lands after a short timeout.
  Writes are never retried once sent: the store may have applied them. A write that could not
  be sent because there was no connection fails with ``StoreUnavailable`` and is not sent later.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from .errors import (
    BadRequest,
    ProtocolError,
    StoreBusy,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    error_from_wire,
)
from .protocol import (
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Result,
    encode,
    encode_request,
)

# The API sets this per request; calls made in that context carry it to the store, which names
# it in its slow-command log lines (``_request_id``, removed before the engine sees the args).
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "store_request_id", default=None
)
REQUEST_ID_ARG = "_request_id"
# The API sets this per request to ``{"user_id": str|None, "role": str|None}``; calls made in
# that context carry it (``_actor``) and the store names it in its audit entries.
current_actor: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "store_actor", default=None
)
ACTOR_ARG = "_actor"

Caller = Callable[[str, dict[str, Any]], Awaitable[Any]]
OnConnect = Callable[[Caller], Awaitable[None]]

CHUNKED_WRITES = frozenset({"create_index", "set_schema", "update_where", "delete_where"})
READ_COMMANDS = frozenset(
    {"ping", "get", "get_many", "find", "count", "join", "aggregate", "list_tables", "stats"}
    | {"kv_get", "kv_get_many", "list_indexes", "audit_list", "describe"}
    | {"scan_close"}  # changes no data and may be repeated: retried like a read
)


def parse_address(address: str) -> tuple[str, Any]:
    """``unix:/path``, ``/path`` or ``x.sock`` → ("unix", path); ``tcp://h:p`` or ``h:p`` → tcp."""
    if address.startswith("unix:"):
        return "unix", address[5:].removeprefix("//")
    if address.startswith("tcp://"):
        address = address[6:]
    elif "/" in address or address.endswith(".sock"):
        return "unix", address
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a store address: {address!r}")
    return "tcp", (host.strip("[]"), int(port))


_SWEEP_S = 0.05  # timeouts are checked this often: they fire at most this late
MAX_UNSENT = 64 * 1024 * 1024
"""Bytes of requests waiting to be sent (not yet taken by the kernel) past which a new call
fails at once with ``StoreBusy`` (``_Connection.send``)."""


class _Connection(asyncio.Protocol):
    """The transport side: decodes replies and resolves the matching futures.

    Two things keep each call cheap. Frames sent during one loop turn are written together
    at the end of it (one syscall for, say, a rate-limit check and a revocation lookup issued
    with ``gather``). Timeouts live in one heap swept every ``_SWEEP_S`` while calls are in
    flight, instead of a timer per call.
    """

    def __init__(self, max_frame_size: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.decoder = FrameDecoder(max_frame_size)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.transport: asyncio.Transport | None = None
        self.hello: asyncio.Future[Any] = self.loop.create_future()
        self.closed = False
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._deadlines: list[tuple[float, int, str]] = []
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def unsent(self) -> int:
        """Bytes of requests not yet taken by the kernel: this turn's and the transport's."""
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self._outbox_bytes + buffered

    def send(self, rid: int, frame: bytes, command: str, timeout: float) -> asyncio.Future[Any]:
        """Queue ``frame`` for this turn's write; the future gets its reply.

        Refused (``StoreBusy``, nothing sent) past ``MAX_UNSENT`` bytes waiting: the store is
        not reading, so the call would only time out, its bytes held meanwhile (QA: 300
        calls of 1 MB held 299 MB). Failing at once, rather than waiting for the buffer to
        drain within the call's timeout, is the simpler of the two and says more: the
        request surely never reached the store (a write is not applied), and the API
        answers 503 with Retry-After at once instead of a 504 after the timeout. Not retried,
        as any ``StoreBusy``: a retry would add to the backlog. Calls already sent keep
        their timeouts; a store that reads again drains the buffer and calls go through.
        """
        unsent = self.unsent
        if unsent > MAX_UNSENT:
            raise StoreBusy(
                "the store is not reading this connection's requests; retry shortly",
                {"unsent_bytes": unsent},
            )
        loop = self.loop
        fut: asyncio.Future[Any] = loop.create_future()
        self.pending[rid] = fut
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        heapq.heappush(self._deadlines, (loop.time() + timeout, rid, command))
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_S, self._sweep)
        return fut

    def cancel(self, rid: int) -> None:
        """Ask the store to stop request ``rid``. Sent as request id 0, which no call uses,
        so its reply (``{"cancelled": bool}``) matches nothing and is dropped."""
        if self.closed:
            return
        if not self._outbox:
            self.loop.call_soon(self._flush)
        frame = encode_request(0, "cancel", {"request": rid})
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        if self.transport is not None and not self.closed:
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _sweep(self) -> None:
        now = self.loop.time()
        deadlines, pending = self._deadlines, self.pending
        while deadlines and deadlines[0][0] <= now:
            _, rid, command = heapq.heappop(deadlines)
            fut = pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(StoreTimeout(f"the store did not answer {command!r} in time"))
                self.cancel(rid)
        if not pending:
            deadlines.clear()  # every call answered: their deadlines are moot
        self._sweeper = self.loop.call_later(_SWEEP_S, self._sweep) if deadlines else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            self._fail(StoreUnavailable(f"protocol error from the store: {exc.message}"))
            if self.transport is not None:
                self.transport.abort()
            return
        pending = self.pending
        for message in messages:
            kind = type(message)
            if kind is Result:
                fut = pending.pop(message.request_id, None)  # type: ignore[union-attr]
                if fut is not None and not fut.done():
                    fut.set_result(message.value)  # type: ignore[union-attr]
            elif kind is Error:
                assert isinstance(message, Error)
                if not self.hello.done():
                    self.hello.set_exception(StoreUnavailable(f"store refused: {message.message}"))
                    continue
                fut = pending.pop(message.request_id, None)
                if fut is not None and not fut.done():
                    error = error_from_wire(message.code, message.message, message.details)
                    fut.set_exception(error)
            elif kind is Hello and not self.hello.done():
                assert isinstance(message, Hello)
                if message.version != PROTOCOL_VERSION:
                    # Its frames may mean something else: nothing is sent on this connection.
                    self._fail(
                        StoreUnavailable(
                            f"the store speaks protocol version {message.version!r};"
                            f" this client speaks {PROTOCOL_VERSION}",
                            {"version": message.version},
                        )
                    )
                    if self.transport is not None:
                        self.transport.abort()
                    return
                self.hello.set_result(message.payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(StoreUnavailable("the connection to the store was lost"))

    def _fail(self, error: StoreError) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if not self.hello.done():
            self.hello.set_exception(error)
            # Nobody may await the handshake any more; don't warn about an unseen exception.
            self.hello.exception()
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(type(error)(error.message))


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
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._next_id = 1
        self._backoff = 0.0
        self._next_attempt_at = 0.0
        self._closed = False
        self._on_connect = on_connect
        self.server_info: dict[str, Any] = {}

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def connect(self) -> None:
        """Connect now (ignoring any backoff); raises ``StoreUnavailable`` on failure."""
        self._next_attempt_at = 0.0
        await self._connection()

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            conn._fail(StoreUnavailable("the client was closed"))

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run one store command and return its result, or raise its ``StoreError``."""
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
        self, conn: _Connection, command: str, args: dict[str, Any] | None, timeout: float | None
    ) -> Any:
        rid = self._next_id
        self._next_id = rid + 1 if rid < 2**62 else 1
        request_id = current_request_id.get()
        if request_id is not None:
            args = {**args, REQUEST_ID_ARG: request_id} if args else {REQUEST_ID_ARG: request_id}
        actor = current_actor.get() if command not in READ_COMMANDS else None
        if actor is not None:  # only writes are audited: reads do without the bytes
            args = {**args, ACTOR_ARG: actor} if args else {ACTOR_ARG: actor}
        try:
            frame = encode_request(rid, command, args if args is not None else {})
        except ProtocolError as exc:
            raise BadRequest(f"arguments cannot be sent to the store: {exc.message}") from exc
        if len(frame) - 4 > self._max_frame_size:
            raise BadRequest("request exceeds the maximum frame size")
        fut = conn.send(rid, frame, command, self.timeout if timeout is None else timeout)
        try:
            return await fut
        finally:
            if conn.pending.pop(rid, None) is not None and fut.cancelled():
                conn.cancel(rid)  # the caller gave up (its task was cancelled)

    async def _connection(self) -> _Connection:
        if self._closed:
            raise StoreUnavailable("the client is closed")
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        if time.monotonic() < self._next_attempt_at:
            raise StoreUnavailable("the store is unavailable (reconnecting)")
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            conn = await self._open()
            if self._on_connect is not None:
                await self._run_on_connect(conn)
        except StoreUnavailable as exc:
            self._backoff = min(max(self._backoff * 2, 0.05), 1.0)
            self._next_attempt_at = time.monotonic() + self._backoff * (0.5 + random.random())
            self._connecting.set_exception(exc)
            self._connecting.exception()  # retrieved: concurrent waiters re-raise it themselves
            raise
        else:
            self._backoff = 0.0
            self._conn = conn
            self._connecting.set_result(conn)
            return conn
        finally:
            if not self._connecting.done():
                # This caller was cancelled mid-connect (a timeout around its call): the
                # callers waiting on its attempt would wait on a future nobody resolves.
                self._connecting.set_exception(
                    StoreUnavailable("the connection attempt was abandoned; retry")
                )
                self._connecting.exception()
            self._connecting = None

    async def _run_on_connect(self, conn: _Connection) -> None:
        assert self._on_connect is not None

        async def call_on_this_connection(command: str, args: dict[str, Any]) -> Any:
            return await self._send(conn, command, args, None)

        try:
            await self._on_connect(call_on_this_connection)
        except StoreError as exc:
            if conn.transport is not None:
                conn.transport.abort()
            if isinstance(exc, StoreUnavailable):
                raise
            raise StoreUnavailable(f"connection set-up failed: {exc.message}") from exc

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()

        def factory() -> _Connection:
            return _Connection(self._max_frame_size)

        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._kind == "unix":
                    transport, conn = await loop.create_unix_connection(factory, self._target)
                else:
                    host, port = self._target
                    transport, conn = await loop.create_connection(factory, host, port)
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
        self.server_info = info if isinstance(info, dict) else {}
        return conn
