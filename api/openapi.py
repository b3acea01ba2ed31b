"""The OpenAPI document: FastAPI's, plus the bearer scheme on every operation that authenticates.

The auth dependencies (``api.deps.AUTHENTICATING``) read the token from the request themselves
instead of depending on ``oauth2_scheme``, which would cost a dependency level per request, so
FastAPI cannot see that they authenticate. This adds what it would have written: the scheme
under ``components.securitySchemes`` (it drives the Authorize button of /docs) and a
``security`` requirement on each operation whose dependencies include one of them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute, iter_route_contexts

from api.deps import AUTHENTICATING, oauth2_scheme


def authenticates(dependant: Dependant) -> bool:
    """Whether ``dependant`` or anything it depends on is one of the auth dependencies."""
    pending = list(dependant.dependencies)
    while pending:
        sub = pending.pop()
        if sub.call in AUTHENTICATING:
            return True
        pending.extend(sub.dependencies)
    return False


def add_bearer_security(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    name = oauth2_scheme.scheme_name
    requirement: list[dict[str, list[str]]] = [{name: []}]
    # Route contexts, as FastAPI's own generator walks them: an included router's routes with
    # their prefix and the router's dependencies (e.g. ``require_admin``).
    for route in iter_route_contexts(app.routes):
        if not (isinstance(route.original_route, APIRoute) and route.include_in_schema):
            continue
        if authenticates(route.dependant):
            for method in route.methods or ():
                schema["paths"][route.path_format][method.lower()]["security"] = requirement
    definition = jsonable_encoder(oauth2_scheme.model, by_alias=True, exclude_none=True)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[name] = definition
    return schema


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` (FastAPI's documented way to extend the document)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document (and builds it again if routes are added); adding the
        # requirements again to the cached one changes nothing.
        return add_bearer_security(app, generate())

    app.openapi = openapi  # type: ignore[method-assign]
