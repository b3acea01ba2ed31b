"""One client connection of the store: its turns, flow control and handshake limits.

``StoreConnection`` is the asyncio protocol the server's listeners create for each client: it
decodes frames, greets the client, runs its requests through the server in bounded turns and
writes their replies. The server (``server.py``) holds what is shared across connections, the
command dispatch and the long commands' jobs; this module is what each connection does with
its own bytes, and the limits that only it reads.

Design note. No one client's many commands may add up to a slow turn: a connection runs
what it sent for at most ``TURN_BUDGET`` (2 ms, or ``TURN_REPLY_BYTES`` of replies) per loop
turn, and the rest waits on the connection, unread meanwhile, until a later turn
(``StoreConnection``). Replies are written in one ``write`` per turn, so a pipelining client
gets its replies batched into few syscalls. When a client stops reading its replies, the
transport's write buffer fills and that connection stops being read from and stops running
what it sent (``pause_writing``), which bounds our memory per client to that buffer, one turn
of replies and one read. A frame that does not decode closes that one connection with a
logged reason (what came before it in the same read is answered first); every other client is
unaffected; a connection closed for what it sent is told why first (a ``PROTOCOL_ERROR``
frame). Until a connection is greeted (its HELLO, with the secret, accepted) its decoder
takes only a frame of ``handshake_frame_size`` (4 KiB), at most ``MAX_HANDSHAKES`` connections
on each listener are in that state (``handshakes.py``: over TCP, at most
``MAX_HANDSHAKES_PER_ADDRESS`` from one address), and each is closed if it is not greeted
within ``STORE_HANDSHAKE_TIMEOUT``: peers that never authenticate hold at most 1 MiB between
them, for seconds, and those on the network cannot lock out the Unix socket's. Greeting raises
the limit once, so a greeted connection's path has no extra check. A client that shuts down
its writing side still gets the replies to what it sent (``eof_received``). Warnings any peer
can cause at will (``client_dropped``, ``client_refused``) are throttled to ``WARNINGS_PER_S``
(``throttledlog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import TYPE_CHECKING, Any, cast

from .errors import ProtocolError, StoreBusy, StoreError
from .protocol import (
    AUTH_REFUSED,
    MAX_REQUEST_ENTRIES,
    PROTOCOL_VERSION,
    Error,
    FrameDecoder,
    Hello,
    Message,
    Request,
    encode,
    encode_error,
)
from .socketchecks import hung_up, watch_peer

if TYPE_CHECKING:
    from .durability import Durability
    from .server import StoreServer

MAX_CLIENTS = 4096
"""Connections at once; past it a new one gets a ``STORE_BUSY`` error frame and is closed."""
UNIX_RESERVED = 256
"""Of ``MAX_CLIENTS``, those TCP peers never take: the API workers on the Unix socket still
connect while the network holds every other slot."""
FD_RESERVE = 32
"""Open files the store keeps besides its clients': its log and snapshot files, the listeners,
the socket and data directory locks, stdout, the event loop's own."""


def open_file_clients() -> int:
    """How many clients the limit on open files leaves room for, ``FD_RESERVE`` kept. The soft
    limit is raised first, up to the hard one, as far as ``MAX_CLIENTS`` needs: a shell's or
    supervisord's default of 1,024 let clients take the files the store needs for itself (QA:
    its next log could not be opened, and every write was refused, while clients past the limit
    were reset without the ``STORE_BUSY`` frame)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CLIENTS + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if target > soft:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
    if soft == resource.RLIM_INFINITY:
        return MAX_CLIENTS
    return max(1, soft - FD_RESERVE)


PEER_IDLE_S = 30
"""A TCP peer silent this long is probed; one that answers no probe, or leaves data
unacknowledged for ``PEER_UNACKED_S``, is dropped by the kernel (``watch_peer``)."""
PEER_UNACKED_S = 60


def _withdrawn(messages: list[Message]) -> dict[int, Message] | None:
    """The requests that a ``cancel`` later in ``messages`` takes back, and those cancels, by
    ``id()`` (the map holds them: an id is not reused while it does). A client cancels a call
    it stopped waiting for (its timeout): one still unread when the store resumes from a stall
    is skipped, not run after its caller was told 504. QA: 9 ``rate_hit`` calls that timed out
    in a SIGSTOP were all counted on SIGCONT, and the user's next request was 429, though each
    of the 9 was answered "did not run".

    A cancel takes back the latest request before it with that id, and only that one (a
    request after it reusing the id runs), and it answers ``cancelled: true`` (QA: it said
    false, as for a request already answered, and a client waited for a reply never sent)."""
    cancelled: dict[int, Message] | None = None
    latest: dict[int, Request] = {}
    for message in messages:
        if type(message) is not Request:
            continue
        if message.command == "cancel":
            target = message.args.get("request")
            if type(target) is int and (withdrawn := latest.pop(target, None)) is not None:
                cancelled = cancelled or {}
                cancelled[id(withdrawn)] = withdrawn
                cancelled[id(message)] = message
        else:
            latest[message.request_id] = message
    return cancelled


_TURN_COMMANDS = frozenset({"snapshot", "cancel"})  # answered by the connection's turn itself
TURN_BUDGET = 0.002
"""Seconds of one connection's requests per loop turn, beyond its first request
(``StoreConnection._serve``): the rest of what it sent waits for a later turn."""
TURN_REPLY_BYTES = 256 * 1024
"""Reply bytes one connection's turn may build before the rest waits for a later turn."""
TURN_BATCH = 64
"""Frames decoded at once; the rest of a read stays bytes in the decoder until their turn
(a small request decoded takes about ten times its bytes)."""
_perf_counter = time.perf_counter


class _HeldTurn:
    """Where a connection's replies held for the log go (``WritePath.hold``). It counts them,
    so that replies the connection builds meanwhile are held behind them, in order."""

    __slots__ = ("conn",)

    def __init__(self, conn: StoreConnection) -> None:
        self.conn = conn

    def send(self, data: bytes) -> None:
        self.conn.held -= 1
        self.conn.send(data)

    def abort(self) -> None:
        self.conn.held -= 1
        self.conn.abort()


class StoreConnection(asyncio.Protocol):
    """One client connection: a frame decoder, the requests read and not yet run, and a
    reference to the server.

    Requests run in the order they came, for at most ``TURN_BUDGET`` seconds (or
    ``TURN_REPLY_BYTES`` of replies) per loop turn; their replies go out in one write at the
    end of the turn. What is left waits on the connection (decoded in batches of
    ``TURN_BATCH``, the rest as bytes in the decoder), which is not read from meanwhile, and
    goes on in a later turn (``_resume``), after every other client's events. A connection
    paused for writing (its client does not read) runs nothing until ``resume_writing``: its
    memory is the transport's buffer, one turn of replies and one read of requests.
    """

    def __init__(self, server: StoreServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        # A small limit until the HELLO is accepted (``_greet`` raises it), so buffering up to
        # STORE_MAX_FRAME_BYTES is only ever done for a client that sent the secret.
        self.decoder = FrameDecoder(
            min(server.handshake_frame_bytes, server.settings.max_frame_bytes),
            max_entries=MAX_REQUEST_ENTRIES,
        )
        self.greeted = False
        self.peer: str = "?"
        self.held = 0  # turns of replies waiting for the disk (_HeldTurn)
        self.awaited = 0  # replies owed outside turns and jobs (a snapshot's)
        self._address: str | None = None  # the peer's, over TCP
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._handshaking = False  # counted in server.handshakes
        self._counted = False  # counted in server.network_clients
        self._closing = False
        self._eof = False  # the client will send nothing more
        # Decoded and not yet run; while set (even empty: frames wait in the decoder) the
        # connection is not read from.
        self._backlog: list[Message] | None = None
        # Complete frames may wait in the decoder: a turn ended inside a full batch, or bytes
        # came while reading was being paused.
        self._more = False
        self._scheduled = False
        # Requests and cancels (by ``id()``) read together, for the turns that go on with them.
        self._taken_back: dict[int, Message] | None = None
        self._error: ProtocolError | None = None  # a bad frame, after what was decoded
        self._writing_paused = False
        self._reading_paused = False
        self._unrun: list[Message] = []  # read and never run, at a stop (``stop_running``)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.peer = str(peername or "unix")
        if isinstance(peername, tuple):  # (host, port, ...) over TCP; a str or None on Unix
            self._address = str(peername[0])
        server = self.server
        most = min(MAX_CLIENTS, server.open_file_clients)
        if len(server.connections) >= most:
            self._refuse(StoreBusy("too many clients", {"max": most}))
            return
        if self._address is not None:
            limit = most - min(UNIX_RESERVED, most // 2)
            if server.network_clients >= limit:
                self._refuse(StoreBusy("too many clients over TCP", {"max": limit}))
                return
            server.network_clients += 1
            self._counted = True
            watch_peer(transport, PEER_IDLE_S, PEER_UNACKED_S)
        refused = server.handshakes.take(self._address)
        if refused is not None:
            self._refuse(refused)
            return
        server.connections.add(self)
        self._handshaking = True
        # Otherwise a client that never sends its HELLO holds a slot (of MAX_CLIENTS) forever.
        self._handshake_timer = asyncio.get_running_loop().call_later(
            server.settings.handshake_timeout, self._handshake_expired
        )

    def _refuse(self, error: StoreError) -> None:
        """Close a connection over a cap, telling the client why (it reads the error as its
        handshake's answer)."""
        self.server.refused_log(reason=error.message, peer=self.peer)
        self._stop()
        assert self.transport is not None
        self.transport.write(encode_error(0, error.code, error.message, error.details))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._backlog is not None:  # read while pausing: kept as bytes, after what waits
            self.decoder.feed_until_error(data, 0)
            self._more = True
            return
        if not self.greeted:
            # One frame at a time until greeted: what follows the HELLO in the same read is
            # then decoded under the limit its greeting sets, not the handshake's 4 KiB.
            messages, error = self.decoder.feed_until_error(data, 1)
            self._error = error
            self._more = bool(messages) and self.decoder.buffered > 0
            self._serve(messages)
            return
        if not self._writing_paused:
            # The usual read of a client that waits for each answer: one request, nothing
            # waiting, no budget to keep. Taken whole from the read, without the decoder's
            # loop or a ``Request`` (~0.9 us of the ~6.5 a ``get`` costs in-process).
            try:
                request = self.decoder.take_request(data)
            except ProtocolError as exc:  # as feed_until_error would report it
                self._error = exc
                self._serve([])
                return
            if request is not None:
                _, rid, command, args = request
                if not self._answer_alone(rid, command, args, len(data) - 4):
                    self._serve([Request(rid, command, args, len(data) - 4)])
                return
        messages, error = self._decode(data)
        if error is not None:
            self._error = error
        elif len(messages) == 1 and not self._writing_paused:
            # As above, for one request that came in pieces or after buffered bytes.
            message = messages[0]
            if type(message) is Request and self._answer_alone(
                message.request_id, message.command, message.args, message.size
            ):
                return
        self._serve(messages)

    def _answer_alone(self, rid: int, command: str, args: dict[str, Any], size: int | None) -> bool:
        """Answer a request that came alone at once, outside a turn, unless it needs one (the
        commands a turn answers, or replies held for the log's fsync). False: serve it."""
        server = self.server
        durability = server.durability
        if command in _TURN_COMMANDS or (durability is not None and durability.holds_replies):
            return False
        recorded = durability.recorded if durability is not None else 0
        reply = server.handle_parts(rid, command, args, size, self)
        if reply is not None and self.transport is not None:
            if durability is not None and (durability.recorded != recorded or self.held):
                self.send_when_durable(durability, reply)  # a write: once it is in the log
            else:
                self.transport.write(reply)
        return True

    def _decode(self, data: bytes) -> tuple[list[Message], ProtocolError | None]:
        """A turn's batch of messages (``TURN_BATCH``), or every complete one buffered if a
        ``cancel`` may be among them: a cancel pairs with its request only when both are
        decoded (``_withdrawn``), and after a stall a client's cancels come behind all its
        requests (QA: of 100 ``rate_hit`` calls that timed out in a SIGSTOP, each cancelled,
        all 100 were counted on SIGCONT). What is buffered is bounded by reads: reading is
        paused while decoded requests wait."""
        messages, error = self.decoder.feed_until_error(data, TURN_BATCH)
        if error is None and len(messages) == TURN_BATCH and self.decoder.may_hold_cancel():
            more, error = self.decoder.feed_until_error(b"")
            messages += more
        return messages, error

    def _decode_more(self) -> list[Message]:
        messages, error = self._decode(b"")
        if error is not None:
            self._error = error
        self._more = len(messages) == TURN_BATCH
        return messages

    def _serve(self, messages: list[Message]) -> None:
        """Run ``messages``, then what more the decoder holds, in order, until the turn's
        budget is spent (at least one); send their replies in one write; leave the rest for
        a later turn."""
        server = self.server
        durability = server.durability
        recorded = durability.recorded if durability is not None else 0
        replies: list[bytes] = []
        reply_bytes = 0
        # The budget is checked after each message but for a chunk of one (the usual case).
        deadline = _perf_counter() + TURN_BUDGET if len(messages) > 1 else 0.0
        rest: list[Message] | None = None
        unexpected: Message | None = None
        # Carried over from the turn that read them: a cancel left for a later turn (the
        # budget spent between it and its request) still answers that it took it back.
        withdrawn, self._taken_back = self._taken_back, None
        while True:
            found = _withdrawn(messages) if len(messages) > 1 else None
            if found is not None:
                withdrawn = found if withdrawn is None else {**withdrawn, **found}
            remaining = iter(messages)
            for message in remaining:
                if type(message) is Request and self.greeted:
                    command = message.command
                    taken_back = withdrawn is not None and id(message) in withdrawn
                    if taken_back and command != "cancel":
                        continue  # its client gave up before the store read it: not run
                    if command == "snapshot":
                        reply = server.snapshot(self, message)
                    elif command == "cancel":
                        reply = server.cancel(self, message, taken_back)
                    else:  # ``handle``, one call less
                        reply = server.handle_parts(
                            message.request_id,
                            command,
                            message.args,
                            message.size,
                            self,
                            0.0,
                            message,
                        )
                    if reply is not None:
                        replies.append(reply)
                        reply_bytes += len(reply)
                elif type(message) is Hello and not self.greeted:
                    if not self._greet(message, replies):
                        return
                else:
                    unexpected = message
                    break
                if deadline and (reply_bytes >= TURN_REPLY_BYTES or _perf_counter() >= deadline):
                    rest = list(remaining)
                    if len(messages) == TURN_BATCH:
                        self._more = True  # for the turn that goes on with ``rest``
                    elif not rest and not self._more:
                        rest = None  # that was the last one
                    break
            else:
                if (self._more or len(messages) == TURN_BATCH) and not self._closing:
                    # The batch was full: more frames may wait in the decoder. A turn that
                    # has not started its budget (it ran one request, or none) takes them.
                    if not deadline or (
                        reply_bytes < TURN_REPLY_BYTES and _perf_counter() < deadline
                    ):
                        deadline = deadline or _perf_counter() + TURN_BUDGET
                        messages = self._decode_more()
                        continue
                    rest = []
            break
        if replies:
            if durability is not None and (durability.recorded != recorded or self.held):
                # These replies acknowledge writes (or come after replies that do): sent once
                # those are in the log (STORE_FSYNC=always: on disk).
                self.send_when_durable(durability, b"".join(replies))
            elif self.transport is not None:
                self.transport.write(b"".join(replies))
        if unexpected is not None:
            when = "after" if self.greeted else "before"
            self._drop(f"unexpected {type(unexpected).__name__} message {when} the handshake")
        elif rest is not None:
            self._backlog = rest
            self._taken_back = withdrawn
            self._update_reading()
            self._schedule()
        elif self._error is not None and not self._closing:
            # Before greeting frames are decoded one at a time: a bad one read with the HELLO
            # is found once it is greeted, under the greeted limit.
            when = "after" if self.greeted else "before"
            self._drop(f"{self._error.message} {when} the handshake")

    def _resume(self) -> None:
        """The next turn of the requests that wait (``call_soon``: other events go first)."""
        self._scheduled = False
        backlog = self._backlog
        if backlog is None or self._writing_paused or self._closing:
            return
        if hung_up(self.transport):
            # Reading is paused while requests wait, so a client that closed is not seen
            # until they are all run (QA: 50 pipelined long reads then a close kept the store
            # busy ~0.5 s for nobody). Asked of the OS once per such turn: ``abort`` ends the
            # connection, and ``connection_lost`` its long commands.
            self.abort()
            return
        self._backlog = None
        self._serve(backlog)
        if self._backlog is None:
            self._update_reading()
            self._finish_if_done()

    def _schedule(self) -> None:
        if not self._scheduled and not self._writing_paused and not self._closing:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _update_reading(self) -> None:
        """Read from the client only while nothing waits and it reads its replies."""
        paused = self._backlog is not None or self._writing_paused
        if (
            paused is not self._reading_paused
            and self.transport is not None
            and not self._closing
            and not self._eof  # nothing more to read
        ):
            self._reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
            if self._eof:  # checked here: this is on the path of every reply
                self._finish_if_done()

    def send_when_durable(self, durability: Durability, data: bytes) -> None:
        """Send ``data`` once the writes it acknowledges are in the log (STORE_FSYNC=always:
        on disk); replies this connection builds meanwhile are held behind it, in order."""
        self.held += 1
        durability.hold(_HeldTurn(self), data)

    def eof_received(self) -> bool:
        """The client shut down its writing side: what it sent is still run and answered, as
        a client that sends a long command and then half-closes expects, and the connection
        closes once nothing is owed (``_finish_if_done``). A client that closed its socket
        (on a Unix socket that shows as a hang-up) reads nothing: closed now, its long
        commands abandoned (``connection_lost``). Over TCP the two look alike until a reply
        is written to a closed peer, which ends the connection then."""
        if hung_up(self.transport):
            return False  # the transport closes itself
        self._eof = True
        self._finish_if_done()
        return True

    def _finish_if_done(self) -> None:
        """After the client's EOF: close once every reply it is owed has been written (a
        close flushes the transport's buffer first)."""
        if (
            self._eof
            and not self._closing
            and self._backlog is None
            and not self.held
            and not self.awaited
            and not self.server.scheduler.serves(self)
        ):
            self.close()

    def _greet(self, hello: Hello, replies: list[bytes]) -> bool:
        details: dict[str, Any] = {}
        if hello.version != PROTOCOL_VERSION:
            reason = f"unsupported protocol version {hello.version}"
        elif not self.server.check_auth(hello.payload):
            # Said so in the details: a client that tries again gets the same answer (QA: the
            # API retried a wrong STORE_SECRET as a store still starting, and restarted for ever)
            reason, details = "authentication failed", {"reason": AUTH_REFUSED}
        else:
            self.greeted = True
            self.decoder.max_frame_size = self.server.settings.max_frame_bytes
            self._end_handshake()
            replies.append(encode(Hello(PROTOCOL_VERSION, self.server.server_info())))
            return True
        self._drop(reason, details)  # nothing was answered before a HELLO: its error goes alone
        return False

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.greeted:
            timeout = self.server.settings.handshake_timeout
            self._drop(f"no handshake within {timeout:g} s")

    def _end_handshake(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._handshaking:
            self._handshaking = False
            self.server.handshakes.release(self._address)

    def _drop(self, reason: str, details: dict[str, Any] | None = None) -> None:
        """Close the connection for what its client sent (or did not send in time), telling
        it why first: a client sees the reason, not just a closed connection."""
        self.server.dropped_log(reason=reason, peer=self.peer)
        if self.transport is not None and not self._closing:
            self.transport.write(encode(Error(0, ProtocolError.code, reason, details or {})))
        self.close()

    def stop_running(self) -> None:
        """At a stop: run nothing more of what this client sent (``refuse_unrun`` answers it);
        what it is owed still goes."""
        if not self._closing and self._backlog:
            self._unrun = self._backlog
        self._stop()

    def refuse_unrun(self, error: StoreError) -> None:
        """At a stop, before the close: answer ``error`` to every request read and not run,
        those waiting in the decoder too, so their clients know they were not applied (QA: a
        clean stop closed connections on them, and a write's client saw an unknown outcome)."""
        messages, self._unrun = self._unrun, []
        while self.greeted:
            more, failure = self.decoder.feed_until_error(b"", TURN_BATCH)
            messages += more
            if failure is not None or len(more) < TURN_BATCH:
                break
        replies = [
            self.server.encode_error(m.request_id, error)
            for m in messages
            if type(m) is Request and m.request_id  # 0: a cancel, whose reply nobody reads
        ]
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def close(self) -> None:
        self._stop()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._stop()
        if self.transport is not None:
            self.transport.abort()

    def _stop(self) -> None:
        # What waits is never run, nor anything read from now on: the client sees its
        # connection close with no reply.
        self._closing = True
        self._backlog = []

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        self._end_handshake()
        self.server.connections.discard(self)
        if self._counted:
            self._counted = False
            self.server.network_clients -= 1
        self.server.cancel_jobs(self)
        self.transport = None
        if not self.server.connections:
            self.server._all_closed.set()

    # Flow control: a client that does not read its replies stops being read from, and its
    # waiting requests stop running, until it reads them.
    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        if self._backlog is not None:
            self._schedule()
        scheduler = self.server.scheduler
        if scheduler.waiting:  # its long reads that waited for it to read (``admit_waiting``)
            scheduler.schedule_jobs()  # not inside the transport's callback

    @property
    def writing_paused(self) -> bool:
        """Whether the transport's buffer is full: the client is not reading its replies."""
        return self._writing_paused
