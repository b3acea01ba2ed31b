"""``api.main.mount``: routes added flat to the app's router, documented as if included."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header
from pydantic import BaseModel

from api.main import create_app, mount


class Item(BaseModel):
    name: str


def needs_header(x_token: str = Header()) -> str:
    return x_token


def toy_router() -> APIRouter:
    router = APIRouter(
        prefix="/items",
        tags=["items"],
        dependencies=[Depends(needs_header)],
        responses={404: {"description": "No such item"}},
    )

    @router.post("", status_code=201, summary="Make an item")
    async def make(item: Item) -> Item:
        return item

    @router.get("/{item_id}", response_model=Item, deprecated=True, operation_id="read_item")
    async def read(item_id: int) -> Any:
        """Reads one item."""
        return {"name": str(item_id)}

    return router


def test_a_mounted_router_is_documented_as_the_included_one() -> None:
    included, mounted = FastAPI(), FastAPI()
    included.include_router(toy_router(), prefix="/api")
    mount(mounted, toy_router(), "/api")
    assert mounted.openapi() == included.openapi()
    assert [getattr(route, "path", None) for route in mounted.router.routes][-2:] == [
        "/api/items",
        "/api/items/{item_id}",
    ]


def test_every_documented_path_is_a_route_of_the_apps_own_router() -> None:
    # The metrics label a request with its route's path: it must be the full template.
    app = create_app()
    paths = {getattr(route, "path", None) for route in app.router.routes}
    documented = set(app.openapi()["paths"])
    assert documented and documented <= paths
    assert "/api/v1/users/{user_id}" in paths


def test_only_api_routes_are_mounted() -> None:
    router = APIRouter()
    router.add_route("/plain", lambda request: None)
    with pytest.raises(TypeError, match="only API routes"):
        mount(FastAPI(), router, "/api")
