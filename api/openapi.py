"""The OpenAPI document: FastAPI's, plus what it cannot see from the routes' signatures.

The auth dependencies (``api.deps.AUTHENTICATING``) read the token from the request themselves
instead of depending on ``oauth2_scheme``, which would cost a dependency level per request, so
FastAPI cannot see that they authenticate. This adds what it would have written: the scheme
under ``components.securitySchemes`` (it drives the Authorize button of /docs) and a
``security`` requirement on each operation whose dependencies include one of them; where the
token is optional (``Caller`` alone, as open registration), the requirement lists the empty
alternative ``{}`` first, so Swagger UI and generated clients do not demand credentials.

Two more things are read from the request as a whole: a list's filters (any number of
``field__op=value`` parameters, ``api.deps.FILTERING``; also on the routes that select a
table's records as its list does: count, update and delete by filter, CSV export),
described as one free-form object parameter (``style: form, explode: true``: each of its
keys is its own query parameter, as Swagger UI and generated clients send it); and
``If-None-Match`` and ``If-Match`` on the reads that answer 304 (or 412, a POST query), and
``If-Match`` with its 412 on the reads that answer no ETag (``api.deps.UntaggedRead``).

The headers the middleware and the error handlers add to responses are declared here, by
status, where no route can declare them: X-Request-ID on every response, X-Rate-Limit-* on
those of the rate-limited routes, WWW-Authenticate on 401, ETag on 412, Retry-After on 429
and 503 (``components.headers``, referred to by each response). A form-encoded body is also declared
as ``multipart/form-data``, which the same form parser reads.

Two things FastAPI's generator loses are put back: the 400 FastAPI answers for a JSON body
nested too deeply to parse, on every operation that reads a JSON body; and the nulls of the
models' examples, which its ``exclude_none`` drops.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.deps import (
    AUTHENTICATING,
    FILTERING,
    REQUIRING_TOKEN,
    oauth2_scheme,
    refuse_tagged_if_match,
)
from api.guard import EXEMPT_PATHS, TOKEN_PATH
from api.queries import BASE_FIELDS, MAX_FILTERS, MAX_IN_VALUES, OPERATORS, Fields
from api.schemas.envelope import QUERY_MATCHED

REF_TEMPLATE = "#/components/schemas/{model}"
BODY_NOT_PARSED = "a JSON body nested too deeply to parse (`BAD_REQUEST`)"
BODY_TOO_LARGE = (
    "A body larger than MAX_BODY_BYTES, even on a route that reads none (`PAYLOAD_TOO_LARGE`)"
)
ERROR_CONTENT = {
    "application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="ErrorEnvelope")}}
}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


RESPONSE_HEADERS = {
    "X-Request-ID": _header("The request's id: the X-Request-ID sent if sane, else generated"),
    "X-Rate-Limit-Limit": _header("Requests allowed per window (RATE_LIMIT)"),
    "X-Rate-Limit-Remaining": _header("Requests left in this window"),
    "X-Rate-Limit-Reset": _header("When the window ends (Unix time, seconds)"),
    "Retry-After": _header("Seconds to wait before trying again"),
    "ETag": _header("The current ETag of what the condition was checked against"),
    "WWW-Authenticate": _header("The scheme to authenticate with: `Bearer` (with `error=...`)"),
}
RATE_LIMIT_HEADERS = ("X-Rate-Limit-Limit", "X-Rate-Limit-Remaining", "X-Rate-Limit-Reset")
HEADERS_BY_STATUS = {
    "401": ("WWW-Authenticate",),
    "412": ("ETag",),
    "429": ("Retry-After",),
    "503": ("Retry-After",),
}
FORM = "application/x-www-form-urlencoded"


def header_parameter(name: str, description: str) -> dict[str, Any]:
    """An optional string header, as OpenAPI describes a parameter."""
    schema = {"type": "string"}
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": schema,
        "description": description,
    }


IF_NONE_MATCH = header_parameter(
    "If-None-Match", 'The ETag of what you have (W/"3"): 304 if it is still current'
)
IF_MATCH = header_parameter(
    "If-Match", 'Answer only if this is still the current ETag (W/"3"), else 412'
)


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
            f" null value of a typed field. At most {MAX_FILTERS} (past either limit: 400"
            " `LIMIT_EXCEEDED`); a record must match all."
            f" Fields: {names}."
        ),
        "example": {"created_at__gte": "2024-01-01"} if fields is None else _example(fields),
    }


# Two values of each type, for the filters' example (a UUID field refuses ``a``).
_EXAMPLE_IN = {
    "uuid": "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1,0d3c8f3e-5f0a-4d1e-9d4b-2a7c9e1b6f00",
    "int": "1,2",
}


def _example(fields: Fields) -> dict[str, str]:
    own = [name for name in fields if name not in BASE_FIELDS]
    if not own:
        return {"version__gte": "2"}
    return {f"{own[0]}__in": _EXAMPLE_IN.get(fields[own[0]], "a,b")}


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
            if conditional and "if-match" not in names:
                parameters.append(IF_MATCH)
    return schema


UNTAGGED_412 = "If-Match names a version: this answer has none (no ETag), only `*` matches"


def add_untagged_preconditions(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """The reads without an ETag that refuse an If-Match naming tags (``UntaggedRead``):
    their 412 and the header, in the words of the envelope's other errors."""
    for route in iter_route_contexts(app.routes):
        if not (isinstance(route.original_route, APIRoute) and route.include_in_schema):
            continue
        if depends_on(route.dependant, {refuse_tagged_if_match}) is None:
            continue
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            responses = operation["responses"]
            if "412" not in responses:
                responses["412"] = {"description": UNTAGGED_412, "content": ERROR_CONTENT}
                operation["responses"] = dict(sorted(responses.items()))
            parameters = operation.setdefault("parameters", [])
            if "if-match" not in {parameter["name"].lower() for parameter in parameters}:
                parameters.append(IF_MATCH)
    return schema


def add_bearer_security(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    name = oauth2_scheme.scheme_name
    required: list[dict[str, list[str]]] = [{name: []}]
    # The empty requirement first: anonymous is allowed (open registration), a token optional.
    optional: list[dict[str, list[str]]] = [{}, {name: []}]
    # Route contexts, as FastAPI's own generator walks them: an included router's routes with
    # their prefix and the router's dependencies (e.g. ``require_admin``).
    for route in iter_route_contexts(app.routes):
        if not (isinstance(route.original_route, APIRoute) and route.include_in_schema):
            continue
        if authenticates(route.dependant):
            needed = depends_on(route.dependant, REQUIRING_TOKEN) is not None
            for method in route.methods or ():
                operation = schema["paths"][route.path_format][method.lower()]
                operation["security"] = required if needed else optional
    definition = jsonable_encoder(oauth2_scheme.model, by_alias=True, exclude_none=True)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[name] = definition
    return schema


def add_body_parse_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON body too deeply nested for Python's parser is FastAPI's 400 ("There was an error
    parsing the body") on every route that reads one, before any of the route's own checks."""
    for item in schema["paths"].values():
        for operation in item.values():
            if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue
            responses = operation["responses"]
            declared = responses.get("400")
            if declared is None:
                description = BODY_NOT_PARSED[0].upper() + BODY_NOT_PARSED[1:]
                responses["400"] = {"description": description, "content": ERROR_CONTENT}
                operation["responses"] = dict(sorted(responses.items()))
            elif BODY_NOT_PARSED not in declared["description"]:
                declared["description"] += f"; or {BODY_NOT_PARSED}"
    return schema


def add_body_limit(schema: dict[str, Any]) -> dict[str, Any]:
    """``api.hardening`` refuses a body over MAX_BODY_BYTES on any method that may carry one,
    before routing or authentication: 413 on routes that read no body too (a DELETE)."""
    for item in schema["paths"].values():
        for method, operation in item.items():
            responses = operation["responses"]
            if method in ("post", "put", "patch", "delete") and "413" not in responses:
                responses["413"] = {"description": BODY_TOO_LARGE, "content": ERROR_CONTENT}
                operation["responses"] = dict(sorted(responses.items()))
    return schema


def add_response_headers(schema: dict[str, Any]) -> dict[str, Any]:
    """The headers every response may carry (module docstring), as references to
    ``components.headers``; a header a route declared itself is left as it is."""
    schema.setdefault("components", {})["headers"] = RESPONSE_HEADERS
    for path, item in schema["paths"].items():
        # /auth/token is outside the guard but counts its own (stricter) limits.
        limited = path not in EXEMPT_PATHS or path == TOKEN_PATH
        for operation in item.values():
            for status, response in operation["responses"].items():
                names = ["X-Request-ID", *HEADERS_BY_STATUS.get(status, ())]
                if limited:
                    names += RATE_LIMIT_HEADERS
                headers = response.setdefault("headers", {})
                for name in names:
                    headers.setdefault(name, {"$ref": f"#/components/headers/{name}"})
    return schema


def add_multipart_forms(schema: dict[str, Any]) -> dict[str, Any]:
    """A form body is read by python-multipart in either encoding: declare both."""
    for item in schema["paths"].values():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            if FORM in content:
                content.setdefault("multipart/form-data", content[FORM])
    return schema


def route_models(app: FastAPI) -> set[type[BaseModel]]:
    """The models the routes name: bodies, response models and those of ``responses``."""
    found: set[type[BaseModel]] = set()
    for route in iter_route_contexts(app.routes):
        api_route = route.original_route
        if not (isinstance(api_route, APIRoute) and api_route.include_in_schema):
            continue
        candidates = [api_route.response_model]
        candidates += [extra.get("model") for extra in api_route.responses.values()]
        candidates += [param.field_info.annotation for param in route.dependant.body_params]
        found.update(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))
    return found


def restore_null_examples(app: FastAPI, schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI writes the document with ``exclude_none``, which also drops every null inside
    the models' examples (fastapi/fastapi#5559): a job's ``"error": null`` went missing and the
    example no longer matched its own schema (``error`` is required). The examples are put
    back as pydantic writes them, nulls included."""
    components = schema.get("components", {}).get("schemas", {})
    models = sorted(route_models(app), key=lambda model: model.__qualname__)
    pairs = [(model, mode) for model in models for mode in ("validation", "serialization")]
    _, generated = models_json_schema(pairs, ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
    for name, definition in generated.get("$defs", {}).items():
        if name in components:
            _copy_examples(definition, components[name])
    return schema


def _copy_examples(source: dict[str, Any], target: dict[str, Any]) -> None:
    """``source``'s examples into ``target``, the same schema, wherever both have it."""
    for key, value in source.items():
        if key in ("example", "examples"):
            target[key] = jsonable_encoder(value)
        elif key == "properties":  # keys here are field names, each with its own schema
            for field, sub in value.items():
                if isinstance(target.get(key, {}).get(field), dict):
                    _copy_examples(sub, target[key][field])
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _copy_examples(value, target[key])
        elif isinstance(value, list) and isinstance(target.get(key), list):
            for sub, into in zip(value, target[key], strict=False):
                if isinstance(sub, dict) and isinstance(into, dict):
                    _copy_examples(sub, into)


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` (FastAPI's documented way to extend the document)."""
    generate = app.openapi

    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document (and builds it again if routes are added): complete
        # each document it builds once.
        schema = generate()
        if not (completed and completed[0] is schema):
            schema = add_untagged_preconditions(app, add_bearer_security(app, schema))
            schema = add_body_parse_errors(restore_null_examples(app, schema))
            schema = add_body_limit(schema)
            schema = add_multipart_forms(add_response_headers(schema))
            completed[:] = [add_request_parameters(app, schema)]
        return completed[0]

    app.openapi = openapi  # type: ignore[method-assign]
