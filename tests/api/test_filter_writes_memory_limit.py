"""Deletes by filter at the store's memory limit, in-process with a scripted store.

A job's record is a write the store refuses at its memory limit, and deletes are how to make
room there: a delete that would become a job only for its size runs now. One asked for with
``?async=true`` is 507, and so is an update by filter (it adds data) either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.auth.principals import Principal
from api.deps import get_caller, get_store
from api.jobs.web import get_jobs
from api.main import create_app
from api.settings import Settings
from storeserver import errors
from tests.support.inprocess import in_process

ADMIN = Principal(id="admin-id", role="admin", session_id="s")
URL = "/api/v1/data/items"
LIMIT = {"max_memory": 1000}
ROWS = 500_000
# A cap above the rows: a write over it is refused before any job (test_jobs covers that).
SETTINGS = Settings(max_rows_per_filter_write=1_000_000)


class StoreAtTheLimit:
    """A large ``items`` table in a store at its memory limit."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(self, command: str, args: dict[str, Any] | None = None, **_: Any) -> Any:
        self.calls.append(command)
        if command == "count":
            return ROWS  # past JOB_ASYNC_ROWS, within the cap, with or without the filter
        if command == "delete_where":
            return {"matched": ROWS, "deleted": ROWS}
        raise errors.MemoryLimit("at the limit", LIMIT)  # update_where: it adds data


class JobsAtTheLimit:
    async def submit(self, *args: Any) -> Any:
        raise errors.MemoryLimit("at the limit", LIMIT)  # the job's record is a write


@pytest.fixture
async def http() -> AsyncIterator[tuple[httpx.AsyncClient, StoreAtTheLimit]]:
    app: FastAPI = create_app(SETTINGS)
    store = StoreAtTheLimit()
    app.dependency_overrides[get_caller] = lambda: ADMIN
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_jobs] = JobsAtTheLimit
    async with in_process(app) as client:
        yield client, store


async def test_a_large_delete_by_filter_runs_now_at_the_memory_limit(
    http: tuple[httpx.AsyncClient, StoreAtTheLimit],
) -> None:
    client, store = http
    response = await client.delete(URL, params={"grp": 9})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"deleted": ROWS, "cascaded": 0}
    assert store.calls[-1] == "delete_where"

    asked = await client.delete(URL, params={"grp": 9, "async": "true"})
    assert asked.status_code == 507 and asked.json()["error"]["code"] == "INSUFFICIENT_STORAGE"


async def test_an_update_by_filter_is_still_507_at_the_memory_limit(
    http: tuple[httpx.AsyncClient, StoreAtTheLimit],
) -> None:
    client, _ = http
    for params in ({"grp": 9}, {"grp": 9, "async": "true"}):
        response = await client.patch(URL, params=params, json={"data": {"seen": True}})
        assert response.status_code == 507, response.text


def test_the_filter_write_routes_list_507() -> None:
    paths = create_app(Settings()).openapi()["paths"]["/api/v1/data/{table}"]
    assert "507" in paths["delete"]["responses"] and "507" in paths["patch"]["responses"]
