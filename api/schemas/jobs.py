"""Job models (documentation of what ``api.routes.jobs`` returns)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.envelope import Envelope


class JobProgress(BaseModel):
    done: int = Field(ge=0, description="Units done so far")
    total: int | None = Field(None, description="Units in all, when known")
    unit: str = Field("rows", description="`rows`, or `bytes` (CSV export and import)")


class JobError(BaseModel):
    code: str = Field(examples=["WORKER_LOST"])
    message: str
    details: list[dict[str, Any]] | None = Field(
        None, description="As the synchronous call's error `details` (an import's counts)"
    )


class JobPublic(BaseModel):
    """A background job: its state, progress, timing, and result or error."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "9c2f6a1e-2b7d-4f0e-9a52-3d1c8e7b6a40",
                    "kind": "export",
                    "state": "succeeded",
                    "owner_id": "5b0f0c8e-3c3a-4a59-9a44-0f1de4b3a9a1",
                    "progress": {"done": 1000, "total": 1000, "unit": "rows"},
                    "cancel_requested": False,
                    "created_at": "2024-05-01T12:00:00.000000Z",
                    "started_at": "2024-05-01T12:00:00.010000Z",
                    "finished_at": "2024-05-01T12:00:00.350000Z",
                    "elapsed_seconds": 0.34,
                    "result": {
                        "url": "/api/v1/jobs/9c2f6a1e-2b7d-4f0e-9a52-3d1c8e7b6a40/result",
                        "format": "ndjson",
                        "rows": 1000,
                        "bytes": 181234,
                    },
                    "error": None,
                }
            ]
        }
    }

    id: str
    kind: str = Field(description="`snapshot`, `export`, `import`, `update_where`, ...")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    owner_id: str
    progress: JobProgress
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float | None = Field(description="Running time so far, or in total")
    result: dict[str, Any] | None = Field(
        description="On success: the operation's answer (an export's has a download `url`, its"
        " `bytes` and, for NDJSON, its `rows`: a CSV's rows are not counted, as a quoted cell may"
        " hold line breaks)"
    )
    error: JobError | None


JOB_LOCATION_HEADER = {
    "Location": {"description": "The job: `/api/v1/jobs/{id}`", "schema": {"type": "string"}}
}


def job_started(description: str = "Started as a background job") -> dict[int | str, Any]:
    """The 202 of a route that can run as a background job (``api.jobs.web.accepted``): the
    job itself, and where to follow it."""
    return {
        202: {
            "model": Envelope[JobPublic],
            "description": f"{description} (`Location: /api/v1/jobs/{{id}}`); the body is the job",
            "headers": JOB_LOCATION_HEADER,
        }
    }
