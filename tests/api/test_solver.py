"""``api.solver``: planned dependency solving answers exactly as FastAPI's own solver.

Each case builds the same routes twice, one app with ``plan_dependencies`` and one without,
sends both the same requests (valid and invalid) and compares status, body and the calls the
dependencies saw. The service's own routes run on the plan in every integration test; the last
tests check that each of them has one.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time,
# and they name dependencies local to ``build``.
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import (
    BackgroundTasks,
    Body,
    Cookie,
    Depends,
    FastAPI,
    Header,
    Path,
    Query,
    Request,
    Response,
    Security,
)
from fastapi.routing import APIRoute
from fastapi.security import SecurityScopes
from pydantic import BaseModel, Field

from api import solver
from api.main import create_app
from tests.support.inprocess import in_process


class Filters(BaseModel):
    limit: int = Field(10, ge=1, le=100)
    tag: list[str] = []


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)


def build(planned: bool) -> tuple[FastAPI, list[str]]:
    """Routes using every kind of input a dependency can take; ``calls`` records the calls."""
    calls: list[str] = []
    app = FastAPI()

    async def token(x_token: Annotated[str, Header(min_length=3)]) -> str:
        calls.append("token")
        return x_token

    def sync_session(session: Annotated[str | None, Cookie()] = None) -> str | None:
        calls.append("session")  # a plain function: FastAPI runs it in a thread
        return session

    async def owner(
        item_id: Annotated[int, Path(ge=1)], tok: Annotated[str, Depends(token)]
    ) -> dict[str, Any]:
        calls.append("owner")
        return {"item": item_id, "token": tok}

    async def resource() -> AsyncIterator[str]:
        calls.append("open")
        yield "resource"
        calls.append("close")

    async def paging(
        page: Annotated[int, Query(ge=1)] = 1,
        sort: Annotated[list[str] | None, Query()] = None,
        q: Annotated[str | None, Query(alias="search", max_length=5)] = None,
    ) -> dict[str, Any]:
        calls.append("paging")
        return {"page": page, "sort": sort, "q": q}

    @app.get("/items/{item_id}")
    async def read_item(
        request: Request,
        response: Response,
        owned: Annotated[dict[str, Any], Depends(owner)],
        again: Annotated[str, Depends(token)],  # cached: token runs once
        pages: Annotated[dict[str, Any], Depends(paging)],
        session: Annotated[str | None, Depends(sync_session)],
        held: Annotated[str, Depends(resource)],
        verbose: bool = False,
    ) -> dict[str, Any]:
        response.headers["x-seen"] = request.url.path
        return {
            "owned": owned,
            "again": again,
            "pages": pages,
            "session": session,
            "held": held,
            "verbose": verbose,
            "calls": list(calls),
        }

    @app.get("/uncached")
    async def uncached(
        a: Annotated[str, Depends(token)], b: Annotated[str, Depends(token, use_cache=False)]
    ) -> dict[str, Any]:
        return {"a": a, "b": b, "calls": list(calls)}

    @app.get("/model")
    async def by_model(filters: Annotated[Filters, Query()]) -> dict[str, Any]:
        return filters.model_dump()

    @app.post("/items/{item_id}")
    async def write_item(
        item: Item,
        background: BackgroundTasks,
        owned: Annotated[dict[str, Any], Depends(owner)],
        note: Annotated[str, Body(max_length=3)] = "",
    ) -> dict[str, Any]:
        background.add_task(calls.append, "background")
        return {"item": item.model_dump(), "owned": owned, "note": note}

    async def scoped(scopes: SecurityScopes) -> list[str]:
        return scopes.scopes

    @app.get("/scoped")
    async def with_scopes(s: Annotated[list[str], Security(scoped, scopes=["read"])]) -> Any:
        return s

    if planned:
        solver.plan_dependencies(app)
    return app, calls


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/items/7", {"headers": {"x-token": "abcd"}}),
    (
        "GET",
        "/items/7?page=2&sort=a&sort=-b&search=xy&verbose=yes",
        {"headers": {"x-token": "abcd"}},
    ),
    ("GET", "/items/7", {"headers": {"x-token": "abcd"}, "cookies": {"session": "s1"}}),
    ("GET", "/items/0?page=0&search=toolong", {"headers": {"x-token": "ab"}}),  # errors in both
    ("GET", "/items/x?page=zz", {}),  # missing header, bad path, bad query
    ("GET", "/items/7?verbose=maybe", {"headers": {"x-token": "abcd"}}),
    ("GET", "/items/7?sort=", {"headers": {"x-token": "abcd"}}),
    ("GET", "/uncached", {"headers": {"x-token": "abcd"}}),
    ("GET", "/model?limit=5&tag=a&tag=b", {}),
    ("GET", "/model?limit=0", {}),
    ("GET", "/model", {}),
    (
        "POST",
        "/items/3",
        {"headers": {"x-token": "abcd"}, "json": {"item": {"name": "n", "price": 2}, "note": "ok"}},
    ),
    (
        "POST",
        "/items/3",
        {"headers": {"x-token": "abcd"}, "json": {"item": {"name": "", "price": -1}}},
    ),
    ("POST", "/items/0", {"json": {"note": "too long"}}),
    ("GET", "/scoped", {}),
]


@pytest.fixture
def pair() -> Iterator[tuple[tuple[FastAPI, list[str]], tuple[FastAPI, list[str]]]]:
    yield build(planned=False), build(planned=True)


async def answer(app: FastAPI, method: str, url: str, kwargs: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        cookies = kwargs.pop("cookies", None)
        if cookies:
            client.cookies.update(cookies)
        return await client.request(method, url, **kwargs)


@pytest.mark.parametrize(("method", "url", "kwargs"), REQUESTS)
async def test_same_answer_as_fastapi(
    pair: Any, method: str, url: str, kwargs: dict[str, Any]
) -> None:
    (plain, plain_calls), (planned, planned_calls) = pair
    expected = await answer(plain, method, url, dict(kwargs))
    got = await answer(planned, method, url, dict(kwargs))
    assert (got.status_code, got.json()) == (expected.status_code, expected.json())
    assert got.headers.get("x-seen") == expected.headers.get("x-seen")
    assert planned_calls == plain_calls


async def test_cases_cover_success_and_validation_errors(pair: Any) -> None:
    """The grid above is only worth comparing if it reaches both outcomes and every feature."""
    (plain, calls), _ = pair
    statuses = set()
    for method, url, kwargs in REQUESTS:
        statuses.add((await answer(plain, method, url, dict(kwargs))).status_code)
    assert statuses == {200, 422}
    for seen in ("token", "owner", "paging", "session", "open", "close", "background"):
        assert seen in calls


async def test_cached_dependency_runs_once_and_use_cache_false_runs_again() -> None:
    app, calls = build(planned=True)
    response = await answer(app, "GET", "/items/7", {"headers": {"x-token": "abcd"}})
    assert response.status_code == 200
    assert calls.count("token") == 1
    calls.clear()
    response = await answer(app, "GET", "/uncached", {"headers": {"x-token": "abcd"}})
    assert response.json()["calls"] == ["token", "token"]


async def test_failed_sub_dependency_is_not_called() -> None:
    """A dependency whose own parameters fail validation is skipped, as FastAPI does."""
    app, calls = build(planned=True)
    response = await answer(app, "GET", "/items/0", {"headers": {"x-token": "abcd"}})
    assert response.status_code == 422
    assert "owner" not in calls and "token" in calls
    assert [e["loc"] for e in response.json()["detail"]] == [["path", "item_id"]]


def test_plans_are_built_once_and_unsupported_dependants_have_none() -> None:
    app, _ = build(planned=True)
    routes = {(r.path, tuple(r.methods)): r for r in app.routes if isinstance(r, APIRoute)}
    item = routes[("/items/{item_id}", ("GET",))]
    assert solver.plan_for(item.dependant) is solver.plan_for(item.dependant) is not None
    assert solver.plan_for(routes[("/scoped", ("GET",))].dependant) is None


async def test_overrides_and_apps_that_did_not_opt_in_use_fastapis_solver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planned_for: list[object] = []
    real = solver.plan_for
    monkeypatch.setattr(solver, "plan_for", lambda d: planned_for.append(d) or real(d))
    app, _ = build(planned=True)
    plain, _ = build(planned=False)
    assert (await answer(plain, "GET", "/model", {})).status_code == 200
    assert planned_for == []
    app.dependency_overrides[solver.plan_for] = lambda: None  # any override at all
    assert (await answer(app, "GET", "/model", {})).status_code == 200
    assert planned_for == []
    app.dependency_overrides.clear()
    assert (await answer(app, "GET", "/model", {})).status_code == 200
    assert len(planned_for) == 1


def service_dependants(app: FastAPI) -> dict[str, Any]:
    """What the router hands the solver for each of the service's routes (an included
    router's routes are served through their effective contexts)."""
    found: dict[str, Any] = {}
    for route in app.router.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for context in contexts() if contexts else [route]:
            dependant = getattr(context, "dependant", None)
            if dependant is not None:
                methods = ",".join(sorted(getattr(context, "methods", None) or ()))
                found[f"{methods} {context.path}"] = dependant
    return found


def test_every_route_of_the_service_is_planned() -> None:
    dependants = service_dependants(create_app())
    assert len(dependants) > 50
    assert "GET /api/v1/users/{user_id}" in dependants
    assert [path for path, d in dependants.items() if solver.plan_for(d) is None] == []


async def test_the_service_solves_by_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request to the service reaches the plan (no store needed: it is refused at auth)."""
    app = create_app()
    dependants = service_dependants(app)
    planned_for: list[object] = []
    real = solver.plan_for
    monkeypatch.setattr(solver, "plan_for", lambda d: planned_for.append(d) or real(d))
    async with in_process(app) as client:
        response = await client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
    assert planned_for == [dependants["GET /api/v1/users/me"]]
