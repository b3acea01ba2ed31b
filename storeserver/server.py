"""The store's asyncio shell: accept connections, decode frames, run commands, send replies.

Design note. The event loop is single-threaded and every command runs synchronously, start to
finish, before any other byte is looked at, so every command is atomic without locks. The price
is that no command may be slow; the engine keeps big work (dumps, large joins) in bounded
chunks, and a connection runs what it sent in bounded turns (``connection.py``: turn budgets,
flow control, the handshake's limits). The commands that would read a whole big table
(``create_index``, ``set_schema``, and ``find``, ``count``, ``join``, ``aggregate``,
``update_where``, ``delete_where`` over many rows) come back from the engine as a
``builds.Job``, which the server's ``JobScheduler`` (``scheduler.py``) steps in turns, a chunk
each, other clients' commands in between, at most ``SCAN_JOBS`` of the scans at once; each
reply is sent when its job is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import structlog

from . import __version__
from .arguments import check_keys
from .builds import Job
from .collector import Freezer
from .connection import FD_RESERVE, MAX_CLIENTS, StoreConnection, open_file_clients
from .durability import Durability
from .engine import Engine
from .errors import (
    BadRequest,
    InternalError,
    LimitExceeded,
    MemoryLimit,
    StoreBusy,
    StoreError,
    StoreUnavailable,
)
from .handshakes import HandshakeSlots
from .memory import MemoryGauge, trim_heap
from .opstats import OpStats
from .protocol import (
    MAX_FRAME_SIZE,
    EncodedPage,
    Request,
    encode_error,
    encode_list_within,
    encode_page_result,
    encode_page_within,
    encode_result,
    encode_result_body,
    handshake_frame_size,
)
from .records import format_timestamp
from .replycache import ReplyCache, StoredGet
from .requesttags import ACTOR_ARG, REQUEST_ID_ARG, take_tags
from .scans import scan_ids_for
from .scheduler import JobScheduler
from .settings import StoreSettings
from .socketchecks import clear_stale_socket, lock_socket, unlock_socket
from .throttledlog import ThrottledWarning

log = structlog.get_logger("storeserver")
_NO_ARGS: frozenset[str] = frozenset()

SLOW_KEPT = 20
SNAPSHOT_WAITERS = 64
"""Snapshot replies one connection may be owed at once; more are refused ``STORE_BUSY``."""
HOUSEKEEPING_S = 5.0  # at most this between sweeps of idle scan cursors
# The engine's commands and the ones the server answers itself; any other name is "unknown".
_KNOWN_COMMANDS = Engine.COMMANDS | {"ping", "snapshot", "cancel"}


def _no_entry(args: dict[str, Any]) -> None:
    """``stored_get`` while the reply cache is off (``STORE_REPLY_CACHE_BYTES=0``)."""
    return None


# The commands ``run`` passes to the engine as they are (not ``stats``: the server's own).
_ENGINE_READS = Engine.COMMANDS - Engine.WRITE_COMMANDS - {"stats"}
_perf_counter = time.perf_counter


def _frees_or_marks(args: dict[str, Any]) -> bool:
    """A batch made only of deletes and revocation marks (``kv_set`` with ``stamp`` and no
    value: a timestamp), as the API's user deletion that ends the user's sessions in the same
    command: taken over the memory limit as a ``delete`` and a ``kv_set`` alone would be. Not
    a batch of valued ``kv_set`` ops: up to 1000 values in one command is not the small write
    ``Engine.GROWING_COMMANDS`` lets through."""
    ops = args.get("ops")
    return (
        type(ops) is list
        and bool(ops)
        and all(type(op) is dict and _frees_or_marks_op(op) for op in ops)
    )


def _bookkeeping(command: str, args: dict[str, Any] | None) -> bool:
    """A change to a record of an internal table (its name starts with ``_``, as the API's
    ``_jobs``): a job's heartbeat, progress and state. Taken over the memory limit: refused,
    a running job could neither go on nor record why it stopped, its readers' marking it
    lost was refused too (its status answered 507), and a queued one could not be cancelled.
    Its memory is small and bounded: an existing record changed (an insert is still
    refused, so no job starts at the limit), written only by the API's own bookkeeping."""
    if command not in ("patch", "update_where") or args is None:
        return False
    table = args.get("table")
    return type(table) is str and table.startswith("_")


def _frees_or_marks_op(op: dict[str, Any]) -> bool:
    kind = op.get("op")
    return kind == "delete" or (kind == "kv_set" and op.get("stamp") is True and "value" not in op)


class StoreServer:
    def __init__(self, settings: StoreSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        persistent = settings.data_dir is not None
        self.engine = engine or Engine(
            max_tables=settings.max_tables,
            journal=persistent,
            max_bulk_rows=settings.max_bulk_rows,
            audit_max_entries=settings.audit_max_entries,
            audit_max_age=settings.audit_max_age,
            scan_idle=settings.scan_idle,
            # Replies must fit the API's client too, which reads frames of MAX_FRAME_SIZE at
            # most whatever this store takes: the record limit and scan pages follow the smaller.
            max_frame_bytes=min(settings.max_frame_bytes, MAX_FRAME_SIZE),
            max_scan_ids=scan_ids_for(settings.max_memory),
        )
        self.engine.spill_reads()
        self.durability = (
            Durability(settings.data_dir, settings.fsync, self.engine, settings.log_rewrite_bytes)
            if persistent
            else None
        )
        self.replies = ReplyCache(settings.reply_cache_bytes)
        # ``stored_get`` when the cache is on, bound once: it runs for every ``get``.
        self._cached_get = self.engine.stored_get if settings.reply_cache_bytes else _no_entry
        self.memory = MemoryGauge(settings.max_memory, trimmer=self._release_memory)
        self.op_stats = OpStats()
        self._housekeeping: asyncio.TimerHandle | None = None
        self.slow: deque[dict[str, Any]] = deque(maxlen=SLOW_KEPT)
        self.scheduler = JobScheduler(self)  # long commands in progress, and waiting
        self.connections: set[StoreConnection] = set()
        self.network_clients = 0  # of them, over TCP (``connection.UNIX_RESERVED``)
        self.open_file_clients = open_file_clients()  # at most, with the files the store needs
        self.ready = False
        # Uptime counts on the monotonic clock: the wall clock stepped back by NTP would look
        # like a restart to an alert on memdb_store_uptime_seconds (QA).
        self.started_at = time.monotonic()
        # time.monotonic() once it listens (its data loaded): what HELLO's uptime_s counts from.
        self.listening_since: float | None = None
        self._listeners: list[asyncio.AbstractServer] = []
        self._socket_lock: int | None = None  # ``socketchecks.lock_socket``, while it runs
        self._all_closed = asyncio.Event()
        self._slow_s = settings.slow_ms / 1000.0
        self.freezer = Freezer()
        self.handshakes = HandshakeSlots()  # connections not greeted yet
        self.handshake_frame_bytes = handshake_frame_size(settings.secret)
        # Replies and errors must fit the API's client too, which reads frames of
        # MAX_FRAME_SIZE at most: past it, it drops the connection and every call on it.
        self.max_reply_bytes = min(settings.max_frame_bytes, MAX_FRAME_SIZE)
        self.dropped_log = ThrottledWarning("client_dropped")
        self.refused_log = ThrottledWarning("client_refused")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        path = self.settings.socket
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._socket_lock = lock_socket(path)  # held until ``shutdown`` removes the socket
        except OSError as exc:  # QA: "[Errno 2] No such file or directory: '/proc/x'" alone
            message = f"STORE_SOCKET {path}: cannot make or lock it there: {exc.strerror or exc}"
            raise type(exc)(message) from exc
        try:
            await self._start(loop, path)
        except BaseException:
            # A start that fails after listening on the socket (STORE_TCP's port taken) removes
            # it: ours (the lock is held), and left it would tell probes a store is there (QA).
            for listener in self._listeners:
                listener.close()
            if self._listeners:
                path.unlink(missing_ok=True)
            self._release_socket_lock()
            raise

    async def _start(self, loop: asyncio.AbstractEventLoop, path: Path) -> None:
        clear_stale_socket(path)
        if self.durability is not None:
            # Loading blocks the loop, so it happens before anyone can connect.
            self.durability.load()
            self.durability.start(loop)
        self.freezer.start(loop)  # after loading: the loaded records are never walked again
        self._housekeep(loop)
        # Create the socket with restrictive permissions from the first instant (umask), then
        # set the exact mode: there is no window in which another user could connect.
        old_umask = os.umask(0o177)
        try:
            unix = await loop.create_unix_server(lambda: StoreConnection(self), path=str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, self.settings.socket_mode)
        self._listeners.append(unix)
        if self.settings.tcp_address is not None:
            host, port = self.settings.tcp_address
            try:
                tcp = await loop.create_server(lambda: StoreConnection(self), host, port)
            except OSError as exc:  # "Name or service not known" alone named no setting
                message = f"STORE_TCP {self.settings.tcp}: cannot listen: {exc.strerror}"
                raise type(exc)(message) from exc
            self._listeners.append(tcp)
        self.ready = True
        self.listening_since = time.monotonic()
        log.info("store_listening", socket=str(path), tcp=self.settings.tcp, version=__version__)
        if self.open_file_clients < MAX_CLIENTS:
            log.warning(
                "open_file_limit",
                message=f"the limit on open files leaves room for {self.open_file_clients}"
                f" clients, not {MAX_CLIENTS}: raise it (ulimit -n) to {MAX_CLIENTS + FD_RESERVE}",
                clients=self.open_file_clients,
            )

    def _housekeep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Free scan cursors left unread past ``STORE_SCAN_IDLE`` now, not at the next scan:
        each holds its table's id list (8 bytes a row) until then."""
        self.engine.expire_idle()
        interval = min(HOUSEKEEPING_S, self.settings.scan_idle / 2)
        self._housekeeping = loop.call_later(interval, self._housekeep, loop)

    @property
    def jobs(self) -> int:
        """Long commands in progress."""
        return self.scheduler.jobs

    @property
    def waiting(self) -> deque[Any]:
        """Long commands waiting for a scan turn, in arrival order."""
        return self.scheduler.waiting

    @property
    def cancelled(self) -> int:
        """Long commands stopped by their client's ``cancel``."""
        return self.scheduler.cancelled

    def cancel_jobs(self, conn: StoreConnection | None = None) -> None:
        """Abort the long commands of ``conn`` (every one without it): ``JobScheduler``."""
        self.scheduler.cancel_jobs(conn)

    async def shutdown(self) -> None:
        """Stop accepting, let every in-flight reply flush, close clients, remove the socket."""
        self.ready = False
        self.freezer.stop()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for listener in self._listeners:
            listener.close()
        self._all_closed.clear()
        self.scheduler.stop()
        for conn in list(self.connections):
            conn.stop_running()
        if self.connections:
            # A moment to read what clients had sent already (kept, not run): answered below
            # rather than left unread in the socket, whose close says nothing of it.
            await asyncio.sleep(0.01)
        durability = self.durability
        if durability is not None and self.connections:
            # Replies of writes already applied wait for their log write (STORE_FSYNC=always:
            # their fsync); sent before their connections close, nothing more run meanwhile.
            await durability.settle(1.0)
        # What was not run is answered so: safe to send again once the store is back.
        stopping = StoreUnavailable("the store is stopping: not run; send it again shortly")
        self.scheduler.refuse_all(stopping)
        for conn in list(self.connections):
            conn.refuse_unrun(stopping)
            conn.close()
        # Single commands are synchronous, so none is half-done; long ones (jobs) end with
        # their connections (``connection_lost``), and the rest below, before the final
        # snapshot. Buffered replies get a moment to flush (close() sends them, then
        # disconnects).
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), 2.0)
        for conn in list(self.connections):
            conn.abort()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 1.0)
        self.cancel_jobs()
        if self.durability is not None:
            self.durability.close()
        with contextlib.suppress(FileNotFoundError):
            self.settings.socket.unlink()
        self._release_socket_lock()
        log.info("store_stopped")

    def _release_socket_lock(self) -> None:
        if self._socket_lock is not None:
            unlock_socket(self._socket_lock)
            self._socket_lock = None

    # -- commands --------------------------------------------------------------------------

    def server_info(self) -> dict[str, Any]:
        return {
            "server": "memdb-store",
            "version": __version__,
            "max_frame_bytes": self.settings.max_frame_bytes,
            "max_record_bytes": self.engine.max_record_bytes,
            # ``_actor.credential`` is checked before writes (``KeyCommands.check_credential``):
            # a client sends it only to a store that says so (an earlier one refuses it).
            "checks_credentials": True,
            # ``insert`` takes ``create: false`` (an earlier store refuses the argument).
            "insert_create": True,
            # The most rows an update_where/delete_where may change: the API refuses more at
            # once (400) rather than start a job bound to fail.
            "max_bulk_rows": self.settings.max_bulk_rows,
            # A client learns from it that the store restarted lately: the API's job sweep
            # waits until its workers have had time to beat again (``api.jobs.state``). From
            # when it listens, not when it started: loading a big log takes a while, and no
            # worker could beat meanwhile. Monotonic: a clock step does not move it.
            "uptime_s": round(time.monotonic() - (self.listening_since or time.monotonic()), 3),
        }

    def ping(self) -> dict[str, Any]:
        return {"pong": True, "ready": self.ready, "version": __version__}

    def server_stats(self) -> dict[str, Any]:
        stats = self.engine.execute("stats", {})
        stats.update(
            {
                "rss_bytes": self.memory.rss(),
                "max_memory": self.settings.max_memory,
                "clients": len(self.connections),
                "reply_cache": self.replies.stats(),
                "commands": self.op_stats.as_dict(),
                "slow": list(self.slow),
                "slow_threshold_s": self._slow_s,
                "jobs": self.jobs,
                "jobs_waiting": len(self.waiting),
                "jobs_cancelled": self.cancelled,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "uptime": round(time.monotonic() - self.started_at, 3),
                "version": __version__,
                "persistence": self.durability.status()
                if self.durability is not None
                else {"enabled": False},
            }
        )
        return stats

    def run(
        self,
        command: str,
        args: dict[str, Any],
        actor: Any = None,
        request_id: Any = None,
        request_bytes: int | None = None,
    ) -> Any:
        if command == "ping":
            if args:
                check_keys(args, _NO_ARGS)
            return self.ping()
        if command == "stats":
            check_keys(args, _NO_ARGS)
            return self.server_stats()
        engine = self.engine
        if command not in Engine.WRITE_COMMANDS:
            return engine.execute(command, args)
        self._check_write(command, args)
        durability = self.durability
        if durability is None:
            return engine.execute(
                command, args, actor=actor, request_id=request_id, request_bytes=request_bytes
            )
        result = engine.execute(
            command, args, actor=actor, request_id=request_id, request_bytes=request_bytes
        )
        changes = engine.drain_changes()
        if changes:
            durability.record(changes)
        return result

    def _check_write(self, command: str, args: dict[str, Any] | None = None) -> None:
        """Refuse a write the store cannot take now: over the memory limit (the writes that
        add data), or while the log cannot be written. Checked again before each step of a
        long write, which may have started before either."""
        if (
            command in Engine.GROWING_COMMANDS
            and not (command == "batch" and args is not None and _frees_or_marks(args))
            and self.memory.over_limit()
            and not _bookkeeping(command, args)  # after: asked only over the limit
        ):
            raise MemoryLimit(
                "the store is at its memory limit; writes are refused, reads still work",
                {"max_memory": self.settings.max_memory},
            )
        if self.durability is not None:
            self.durability.check_writable()

    def handle(
        self, request: Request, conn: StoreConnection | None = None, spent: float = 0.0
    ) -> bytes | None:
        """Run one request and return its encoded reply frame. Never raises.

        ``None`` when the command goes on as a job: its reply is sent to ``conn`` later.
        ``spent``: the time earlier attempts took (a command that waited for a turn).
        """
        return self.handle_parts(
            request.request_id, request.command, request.args, request.size, conn, spent, request
        )

    def handle_parts(
        self,
        rid: int,
        command: str,
        args: dict[str, Any],
        size: int | None,
        conn: StoreConnection | None = None,
        spent: float = 0.0,
        request: Request | None = None,
    ) -> bytes | None:
        """``handle`` of a request given as its parts (``FrameDecoder.take_request``): a
        ``Request`` is built only when the command goes on as a job.

        The path of every request: ``run`` and ``_account`` are inlined for the usual case
        (an engine read, a known command that is not slow), a call less each (a call costs
        50-100 ns here, measured)."""
        started = _perf_counter()
        request_tag = None
        try:
            if REQUEST_ID_ARG in args or ACTOR_ARG in args:
                request_tag, actor = take_tags(args)
            else:
                actor = None  # what take_tags answers, without the call
            if command == "get" and (stored := self._cached_get(args)) is not None:
                reply = self._get_reply(rid, args, stored)
            else:
                if command in _ENGINE_READS:  # what ``run`` does with them
                    result = self.engine.execute(command, args)
                else:
                    result = self.run(command, args, actor, request_tag, size)
                if isinstance(result, Job):
                    spent += _perf_counter() - started
                    if request is None:
                        request = Request(rid, command, args, size)
                    self.scheduler.start(result, request, request_tag, actor, conn, spent)
                    return None
                reply = self._encode(rid, result)
        except StoreError as exc:
            reply = self.encode_error(rid, exc)
        except Exception:
            log.exception("command_failed", command=command)
            reply = self.encode_error(rid, InternalError("internal store error"))
        elapsed = spent + _perf_counter() - started
        if elapsed > self._slow_s or command not in _KNOWN_COMMANDS:
            self._account(command, elapsed, request_tag)
        else:
            self.op_stats.add(command, elapsed)  # all ``_account`` does then
        return reply

    def _get_reply(self, rid: int, args: dict[str, Any], stored: StoredGet) -> bytes:
        """The reply to a plain ``get`` of an existing record, encoded once per version of the
        record (``replycache``)."""
        body = self.replies.find(stored)
        if body is None:
            body = self.replies.keep(stored, self.engine.execute("get", args))
        else:
            self.engine.count("get")
        reply = encode_result_body(rid, body)
        if len(reply) - 4 > self.max_reply_bytes:
            # A record written under a larger STORE_MAX_FRAME_BYTES than the store runs with
            # now: refused as ``_encode`` refuses any reply.
            raise self._too_large()
        return reply

    def _release_memory(self) -> None:
        """At the memory limit, before free heap pages go back to the OS: the cached replies
        are the one thing the store holds that it can drop without losing data."""
        self.replies.clear()
        trim_heap()

    def _encode(self, rid: int, result: Any) -> bytes:
        # Past the frame limit only a read's reply can be: the engine keeps every write's
        # within it (see its module doc), so a write that was applied is never reported failed.
        if type(result) is EncodedPage:
            reply = encode_page_result(rid, result)
        elif type(result) is dict and type(items := result.get("items")) is list and len(items) > 1:
            # A page (find, join, aggregate): encoded a record at a time, refused as soon as it
            # passes the limit, not after all of it (which can be hundreds of MB).
            within = encode_page_within(rid, result, "items", self.max_reply_bytes)
            if within is None:
                raise self._too_large()
            reply = within
        elif type(result) is list and len(result) > 4:
            # get_many, kv_get_many: the same, a value at a time. Up to four values (the API's
            # revocation check, on every request, reads two) are encoded whole, ~0.8 us less:
            # a record is at most half a frame, so that wastes at most two frames of encoding.
            listed = encode_list_within(rid, result, self.max_reply_bytes)
            if listed is None:
                raise self._too_large()
            reply = listed
        else:
            reply = encode_result(rid, result)
        if len(reply) - 4 > self.max_reply_bytes:
            raise self._too_large()
        return reply

    def _too_large(self) -> LimitExceeded:
        return LimitExceeded(
            "the reply would exceed the maximum frame size; ask for a smaller page",
            {"max_frame_bytes": self.max_reply_bytes},
        )

    def _account(self, command: str, elapsed: float, request_tag: Any) -> None:
        if command not in _KNOWN_COMMANDS:
            # Any client can send any name: counted together, so the stats (and the metric
            # labels the API makes of them) stay bounded.
            command = "unknown"
        self.op_stats.add(command, elapsed)
        if elapsed > self._slow_s:
            tag = request_tag if isinstance(request_tag, str) else None
            log.warning(
                "slow_command",
                command=command,
                duration_ms=round(elapsed * 1000, 2),
                request_id=tag,
            )
            self.slow.append(
                {
                    "command": command,
                    "seconds": round(elapsed, 6),
                    "at": format_timestamp(int(time.time() * 1_000_000)),
                    "request_id": tag,
                }
            )

    def cancel(self, conn: StoreConnection, request: Request, withdrawn: bool = False) -> bytes:
        """``cancel {"request": id}``: stop a long command of ``conn`` (``JobScheduler``), or
        say that the connection took back its target unread (``withdrawn``).
        Answered by the connection's turn, not ``handle``: tags and counts are taken here."""
        started = time.perf_counter()
        request_tag = None
        try:
            request_tag, _ = take_tags(request.args)
            reply = self.scheduler.cancel(conn, request, withdrawn)
        except StoreError as exc:
            reply = self.encode_error(request.request_id, exc)
        self._account("cancel", time.perf_counter() - started, request_tag)
        return reply

    def snapshot(self, conn: StoreConnection, request: Request) -> bytes | None:
        """Start (or join) a background snapshot; the reply is sent when it is on disk.
        Returns the reply only when it is an error at once (bad arguments, no persistence)."""
        started = time.perf_counter()
        request_id = request.request_id
        request_tag = None
        try:
            request_tag, _ = take_tags(request.args)
            check_keys(request.args, _NO_ARGS)
            if self.durability is None:
                raise BadRequest("persistence is off: start the store with STORE_DATA_DIR", {})
            if conn.awaited >= SNAPSHOT_WAITERS:
                # Each waits outside the connection's flow control until the snapshot is on
                # disk (QA: a client pipelining snapshots without reading grew the store by
                # 225 bytes a request for as long as one ran).
                raise StoreBusy(
                    "too many snapshots awaited on this connection", {"max": SNAPSHOT_WAITERS}
                )
        except StoreError as exc:
            return self.encode_error(request_id, exc)
        finally:  # the time to start it: the snapshot itself runs in a child process
            self._account("snapshot", time.perf_counter() - started, request_tag)

        def reply(outcome: dict[str, Any] | StoreError) -> None:
            conn.awaited -= 1
            if isinstance(outcome, StoreError):
                conn.send(self.encode_error(request_id, outcome))
            else:
                conn.send(encode_result(request_id, outcome))

        conn.awaited += 1  # a client that half-closes still gets this reply
        self.durability.start_snapshot(reply)
        return None

    def encode_error(self, request_id: int, error: StoreError) -> bytes:
        """The error's frame, cut down if it would not fit a client's frame limit (a message
        quoting a huge argument): a frame over it would make the client drop the
        connection, and every other call in flight on it."""
        return encode_error(
            request_id, error.code, error.message, error.details, self.max_reply_bytes
        )

    def check_auth(self, payload: Any) -> bool:
        secret = self.settings.secret
        if not secret:
            return True
        return isinstance(payload, str) and hmac.compare_digest(
            payload.encode("utf-8"), secret.encode("utf-8")
        )
