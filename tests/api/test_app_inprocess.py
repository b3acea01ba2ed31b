"""The application in-process with a scripted store: error mapping, the 500 path, request ids.

No server: the store dependency is overridden, and the lifespan is not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.auth.principals import Principal
from api.deps import authorize_order, authorize_user, get_caller, get_store
from api.main import create_app
from api.settings import Settings
from storeserver import errors
from tests.support.inprocess import in_process


class ScriptedStore:
    """Answers every call with ``answer(command, args)``; records the calls."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(
        self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        self.calls.append((command, args or {}))
        return self.answer(command, args or {})


def raising(exc: BaseException) -> Callable[[str, dict[str, Any]], Any]:
    def answer(command: str, args: dict[str, Any]) -> Any:
        raise exc

    return answer


ADMIN = Principal(id="admin-id", role="admin", session_id="s")


async def any_user(user_id: str) -> str:
    """``authorize_user`` for an admin (it reads the caller itself, not through ``Caller``)."""
    return user_id


async def any_order(order_id: str) -> str:
    """``authorize_order`` for an admin, likewise."""
    return order_id


@pytest.fixture
def app() -> FastAPI:
    """The app as an admin sees it (authentication is tested against the real stack)."""
    app = create_app(Settings(expose_worker_pid=True, store_retry_after=2))
    app.dependency_overrides[get_caller] = lambda: ADMIN
    app.dependency_overrides[authorize_user] = any_user
    app.dependency_overrides[authorize_order] = any_order
    return app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app) as client:
        yield client


def use_store(app: FastAPI, store: ScriptedStore) -> ScriptedStore:
    app.dependency_overrides[get_store] = lambda: store
    return store


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.BadRequest("bad"), 400, "BAD_REQUEST"),
        (errors.NotFound("gone", {"table": "t", "id": "x"}), 404, "NOT_FOUND"),
        (errors.Conflict("taken", {"reason": "unique", "field": "email"}), 409, "ALREADY_EXISTS"),
        (errors.Conflict("fk", {"reason": "foreign_key"}), 409, "FOREIGN_KEY_VIOLATION"),
        (errors.Conflict("deps", {"reason": "dependants"}), 409, "HAS_DEPENDANTS"),
        (errors.VersionMismatch("stale", {"current": 4}), 412, "PRECONDITION_FAILED"),
        (errors.LimitExceeded("too many"), 400, "LIMIT_EXCEEDED"),
        (errors.MemoryLimit("full"), 507, "INSUFFICIENT_STORAGE"),
        (errors.StoreUnavailable("down"), 503, "STORE_UNAVAILABLE"),
        # QA: a full disk read as an outage ("retry shortly") to whoever asked for a snapshot
        (
            errors.PersistenceError("cannot write the snapshot: disk full?"),
            503,
            "PERSISTENCE_ERROR",
        ),
        (errors.StoreBusy("queue full", {"max": 1024}), 503, "STORE_BUSY"),
        (errors.StoreTimeout("slow"), 504, "STORE_TIMEOUT"),
        (errors.InternalError("secret internals"), 500, "INTERNAL_ERROR"),
        (errors.UnknownCommand("nope"), 500, "INTERNAL_ERROR"),
    ],
)
async def test_store_errors_map_to_statuses(
    app: FastAPI, http: httpx.AsyncClient, exc: errors.StoreError, status: int, code: str
) -> None:
    use_store(app, ScriptedStore(raising(exc)))
    response = await http.get("/api/v1/data/things/abc")
    assert response.status_code == status
    body = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["cache-control"] == "no-store"
    if status == 503:
        assert response.headers["retry-after"] == "2"
    if status == 500:
        assert "secret" not in response.text


LOST = errors.OutcomeUnknown("lost after 'insert' was sent", {"outcome": "unknown"})
TIMED_OUT = errors.StoreTimeout("no answer to 'insert'", {"outcome": "unknown"})


@pytest.mark.parametrize(
    ("exc", "status", "code"), [(LOST, 503, "OUTCOME_UNKNOWN"), (TIMED_OUT, 504, "STORE_TIMEOUT")]
)
async def test_a_write_whose_outcome_is_unknown_says_so_and_does_not_invite_a_retry(
    app: FastAPI, http: httpx.AsyncClient, exc: errors.StoreError, status: int, code: str
) -> None:
    """QA: 4 of 450 writes cut off by a store crash were applied, and the API had answered
    "retry shortly" with Retry-After: resent, each would have been written twice."""
    use_store(app, ScriptedStore(raising(exc)))
    response = await http.post("/api/v1/data/things", json={"data": {"n": 1}})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert "may" in error["message"] and "applied" in error["message"]
    assert "Read the data before sending it again" in error["message"]
    assert error["details"] == [{"reason": "outcome_unknown"}]
    assert "retry-after" not in response.headers


@pytest.mark.parametrize("exc", [LOST, TIMED_OUT])
async def test_a_read_answers_as_any_outage_whatever_its_store_writes_lost(
    app: FastAPI, http: httpx.AsyncClient, exc: errors.StoreError
) -> None:
    """A GET changes nothing the client asked for (a dump's cursor is a store write): the
    usual 503 with Retry-After, or 504."""
    use_store(app, ScriptedStore(raising(exc)))
    response = await http.get("/api/v1/data/things/abc")
    error = response.json()["error"]
    assert error["details"] == []
    if isinstance(exc, errors.OutcomeUnknown):
        assert (response.status_code, error["code"]) == (503, "STORE_UNAVAILABLE")
        assert response.headers["retry-after"] == "2"
    else:
        assert (response.status_code, error["message"]) == (504, "The store did not answer in time")


async def test_unexpected_exception_is_a_sanitized_500_with_request_id(
    app: FastAPI, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    use_store(app, ScriptedStore(raising(RuntimeError("db password is hunter2"))))
    response = await http.get("/api/v1/users/abc", headers={"X-Request-ID": "trace-500"})
    assert response.status_code == 500
    body = response.json()
    assert body == {
        "status": "error",
        "error": {"code": "INTERNAL_ERROR", "message": "Internal server error", "details": []},
        "request_id": "trace-500",
    }
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"] == "trace-500"
    assert "x-worker-pid" in response.headers
    assert response.headers["connection"] == "close"  # uvicorn closes it after a 500
    assert "hunter2" in caplog.text  # logged for operators, with the request id
    assert "trace-500" in caplog.text


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("abc-123_X.y", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("semi;colon", False),
    ],
)
async def test_request_id_echoed_only_when_sane(
    http: httpx.AsyncClient, sent: str, echoed: bool
) -> None:
    response = await http.get("/api/v1/health", headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    assert (returned == sent) is echoed
    if not echoed:
        assert len(returned) == 32


async def test_validation_error_lists_fields_without_echoing_input(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    use_store(app, ScriptedStore(lambda c, a: {}))
    response = await http.post(
        "/api/v1/users",
        json={"email": "not-an-email", "full_name": "", "password": "sekrit-but-short"[:5]},
    )
    assert response.status_code == 422
    body = response.json()
    fields = {item["field"] for item in body["error"]["details"]}
    assert {"body.email", "body.full_name", "body.password"} <= fields
    assert "sekri" not in response.text


async def test_if_match_with_no_usable_version_is_412_without_a_write(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    store = use_store(app, ScriptedStore(lambda c, a: {}))
    response = await http.patch(
        "/api/v1/data/things/abc", json={"data": {"x": 1}}, headers={"If-Match": 'W/"abc"'}
    )
    assert response.status_code == 412
    # The record is read (a missing one is its 404: RFC 9110 §13.2.1), nothing written.
    assert [command for command, _ in store.calls] == ["get"]


async def test_several_if_match_versions_resolve_to_the_current_one(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    def answer(command: str, args: dict[str, Any]) -> Any:
        if command == "get":
            return {"id": "abc", "version": 4}
        return {"id": "abc", "version": 5, "x": 1}

    store = use_store(app, ScriptedStore(answer))
    response = await http.patch(
        "/api/v1/data/things/abc",
        json={"data": {"x": 1}},
        headers={"If-Match": 'W/"3", W/"4"'},
    )
    assert response.status_code == 200
    assert store.calls[-1] == (
        "patch",
        {"table": "things", "id": "abc", "changes": {"x": 1}, "expected_version": 4},
    )


async def test_generic_values_the_store_cannot_hold_are_422(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    store = use_store(app, ScriptedStore(lambda c, a: {}))
    response = await http.post("/api/v1/data/things", json={"data": {"n": 2**64, "id": 5}})
    assert response.status_code == 422
    fields = {item["field"] for item in response.json()["error"]["details"]}
    assert fields == {"body.data.n", "body.data.id"}
    assert store.calls == []


async def test_health_needs_no_store(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": {"status": "ok"}}
    assert response.headers["cache-control"] == "no-store"


def test_production_refuses_test_settings() -> None:
    with pytest.raises(ValueError):
        Settings(env="production", expose_worker_pid=True)
    with pytest.raises(ValueError):
        Settings(env="production", cors_origins=["*"])
    assert Settings(cors_origins="https://a.example, https://b.example").cors_origins == [  # type: ignore[arg-type]
        "https://a.example",
        "https://b.example",
    ]


async def test_a_dump_chosen_as_a_job_is_served_now_at_the_memory_limit(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    """A job's record is a write the store refuses at its memory limit; reads go on there,
    so a dump that became a job only by its size streams now. One asked for as a job is 507."""
    from api.jobs.web import get_jobs

    class JobsAtTheLimit:
        async def submit(self, *args: Any) -> Any:
            raise errors.MemoryLimit("at the limit", {"max_memory": 1})

    def answer(command: str, args: dict[str, Any]) -> Any:
        if command == "count":
            return 10**9  # far past JOB_ASYNC_ROWS
        assert command == "scan"
        return {"items": [{"id": "r1", "n": 1}], "cursor": None}

    use_store(app, ScriptedStore(answer))
    app.dependency_overrides[get_jobs] = JobsAtTheLimit
    response = await http.get("/api/v1/dump/things")
    assert response.status_code == 200, response.text
    assert response.text == '{"id":"r1","n":1}\n'
    response = await http.get("/api/v1/dump/things", params={"async": "true"})
    assert response.status_code == 507


ORDER = {
    "id": "o1",
    "user_id": "u1",
    "product_name": "p",
    "quantity": 1,
    "total_price": "1.00",
    "order_date": "2026-01-01T00:00:00.000000Z",
    "created_at": "2026-01-01T00:00:00.000000Z",
    "updated_at": "2026-01-01T00:00:00.000000Z",
    "version": 1,
}


def cascade_between_reads(races: int) -> Callable[[str, dict[str, Any]], Any]:
    """The store as a cascade delete of u1 (and its order o1) lands between the read of the
    orders and the read of their users, ``races`` times in a row; then it has happened."""
    gone = {"after": races}

    def answer(command: str, args: dict[str, Any]) -> Any:
        if command == "get_many":
            gone["after"] -= 1
            return [None]
        if command == "find":
            present = gone["after"] > 0
            return {"items": [ORDER] if present else [], "total": int(present)}
        if command == "get":
            if gone["after"] > 0:
                return ORDER
            raise errors.NotFound("gone", {"table": args["table"], "id": args["id"]})
        raise AssertionError(command)

    return answer


async def test_an_embed_never_shows_an_order_whose_user_is_gone(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    """The orders and their users are two store reads: a cascade between them must not give
    an order with "user": null (a state the store never held); the read runs again."""
    use_store(app, ScriptedStore(cascade_between_reads(1)))
    listed = await http.get("/api/v1/orders", params={"expand": "user"})
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"] == [] and listed.json()["meta"]["total"] == 0
    use_store(app, ScriptedStore(cascade_between_reads(1)))
    assert (await http.get("/api/v1/orders/o1", params={"expand": "user"})).status_code == 404
    use_store(app, ScriptedStore(cascade_between_reads(3)))  # every attempt raced
    busy = await http.get("/api/v1/orders", params={"expand": "user"})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "CHANGED_WHILE_READ"


async def test_ready_answers_503_within_its_second_however_the_store_call_waits(
    app: FastAPI, http: httpx.AsyncClient
) -> None:
    """client QA: a reconnection whose set-up hung held the probe for STORE_TIMEOUT (5 s), the
    call's own 1 s timeout starting only once it was sent. The probe's second is its whole
    answer."""

    class HungSetUp:
        async def call(self, command: str, args: Any = None, *, timeout: Any = None) -> Any:
            await asyncio.sleep(60)  # waiting for the connection, before any timeout starts

    app.dependency_overrides[get_store] = HungSetUp
    response = await asyncio.wait_for(http.get("/api/v1/ready"), 10)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "STORE_UNAVAILABLE"
    assert response.headers["Retry-After"] == "2"
