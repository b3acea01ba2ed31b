"""The OpenAPI document: FastAPI's, plus what it cannot see from the routes' signatures.

The auth dependencies (``api.deps.AUTHENTICATING``) read the token from the request themselves
instead of depending on ``oauth2_scheme``, which would cost a dependency level per request, so
FastAPI cannot see that they authenticate. This adds what it would have written: the scheme
under ``components.securitySchemes`` (it drives the Authorize button of /docs) and a
``security`` requirement on each operation whose dependencies include one of them.

Two more things are read from the request as a whole: a list's filters (any number of
``field__op=value`` parameters, ``api.deps.FILTERING``), described as one free-form object
parameter (``style: form, explode: true``: each of its keys is its own query parameter, as
Swagger UI and generated clients send it); and ``If-None-Match`` on the reads that answer 304
(or 412, a POST query).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute, iter_route_contexts

from api.deps import AUTHENTICATING, FILTERING, oauth2_scheme
from api.queries import BASE_FIELDS, MAX_FILTERS, MAX_IN_VALUES, OPERATORS, Fields
from api.schemas.envelope import QUERY_MATCHED

IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": 'The ETag of what you have (W/"3"): 304 if it is still current',
}


def depends_on(dependant: Dependant, calls: Any) -> Any:
    """The first of ``calls`` that ``dependant`` or anything it depends on is, else None."""
    pending = list(dependant.dependencies)
    while pending:
        sub = pending.pop()
        if sub.call in calls:
            return sub.call
        pending.extend(sub.dependencies)
    return None


def authenticates(dependant: Dependant) -> bool:
    """Whether ``dependant`` or anything it depends on is one of the auth dependencies."""
    return depends_on(dependant, AUTHENTICATING) is not None


def filter_parameter(fields: Fields | None) -> dict[str, Any]:
    if fields is None:
        names = "any field (a dotted path reaches into nested maps)"
    else:
        names = ", ".join(f"`{name}`" for name in fields)
    operators = ", ".join(sorted(OPERATORS))
    return {
        "name": "filters",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        "description": (
            "Filters, each its own query parameter: `field=value` (equal) or"
            f" `field__op=value`, op one of {operators}. `in` takes up to {MAX_IN_VALUES}"
            " comma-separated values, `exists` true or false; `null` matches a missing or"
            f" null value of a typed field. At most {MAX_FILTERS}; a record must match all."
            f" Fields: {names}."
        ),
        "example": {"created_at__gte": "2024-01-01"} if fields is None else _example(fields),
    }


def _example(fields: Fields) -> dict[str, str]:
    own = [name for name in fields if name not in BASE_FIELDS]
    return {f"{own[0]}__in": "a,b"} if own else {"version__gte": "2"}


def add_request_parameters(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    for route in iter_route_contexts(app.routes):
        if not (isinstance(route.original_route, APIRoute) and route.include_in_schema):
            continue
        parser = depends_on(route.dependant, FILTERING)
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            parameters = operation.setdefault("parameters", [])
            names = {parameter["name"].lower() for parameter in parameters}
            if parser is not None and "filters" not in names:
                parameters.append(filter_parameter(FILTERING[parser]))
            responses = operation["responses"]
            conditional = "304" in responses or (
                responses.get("412", {}).get("description") == QUERY_MATCHED[412]
            )
            if conditional and "if-none-match" not in names:
                parameters.append(IF_NONE_MATCH)
    return schema


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
        return add_request_parameters(app, add_bearer_security(app, generate()))

    app.openapi = openapi  # type: ignore[method-assign]
