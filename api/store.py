"""The worker's handle on the store: the interface the services use, and opening it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from storeserver.client import Caller, OnConnect, current_actor, without_credential
from storeserver.errors import SecretRefused, StoreTimeout, StoreUnavailable


class Store(Protocol):
    """What the API needs from ``storeserver.client.StoreClient`` (tests may pass a fake)."""

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any: ...


def announced(store: Store, name: str) -> Any:
    """What the store said of itself in its handshake (``server_info``), ``None`` when it said
    nothing of ``name`` (an earlier release, or a fake ``Store`` without a handshake)."""
    info = getattr(store, "server_info", None)
    return info.get(name) if isinstance(info, dict) else None


class ConnectionStore:
    """A ``Store`` over one connection's ``call``, for ``on_connect`` steps that reuse services
    written against ``Store`` (they run before the client lets anything else use it)."""

    def __init__(self, call: Caller) -> None:
        self._call = call

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        return await self._call(command, args if args is not None else {})


class BookkeepingStore:
    """A ``Store`` for what the service records about work it does for a caller (a job's
    state and progress): its writes still name the caller for the audit, but carry no
    credential (``api.auth.sessions.credential``). The store refuses a caller's writes once
    their session has ended; a job stopped so must still be able to record that it failed."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:  # store_uptime, when the store has it
        return getattr(self._store, name)

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        actor = current_actor.get()
        if actor is None or "credential" not in actor:
            return await self._store.call(command, args, timeout=timeout)
        names = current_actor.set(without_credential(actor))
        try:
            return await self._store.call(command, args, timeout=timeout)
        finally:
            current_actor.reset(names)


class StoreNotReady(StoreUnavailable):
    """The store did not answer ready within the wait (``connect_store``)."""


class Start:
    """How this process's start went, for the gunicorn hooks that run after it."""

    store_not_ready = False  # the store did not answer ready within STORE_WAIT_SECONDS


START = Start()


async def connect_store(
    address: str,
    call_timeout: float,
    wait_seconds: float,
    on_connect: OnConnect | None = None,
    secret: str | None = None,
    long_timeout: float = 120.0,
) -> Any:
    """Open a ``StoreClient``, retrying until the store answers ping ready or time runs out.

    ``on_connect`` runs on every (re)connection before any request may use it; ``secret`` is
    the store's shared secret (``STORE_SECRET``), sent in every handshake; ``long_timeout``
    is the wait for the writes the store may run in chunks (``client.CHUNKED_WRITES``).
    Raises ``StoreNotReady`` when the store is still unreachable or not ready at the deadline.
    """
    from storeserver.client import StoreClient

    deadline = time.monotonic() + wait_seconds
    client = StoreClient(
        address,
        secret=secret,
        timeout=call_timeout,
        long_timeout=long_timeout,
        on_connect=on_connect,
    )
    last_error: Exception | None = None
    while True:
        try:
            await client.connect()
            pong = await client.call("ping", {})
            if pong.get("ready"):
                return client
            last_error = StoreUnavailable("store is loading its data")
        except SecretRefused:
            await client.close()
            raise  # a setting: no retry mends it (QA: retried, the API restarted for ever)
        except (StoreUnavailable, StoreTimeout) as exc:
            # A store busy past the call timeout just after its handshake is waited for too
            # (QA: the StoreTimeout ended the wait, and the worker's boot, after 1 s).
            last_error = exc
        except BaseException:
            await client.close()
            raise
        if time.monotonic() >= deadline:
            await client.close()
            raise StoreNotReady(f"store at {address} not ready after {wait_seconds:g}s") from (
                last_error
            )
        await asyncio.sleep(0.2)


def wait_for_store(
    address: str, call_timeout: float, wait_seconds: float, secret: str | None = None
) -> None:
    """Blocking form of ``connect_store`` for gunicorn's ``on_starting`` hook."""

    async def ping_once() -> None:
        client = await connect_store(address, call_timeout, wait_seconds, secret=secret)
        await client.close()

    asyncio.run(ping_once())
