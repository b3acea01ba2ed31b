"""The real application plus ``GET /boom``, which raises: how a 500 looks under gunicorn.

running_stack(app="tests.support.failing_app:create_failing_app()")
"""

from __future__ import annotations

from fastapi import FastAPI

from api.main import create_app


def create_failing_app() -> FastAPI:
    app = create_app()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom for the logs test")

    return app
