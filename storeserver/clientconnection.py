"""The client's side of one connection to the store: calls in flight, matched to their replies.

``StoreClient`` (``client.py``) opens a ``ClientConnection`` per connection to the store and
sends every call through it. It holds each call's future by request id, writes the frames of one
loop turn together, times calls out from one heap, and refuses a call while more than
``MAX_UNSENT`` bytes of requests wait to be sent.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any, cast

from .errors import (
    OutcomeUnknown,
    ProtocolError,
    SecretRefused,
    StoreBusy,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    error_from_wire,
)
from .protocol import (
    AUTH_REFUSED,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Result,
    encode_request,
)

READ_COMMANDS = frozenset(
    {"ping", "get", "get_many", "find", "count", "join", "aggregate", "list_tables", "stats"}
    | {"kv_get", "kv_get_many", "list_indexes", "audit_list", "describe"}
    | {"scan_close"}  # changes no data and may be repeated: retried like a read
)
"""Commands that change nothing: the client retries them; any other's outcome is unknown
when its reply does not come (``OutcomeUnknown``, or a ``StoreTimeout`` saying so)."""
_UNKNOWN = {"outcome": "unknown"}
_SWEEP_S = 0.05  # timeouts are checked this often: they fire at most this late
MAX_UNSENT = 64 * 1024 * 1024
"""Bytes of requests waiting to be sent (not yet taken by the kernel) past which a new call
fails at once with ``StoreBusy`` (``ClientConnection.send``)."""


class ClientConnection(asyncio.Protocol):
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
        # The calls whose frames wait in the outbox: lost with the connection before this
        # turn's write, they surely never reached the store.
        self._outbox_rids: list[int] = []
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
        if self.closed:
            # Lost between the caller getting it and sending on it (a reconnect's callers
            # resume a loop turn after it; QA: the frame was dropped and the call waited out
            # its timeout as OUTCOME_UNKNOWN). Nothing was sent: plain unavailable, a read is
            # retried.
            raise StoreUnavailable("the connection to the store was lost")
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
        self._outbox_rids.append(rid)
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
        self._outbox_rids = []
        if self.transport is not None and not self.closed:
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _sweep(self) -> None:
        now = self.loop.time()
        deadlines, pending = self._deadlines, self.pending
        while deadlines and deadlines[0][0] <= now:
            _, rid, command = heapq.heappop(deadlines)
            fut = pending.pop(rid, None)
            if fut is not None and not fut.done():
                message = f"the store did not answer {command!r} in time"
                details = None if command in READ_COMMANDS else _UNKNOWN
                fut.set_exception(StoreTimeout(message, details))
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
                    refused = StoreUnavailable(f"store refused: {message.message}")
                    if message.details.get("reason") == AUTH_REFUSED:
                        # Not a store still starting: the same secret gets the same answer.
                        refused = SecretRefused(
                            "the store refused this client's secret: STORE_SECRET is missing"
                            " or not the store's"
                        )
                    self.hello.set_exception(refused)
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
        if not pending:
            return
        # A write sent before the loss may have been applied (QA: 4 of 450 writes cut off by
        # a store crash were in its log, and the API had said "retry shortly"). Commands are
        # looked up here, on failure, not kept per call: the heap holds each call's.
        # A write still in the outbox was never written: plainly unavailable, safe to retry
        # (it was OUTCOME_UNKNOWN, as if sent, when the loss came in the turn it was queued).
        commands = {rid: command for _, rid, command in self._deadlines}
        unsent = set(self._outbox_rids)
        for rid, fut in pending.items():
            if fut.done():
                continue
            command = commands.get(rid, "")
            if (
                isinstance(error, StoreUnavailable)
                and command not in READ_COMMANDS
                and rid not in unsent
            ):
                fut.set_exception(
                    OutcomeUnknown(f"{error.message} after {command!r} was sent", _UNKNOWN)
                )
            else:
                fut.set_exception(type(error)(error.message))
