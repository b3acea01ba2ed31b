"""Running a long command's job (``builds.Job``) step by step, as the server does."""

from __future__ import annotations

from typing import Any

from storeserver.engine import Engine


def finish(engine: Engine, job: Any) -> tuple[int, Any]:
    """``(steps taken, result)`` of advancing ``job`` until it is done."""
    steps, done, result = 0, False, None
    while not done:
        done, result = engine.advance(job)
        steps += 1
    return steps, result
