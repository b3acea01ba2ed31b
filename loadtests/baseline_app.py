"""The ceiling for ``make bench-api``: a minimal FastAPI app, run by gunicorn like ours.

``GET /api/v1/users/{id}`` answers ``{"status": "success", "data": <record>}`` from a dict in
the worker's memory: no store, no authentication, no middleware. The record (the real stack's
answer for the benchmark's user) comes in ``BASELINE_RECORD`` as JSON.

The handler is what FastAPI's tutorial would write: a path parameter and a dict returned with
a ``dict[str, Any]`` return type, which FastAPI serializes on its fast path (pydantic-core to
JSON bytes). Started as
``gunicorn -c deploy/gunicorn.conf.py 'loadtests.baseline_app:create_app()'``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI, HTTPException


def create_app() -> FastAPI:
    record: dict[str, Any] = json.loads(os.environ["BASELINE_RECORD"])
    users = {str(record["id"]): record}
    app = FastAPI(title="bench-api ceiling")

    @app.get("/api/v1/users/{user_id}")
    async def read_user(user_id: str) -> dict[str, Any]:
        user = users.get(user_id)
        if user is None:
            raise HTTPException(404, "not found")
        return {"status": "success", "data": user}

    return app
