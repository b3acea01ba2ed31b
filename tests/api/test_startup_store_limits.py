"""A worker's start against a store that refuses the API's tables: its memory limit below what
an empty store uses, or fewer tables allowed than the API needs. The worker fails to boot at
once, naming the cause, instead of retrying for STORE_WAIT_SECONDS and failing with "store
not ready" (the real cause, "no table 'users'", nowhere in the log).

The lifespan runs in this process against a real store server in the test's event loop.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from api.main import StoreRefusedSetup, create_app, lifespan
from api.settings import START_REFUSAL_FILE_ENV, Settings
from storeserver.errors import StoreUnavailable
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.support.events import logged
from tests.support.store import short_tmp_dir

StartStore = Callable[..., Any]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def start_store(sock_dir: Path) -> AsyncIterator[StartStore]:
    """Start a store server on the test's socket (stopping the previous one first)."""
    servers: list[StoreServer] = []

    async def start(**settings: Any) -> StoreServer:
        if servers:
            await servers[-1].shutdown()
        server = StoreServer(StoreSettings(socket=sock_dir / "s.sock", **settings))
        await server.start()
        servers.append(server)
        return server

    yield start
    if servers and servers[-1].ready:
        await servers[-1].shutdown()


def worker_app(sock_dir: Path, tmp_path: Path) -> FastAPI:
    settings = Settings(
        store_socket=str(sock_dir / "s.sock"),
        store_wait_seconds=5.0,  # a worker still retrying fails the test with "not ready"
        bcrypt_rounds=4,
        job_result_dir=str(tmp_path / "jobs"),
    )
    return create_app(settings)


async def refused_start(app: FastAPI) -> str:
    with pytest.raises(StoreRefusedSetup) as refused:
        async with lifespan(app):
            pass
    return str(refused.value)


async def test_a_memory_limit_below_an_empty_store_fails_the_start_naming_it(
    start_store: StartStore,
    sock_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusal_file = tmp_path / "refusal"
    monkeypatch.setenv(START_REFUSAL_FILE_ENV, str(refusal_file))
    await start_store(max_memory=384)
    app = worker_app(sock_dir, tmp_path)
    with caplog.at_level(logging.WARNING, logger="api.main"):
        reason = await refused_start(app)
    assert reason.startswith(
        "the store refused to create the users table: MEMORY_LIMIT (STORE_MAX_MEMORY=384 bytes"
        " is below what the store uses already, "
    )
    assert reason.endswith(" MiB: raise it, to at least 64 MiB)")
    assert refusal_file.read_text() == reason  # for deploy/start_gunicorn.py: exit 2
    assert refusal_file.stat().st_mode & 0o077 == 0
    lines = logged(caplog, "api.main")
    assert [(line["event"], line["level"]) for line in lines] == [("store_setup_refused", "error")]
    assert lines[0]["message"] == reason and lines[0]["code"] == "MEMORY_LIMIT"


async def test_a_table_limit_below_the_api_tables_fails_the_start_naming_it(
    start_store: StartStore, sock_dir: Path, tmp_path: Path
) -> None:
    await start_store(max_tables=2)
    reason = await refused_start(worker_app(sock_dir, tmp_path))
    assert reason == (
        "the store refused to create the _jobs table: LIMIT_EXCEEDED (at most 2 tables:"
        " STORE_MAX_TABLES=2 leaves no room for it; the API needs 3 tables (users, orders,"
        " _jobs) besides yours)"
    )


async def test_a_store_at_its_memory_limit_holding_the_tables_still_starts(
    start_store: StartStore, sock_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It holds data: serving reads beats refusing to start (the steps it refuses are
    skipped, in one line)."""
    data_dir = tmp_path / "data"
    await start_store(data_dir=data_dir)
    app = worker_app(sock_dir, tmp_path)
    async with lifespan(app):
        pass  # the tables are created
    await start_store(data_dir=data_dir, max_memory=384)
    with caplog.at_level(logging.WARNING, logger="api.main"):
        async with lifespan(app):
            assert await app.state.store.call("count", {"table": "users"}) == 0
    events = [line["event"] for line in logged(caplog, "api.main")]
    assert events == ["setup_step_skipped"]


async def test_a_store_back_empty_at_its_limit_answers_unavailable_logged_once(
    start_store: StartStore, sock_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A running worker cannot refuse to start: its requests get 503 until the store takes
    the tables, and the reason is logged once however often it reconnects."""
    await start_store()
    app = worker_app(sock_dir, tmp_path)
    async with lifespan(app):
        await start_store(max_memory=384)  # restarted empty, with a limit it is already past
        store = app.state.store
        with caplog.at_level(logging.WARNING, logger="api.main"):
            for _ in range(3):
                with pytest.raises(StoreUnavailable, match="connection set-up failed"):
                    await store.connect()
        refused = logged(caplog, "api.main")
        assert [line["event"] for line in refused] == ["store_setup_refused"]
        assert refused[0]["message"].startswith("the store refused to create the users table")
