"""Background jobs: state in the store's ``_jobs`` table, run by a per-worker runner.

``start_jobs``/``stop_jobs`` are the lifespan hooks; routes start jobs through ``JobsDep``
(``api.jobs.web``) and answer ``202`` with ``Location: /api/v1/jobs/{id}``.
"""

from __future__ import annotations

from typing import Any

from api.jobs import imports as _imports  # noqa: F401  (registers what a lost import says)
from api.jobs import kinds as _kinds  # noqa: F401  (registers the job kinds)
from api.jobs.runner import JobRunner
from api.settings import Settings
from api.store import Store


async def start_jobs(state: Any, store: Store, settings: Settings) -> JobRunner:
    """Open this worker's runner (after the store is connected) and keep it on ``state``."""
    runner = JobRunner(store, settings)
    await runner.start()
    state.jobs = runner
    return runner


async def stop_jobs(state: Any) -> None:
    runner: JobRunner | None = getattr(state, "jobs", None)
    if runner is not None:
        await runner.stop()
