"""FastAPI's dependency solving, planned once per dependency instead of on every request.

Measured with ``python -m loadtests.api_profile``: ``fastapi.dependencies.utils.
solve_dependencies`` took about 73 µs of the 240 a worker spends on an authenticated
``GET /api/v1/users/{id}``. Little of that is the dependencies' own work: on every request and
for every dependency it works out again what never changes between requests (the cache key,
whether the callable is a coroutine or a generator, each parameter's alias, whether its type is
a sequence, whether it is a parameter model), and walks all four parameter sources even when a
dependency reads none of them.

``plan_dependencies(app)`` makes that work happen once: the first request through a
dependency (a ``Dependant``) builds a ``Plan`` of it, and every later request only runs the
plan. The plan does what ``solve_dependencies`` does, in the same order and with FastAPI's own
helpers for each step (so the values, the validation errors and their order are the same):
sub-dependencies first, depth first, each solved once per request (``use_cache``); a
sub-dependency whose parameters fail validation is not called and its errors are collected;
then this dependency's path, query, header and cookie parameters, then the body.

FastAPI's own solver still runs where a plan would have to copy more of it: dependency
overrides (tests), security scopes, WebSocket routes, dependencies with a concurrency limit,
and any app that did not opt in (the benchmarks' minimal apps stay plain FastAPI).
``tests/api/test_solver.py`` sends the same valid and invalid requests to routes using every
kind of input through both solvers and compares the answers, and checks that every route of
the service has a plan. FastAPI is pinned (constraints.txt); these helpers are its internals,
so that test is what tells an upgrade broke the plan.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies import utils as fd
from fastapi.dependencies.models import (
    Dependant,
    _get_cache_key,
    _is_async_gen_callable,
    _is_coroutine_callable,
    _is_gen_callable,
)
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response

_fastapi_solve = fd.solve_dependencies

# How a sub-dependency is called.
COROUTINE, GENERATOR, THREAD = "coroutine", "generator", "thread"


@dataclass(slots=True)
class Param:
    """One path, query, header or cookie parameter, its request key worked out in advance."""

    field: Any
    aliases: tuple[str, ...]  # request keys in preference order
    getlist: bool  # read every value of a repeated key (``list[str]`` query parameters)
    sequence: bool  # a sequence type: an empty value counts as missing
    model: Any  # a parameter model (``Annotated[Model, Query()]``), read by FastAPI's helper
    location: str  # "path", "query", "header" or "cookie"

    def read(self, received: Mapping[str, Any], values: dict[str, Any]) -> tuple[Any, list[Any]]:
        """FastAPI's ``request_params_to_args`` for this one field."""
        if self.model is not None:
            return fd._request_param_model_to_args(self.field, self.model, received)
        alias = self.aliases[0]
        if len(self.aliases) > 1:
            alias = next((a for a in self.aliases if a in received), alias)
        if self.getlist and isinstance(received, ImmutableMultiDict | Headers):
            value: Any = received.getlist(alias)
        else:
            value = received.get(alias, None)
        if value is None or (self.sequence and len(value) == 0):
            value = fd.Undefined  # the default is applied by the validation below
        return fd._validate_value_with_model_field(
            field=self.field, value=value, values=values, loc=(self.location, alias)
        )


@dataclass(slots=True)
class Sub:
    """A sub-dependency: its plan, how it is called, and where its value goes."""

    dependant: Dependant
    plan: Plan
    call: Callable[..., Any]
    how: str
    name: str | None
    use_cache: bool
    cache_key: Any


@dataclass(slots=True)
class Plan:
    dependant: Dependant
    subs: tuple[Sub, ...]
    sources: tuple[tuple[str, tuple[Param, ...]], ...]  # only the sources it reads
    has_body: bool
    request_name: str | None
    connection_name: str | None
    response_name: str | None
    background_name: str | None

    async def solve(
        self,
        request: Request,
        body: Any,
        background_tasks: StarletteBackgroundTasks | None,
        response: Response,
        cache: dict[Any, Any],
        embed_body_fields: bool,
    ) -> tuple[dict[str, Any], list[Any], StarletteBackgroundTasks | None]:
        values: dict[str, Any] = {}
        errors: list[Any] = []
        for sub in self.subs:
            sub_values, sub_errors, background_tasks = await sub.plan.solve(
                request, body, background_tasks, response, cache, embed_body_fields
            )
            if sub_errors:
                errors.extend(sub_errors)
                continue
            if sub.use_cache and sub.cache_key in cache:
                solved = cache[sub.cache_key]
            elif sub.how == COROUTINE:
                solved = await sub.call(**sub_values)
            elif sub.how == GENERATOR:
                stack = request.scope[
                    "fastapi_function_astack"
                    if sub.dependant.scope == "function"
                    else "fastapi_inner_astack"
                ]
                solved = await fd._solve_generator(
                    request=request, dependant=sub.dependant, stack=stack, sub_values=sub_values
                )
            else:
                solved = await run_in_threadpool(sub.call, **sub_values)
            if sub.name is not None:
                values[sub.name] = solved
            if sub.cache_key not in cache:
                cache[sub.cache_key] = solved
        for source, params in self.sources:
            received = _received(request, source)
            found: dict[str, Any] = {}
            for param in params:
                value, param_errors = param.read(received, found)
                if param_errors:
                    errors.extend(param_errors)
                else:
                    found[param.field.name] = value
            values.update(found)
        if self.has_body:
            body_values, body_errors = await fd.request_body_to_args(
                body_fields=self.dependant.body_params,
                received_body=body,
                embed_body_fields=embed_body_fields,
            )
            values.update(body_values)
            errors.extend(body_errors)
        if self.connection_name:
            values[self.connection_name] = request
        if self.request_name:
            values[self.request_name] = request
        if self.background_name:
            if background_tasks is None:
                background_tasks = fd.BackgroundTasks()
            values[self.background_name] = background_tasks
        if self.response_name:
            values[self.response_name] = response
        return values, errors, background_tasks


def _received(request: Request, source: str) -> Mapping[str, Any]:
    if source == "path":
        return request.path_params
    if source == "query":
        return request.query_params
    if source == "header":
        return request.headers
    return request.cookies


def _param(field: Any, location: str) -> Param:
    model = fd._get_param_model(field)
    if model is not None:
        return Param(field, (), False, False, model, location)
    aliases = tuple(request_key for _, request_key in fd._get_param_aliases(field))
    # As FastAPI's _get_multidict_value: a Json field reads one value even when its type is a
    # sequence, and an empty sequence is a missing value either way.
    sequence = fd.field_annotation_is_sequence(field.field_info.annotation)
    getlist = sequence and not fd._is_json_field(field)
    return Param(field, aliases, getlist, sequence, None, location)


def _how(call: Callable[..., Any]) -> str:
    if _is_gen_callable(call) or _is_async_gen_callable(call):
        return GENERATOR
    return COROUTINE if _is_coroutine_callable(call) else THREAD


def build_plan(dependant: Dependant) -> Plan | None:
    """The plan of ``dependant``, or None where FastAPI's solver must run (see the module doc)."""
    if dependant.websocket_param_name or dependant.security_scopes_param_name:
        return None
    subs = []
    for sub in dependant.dependencies:
        if sub.call is None or sub.concurrency is not None:
            return None
        sub_plan = build_plan(sub)
        if sub_plan is None:
            return None
        key = _get_cache_key(dependant=sub)
        subs.append(Sub(sub, sub_plan, sub.call, _how(sub.call), sub.name, sub.use_cache, key))
    kinds = (
        ("path", dependant.path_params),
        ("query", dependant.query_params),
        ("header", dependant.header_params),
        ("cookie", dependant.cookie_params),
    )
    sources = tuple(
        (source, tuple(_param(field, source) for field in fields))
        for source, fields in kinds
        if fields
    )
    return Plan(
        dependant=dependant,
        subs=tuple(subs),
        sources=sources,
        has_body=bool(dependant.body_params),
        request_name=dependant.request_param_name,
        connection_name=dependant.http_connection_param_name,
        response_name=dependant.response_param_name,
        background_name=dependant.background_tasks_param_name,
    )


# id(dependant) -> (dependant, its plan or None). The dependant is kept so that its id is never
# reused by another object; routes live as long as their app.
_plans: dict[int, tuple[Dependant, Plan | None]] = {}
_planned_apps: weakref.WeakSet[Any] = weakref.WeakSet()


def plan_for(dependant: Dependant) -> Plan | None:
    entry = _plans.get(id(dependant))
    if entry is None or entry[0] is not dependant:
        entry = _plans[id(dependant)] = (dependant, build_plan(dependant))
    return entry[1]


async def solve_dependencies(
    *,
    request: Request,
    dependant: Dependant,
    body: Any = fd.Undefined,
    background_tasks: StarletteBackgroundTasks | None = None,
    response: Response | None = None,
    dependency_overrides_provider: Any | None = None,
    dependency_cache: dict[Any, Any] | None = None,
    **kwargs: Any,
) -> fd.SolvedDependency:
    """``fastapi.routing``'s solver: the plan for an app that opted in, FastAPI's otherwise."""
    plan = None
    if request.scope.get("app") in _planned_apps and not getattr(
        dependency_overrides_provider, "dependency_overrides", None
    ):
        plan = plan_for(dependant)
    if plan is None or not isinstance(request, Request):
        return await _fastapi_solve(
            request=request,
            dependant=dependant,
            body=body,
            background_tasks=background_tasks,
            response=response,
            dependency_overrides_provider=dependency_overrides_provider,
            dependency_cache=dependency_cache,
            **kwargs,
        )
    if response is None:
        # As FastAPI does: a response for dependencies to set headers and a status on.
        response = Response()
        del response.headers["content-length"]
        response.status_code = None  # type: ignore[assignment]
    cache = {} if dependency_cache is None else dependency_cache
    values, errors, background_tasks = await plan.solve(
        request, body, background_tasks, response, cache, kwargs["embed_body_fields"]
    )
    return fd.SolvedDependency(
        values=values,
        errors=errors,
        background_tasks=background_tasks,
        response=response,
        dependency_cache=cache,
    )


def plan_dependencies(app: FastAPI) -> None:
    """Solve the dependencies of ``app``'s routes by plan (the others keep FastAPI's solver)."""
    _planned_apps.add(app)
    fastapi.routing.solve_dependencies = solve_dependencies  # type: ignore[assignment]
