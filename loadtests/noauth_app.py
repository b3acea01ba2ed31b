"""Bench-only variant of the real app without authentication on ``/users/{id}`` routes.

No setting turns authentication off, so ``make bench-api`` measures issue 3's "no auth"
figure with this app: ``api.main.create_app()`` built after ``api.deps.UserId`` (a verified
bearer token, then "yourself or admin") is replaced by a plain path parameter. Every
middleware still runs, including the request guard, which without a token still sends one
``rate_hit`` per request to the store (keyed by client IP).

Why not ``app.dependency_overrides``: FastAPI re-analyses an overridden dependency's signature
on every request (``get_dependant``, pydantic ``TypeAdapter``s), which measured here cost more
than the authentication it replaced. Patching the alias before the routes are defined keeps
the route exactly as cheap as one declared without authentication.
"""

from __future__ import annotations

import sys
from typing import Annotated

from fastapi import FastAPI, Path

import api.deps

if "api.routes.users" in sys.modules:  # the patch below must precede the route definitions
    raise RuntimeError("import loadtests.noauth_app before api.main / api.routes")
api.deps.UserId = Annotated[str, Path(max_length=128, description="User id")]  # type: ignore[misc]

from api.main import create_app  # noqa: E402


def create_noauth_app() -> FastAPI:
    return create_app()
