"""CSV import report (the body of ``POST /batch/import``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RowProblem(BaseModel):
    """One refused row: its number (1 = the first line after the header), field, reason."""

    row: int = Field(ge=1, examples=[3])
    field: str | None = Field(examples=["total_price"])
    message: str = Field(examples=["Input should be greater than 0"])


class ImportReport(BaseModel):
    """What an import did: rows read, imported and refused, and why (at most 100 listed)."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "table": "products",
                    "atomic": False,
                    "rows": 3,
                    "imported": 2,
                    "failed": 1,
                    "errors": [{"row": 2, "field": "id", "message": "id 'p-1' exists in products"}],
                    "errors_omitted": 0,
                }
            ]
        }
    }

    table: str
    atomic: bool
    rows: int = Field(ge=0, description="Data rows read (blank lines are skipped)")
    imported: int = Field(ge=0)
    failed: int = Field(ge=0)
    errors: list[RowProblem] = Field(description="The first 100 problems")
    errors_omitted: int = Field(ge=0, description="Problems not listed")
    stopped_at_row: int | None = Field(
        None,
        ge=1,
        description="Present when a malformed line ended the reading: the row where it"
        " stopped; the rest of the file was not read",
    )
