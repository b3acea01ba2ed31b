"""The development signing key across store restarts, against real workers (no JWT_SECRET).

A store without STORE_DATA_DIR comes back empty: every session and revocation mark is gone,
so the workers agree on a new key and every token issued before is 401 on every worker (a
logged-out one must not come back to life). A store that comes back with another instance's
data brings that instance's key, which the workers adopt; one that comes back with its own
data changes nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from api.auth.secret import SECRET_KEY
from storeserver.client import StoreClient
from storeserver.probe import wait_for_socket
from tests.support.auth import Account, bearer, login_admin
from tests.support.factories import assert_error
from tests.support.logs import json_lines
from tests.support.stack import ADMIN_EMAIL, ADMIN_PASSWORD, Stack, running_stack
from tests.support.store import StoreProcess, short_tmp_dir
from tests.support.workers import close_all, pinned_clients

pytestmark = pytest.mark.integration
ME = "/api/v1/users/me"
SWITCHED = "signing_key_switched"


@dataclass
class Worker:
    """A keep-alive client pinned to one worker; every answer is checked to come from it."""

    pid: str
    client: httpx.AsyncClient

    async def get(self, path: str, token: str | None = None) -> httpx.Response:
        response = await self.client.get(path, headers=bearer(token) if token else None)
        assert response.headers["x-worker-pid"] == self.pid
        return response

    async def log_in(self) -> str:
        form = {"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        response = await self.client.post("/api/v1/auth/token", data=form)
        assert response.status_code == 200, response.text
        assert response.headers["x-worker-pid"] == self.pid
        token: str = response.json()["access_token"]
        return token

    async def reconnected(self, timeout: float = 20.0) -> None:
        """Ready again: the worker's new store connection ran its set-up steps."""
        deadline = time.monotonic() + timeout
        while (await self.get("/api/v1/ready")).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.pid} did not reconnect to the store")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def both_workers(stack: Stack) -> AsyncIterator[list[Worker]]:
    pinned = await pinned_clients(stack.base_url, workers=2)
    try:
        yield [Worker(pid, clients[0]) for pid, clients in pinned.items()]
    finally:
        await close_all(pinned)


def restart_store(stack: Stack, extra_env: dict[str, str] | None = None) -> None:
    stack.restart_store(extra_env)
    wait_for_socket(stack.socket_path, proc=stack.processes["store"])


def assert_invalid_token(response: httpx.Response) -> None:
    assert_error(response, 401, "INVALID_TOKEN")


def switch_lines(stack: Stack) -> int:
    """The workers' lines whose ``event`` is exactly the name operators alert on."""
    return sum(line["event"] == SWITCHED for line in json_lines(stack.workdir / "api.log"))


async def store_command(address: str, command: str, args: dict[str, Any]) -> Any:
    client = StoreClient(address, timeout=10.0)
    await client.connect()
    try:
        return await client.call(command, args)
    finally:
        await client.close()


async def stored_key(stack: Stack) -> Any:
    return await store_command(f"unix:{stack.socket_path}", "kv_get", {"key": SECRET_KEY})


async def test_a_store_back_empty_refuses_every_earlier_token_on_every_worker() -> None:
    with running_stack(workers=2) as stack:
        with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
            live: Account = login_admin(http)
            gone: Account = login_admin(http)
            assert http.post("/api/v1/auth/logout", headers=gone.headers).status_code == 204
            assert_invalid_token(http.get(ME, headers=gone.headers))
        key_before = await stored_key(stack)
        async with both_workers(stack) as workers:
            for worker in workers:  # every worker has verified (and cached) the live token
                assert (await worker.get(ME, live.access_token)).status_code == 200
                assert_invalid_token(await worker.get(ME, gone.access_token))

            restart_store(stack)  # no STORE_DATA_DIR: it comes back empty
            for worker in workers:
                await worker.reconnected()

            for worker in workers:
                assert_invalid_token(await worker.get(ME, gone.access_token))
                assert_invalid_token(await worker.get(ME, live.access_token))
                assert_invalid_token(await worker.get("/api/v1/users", live.access_token))
            # A new login on either worker works on both: they agreed on one new key.
            fresh = [await worker.log_in() for worker in workers]
            for worker in workers:
                for token in fresh:
                    assert (await worker.get(ME, token)).status_code == 200
        key_after = await stored_key(stack)
        assert isinstance(key_after, str) and key_after != key_before
        for token in fresh:
            jwt.decode(token, key_after, algorithms=["HS256"])  # signed with the store's key
        assert switch_lines(stack) == 2  # one line per worker


async def instance_data_with_key(key: str) -> Path:
    """Another instance's data directory, as a restored backup: its store kept ``key``."""
    data_dir, sock_dir = short_tmp_dir(), short_tmp_dir()
    other = StoreProcess(sock_dir / "other.sock", env={"STORE_DATA_DIR": str(data_dir)})
    try:
        other.start()
        await store_command(other.address, "kv_set", {"key": SECRET_KEY, "value": key})
        assert other.stop() == 0
    finally:
        other.stop()
        other.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    return data_dir


async def test_a_store_back_with_another_instances_data_brings_its_key() -> None:
    other_key = "another-instance-development-signing-key-0123456789abcdef"
    data_dir = await instance_data_with_key(other_key)
    try:
        with running_stack(workers=2) as stack:
            with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
                before: Account = login_admin(http)
            async with both_workers(stack) as workers:
                restart_store(stack, {"STORE_DATA_DIR": str(data_dir)})
                for worker in workers:
                    await worker.reconnected()

                for worker in workers:
                    assert_invalid_token(await worker.get(ME, before.access_token))
                fresh = [await worker.log_in() for worker in workers]
                for token in fresh:
                    jwt.decode(token, other_key, algorithms=["HS256"])
                    for worker in workers:
                        assert (await worker.get(ME, token)).status_code == 200
                assert switch_lines(stack) == 2

                # The same store back with its own data: same key, nothing switches.
                restart_store(stack, {"STORE_DATA_DIR": str(data_dir)})
                for worker in workers:
                    await worker.reconnected()
                for token in fresh:
                    for worker in workers:
                        assert (await worker.get(ME, token)).status_code == 200
                assert switch_lines(stack) == 2
            assert await stored_key(stack) == other_key
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# --- the request that brings a worker's store connection back ---------------------------------
# Only the test's requests reconnect a worker: no job heartbeat or sweep runs meanwhile.
IDLE_WORKERS = {"JOB_HEARTBEAT_SECONDS": "3600", "JOB_STALE_SECONDS": "10800"}


async def test_the_request_that_reconnects_a_worker_is_checked_with_the_new_key() -> None:
    with running_stack(workers=2, extra_env=IDLE_WORKERS) as stack:
        with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
            gone: Account = login_admin(http)
            assert http.post("/api/v1/auth/logout", headers=gone.headers).status_code == 204
        async with both_workers(stack) as workers:
            restart_store(stack)
            for worker in workers:  # the first request each worker sees after the restart
                assert_invalid_token(await worker.get("/api/v1/users", gone.access_token))


async def test_a_login_that_reconnects_a_worker_signs_with_the_new_key() -> None:
    with running_stack(workers=2, extra_env=IDLE_WORKERS) as stack:
        async with both_workers(stack) as workers:
            restart_store(stack)
            for worker in workers:  # the first request each worker sees after the restart
                token = await worker.log_in()
                assert (await worker.get(ME, token)).status_code == 200


async def test_a_token_the_other_worker_signed_with_the_new_key_works_at_once() -> None:
    """One worker switches keys first (a login reconnects it); the other's first request
    since the restart carries a token of the new key, and reconnects it as it is checked."""
    with running_stack(workers=2, extra_env=IDLE_WORKERS) as stack:
        async with both_workers(stack) as workers:
            first, second = workers
            restart_store(stack)
            token = await first.log_in()
            assert (await second.get(ME, token)).status_code == 200
            assert (await second.get(ME, token)).status_code == 200
