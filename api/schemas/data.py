"""Generic-table bodies and records."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DataBody(BaseModel):
    """A record body for ``/data/{table}``: the fields go under ``data``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"data": {"name": "blue widget", "stock": 12, "price": 9.5}}]
        },
    )

    data: dict[str, Any] = Field(
        description="The record's fields; id, created_at, updated_at, version are managed"
    )


class DataRecord(BaseModel):
    """A stored record of a generic table: your fields plus the managed ones."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "7f9c2e4a-1b3d-4c5e-8f60-718293a4b5c6",
                    "name": "blue widget",
                    "stock": 12,
                    "price": 9.5,
                    "created_at": "2024-05-01T12:00:00.000000Z",
                    "updated_at": "2024-05-01T12:00:00.000000Z",
                    "version": 1,
                }
            ]
        },
    )

    id: str
    created_at: str
    updated_at: str
    version: int
