"""Table management bodies and answers: schemas, indexes, writes by filter, audit, stats."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class SchemaBody(BaseModel):
    """A JSON Schema (Draft 2020-12) to attach to a generic table, or null to remove it."""

    # Only ``schema`` is read: by its field name too, ``json_schema`` was taken (QA).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "schema": {
                        "type": "object",
                        "properties": {"price": {"type": "number", "minimum": 0}},
                        "required": ["price"],
                    },
                    "force": False,
                }
            ]
        },
    )

    # ``schema`` is a (deprecated) BaseModel method: the field goes by an alias.
    json_schema: dict[str, Any] | None = Field(
        alias="schema", description="The JSON Schema every record must satisfy; null removes it"
    )
    # Strict, as the integers are: 1, "yes" or "false" are 422, not read as a flag (QA).
    force: StrictBool = Field(
        default=False,
        description="Attach even if existing rows violate it (they are reported, not changed)",
    )


class SchemaResult(BaseModel):
    """What attaching a schema found among the existing rows."""

    attached: bool
    checked: int
    violating: int
    violations: list[dict[str, Any]] = Field(description="At most 100: id and errors of each")


class TableDescription(BaseModel):
    """``typed``: the JSON Schema of the public model; generic: what the rows hold."""

    model_config = ConfigDict(extra="allow")

    table: str
    typed: bool
    rows: int
    indexes: list[dict[str, Any]]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    fields: dict[str, Any] | None = Field(
        default=None, description='Generic tables: {name: {"count", "types": {type: n}}}'
    )


class IndexBody(BaseModel):
    """A hash index on a top-level field; ``unique`` refuses duplicate values."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"field": "sku", "unique": True}]}
    )

    field: str = Field(pattern=FIELD_PATTERN, description="Top-level field name")
    unique: StrictBool = False
    casefold: StrictBool = Field(default=False, description="Compare strings case-insensitively")


class IndexSpec(BaseModel):
    field: str
    unique: bool
    casefold: bool


class FilterUpdateResult(BaseModel):
    matched: int
    updated: int


class FilterDeleteResult(BaseModel):
    deleted: int
    cascaded: int = Field(description="Records deleted because they referenced a deleted one")


class AuditEntry(BaseModel):
    """One mutation: who, what (field names only, never values), when, which request."""

    seq: int
    at: str
    user_id: str | None
    role: str | None
    request_id: str | None
    table: str
    op: str
    record_id: str | None
    filter: Any = None
    fields: list[str] = []
    count: int
