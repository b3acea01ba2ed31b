"""The response envelope models (documentation of what ``api.responses`` writes)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class PageMeta(BaseModel):
    """Pagination metadata of a list."""

    page: int = Field(ge=1, examples=[1])
    per_page: int = Field(ge=1, le=100, examples=[20])
    total: int = Field(ge=0, description="Records matching the filters, over all pages")


class Envelope(BaseModel, Generic[T]):
    """A successful single-item response."""

    status: Literal["success"] = "success"
    data: T


class ListEnvelope(BaseModel, Generic[T]):
    """A successful list response."""

    status: Literal["success"] = "success"
    data: list[T]
    meta: PageMeta


class GroupsEnvelope(ListEnvelope[dict[str, Any]]):
    """Groups: the group-by fields, then each metric by its name (decimals as strings)."""


class ErrorItem(BaseModel):
    """One problem: the field (``body.email``, ``query.per_page``) and what is wrong."""

    field: str | None = None
    message: str | None = None
    model_config = {"extra": "allow"}


class ErrorBody(BaseModel):
    code: str = Field(examples=["NOT_FOUND"], description="UPPER_SNAKE error code")
    message: str = Field(examples=["record not found"])
    details: list[ErrorItem] = []


class ErrorEnvelope(BaseModel):
    """Every error response."""

    status: Literal["error"] = "error"
    error: ErrorBody
    request_id: str = Field(description="Echo of X-Request-ID, or the one generated")


_DESCRIPTIONS = {
    400: "Bad query, bad table name or field, or a store limit",
    401: "Missing, invalid, expired or revoked access token (WWW-Authenticate: Bearer)",
    403: "Your role does not allow this",
    404: "Not found (or not yours)",
    409: "Duplicate unique value, foreign key violation, or a record with dependants",
    412: "If-Match does not match the record's current version",
    413: "Body or record too large",
    415: "The body is not JSON (application/json)",
    422: "Validation error; `details` lists each field and message",
    429: "Rate limited: see Retry-After and X-Rate-Limit-*",
    503: "Store unavailable (`STORE_UNAVAILABLE`), or busy with long queries or downloads"
    " (`STORE_BUSY`);"
    " with Retry-After",
    504: "Store timeout",
    507: "Store memory limit reached; reads keep working",
}


def error_responses(
    *statuses: int, validation: bool = True, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given error statuses, plus those every route can hit:
    503/504 (store), and 422 (parameters or body) and 429 (rate limit) unless ``validation``
    is false (the probes). ``described``: this route's own wording for some statuses."""
    common = {503, 504, 422, 429} if validation else {503, 504}
    descriptions = {**_DESCRIPTIONS, **(described or {})}
    return {
        status: {"model": ErrorEnvelope, "description": descriptions[status]}
        for status in sorted({*statuses, *common, *(described or {})})
    }
