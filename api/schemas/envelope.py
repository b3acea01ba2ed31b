"""The response envelope models (documentation of what ``api.responses`` writes)."""

from __future__ import annotations

from typing import Any, Generic, Literal, Optional, TypeVar

from pydantic import BaseModel, Field, create_model

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


def projected(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every field but ``id`` optional: an item of a query, whose ``fields``
    may cut it down to ``id`` and the fields asked for (a client generated from the OpenAPI
    document must not require the others)."""
    fields: dict[str, Any] = {
        name: (
            info.annotation if name == "id" else Optional[info.annotation],  # noqa: UP045
            info if name == "id" else Field(None, description=info.description),
        )
        for name, info in model.model_fields.items()
    }
    return create_model(
        f"{model.__name__}Projected",
        __doc__=f"{model.__doc__ or model.__name__} Only `id` and the asked `fields` with"
        " a projection.",
        __config__=model.model_config,
        **fields,
    )


def projected_list(model: type[BaseModel]) -> type[BaseModel]:
    """The response model of a query route: a list of ``projected(model)`` items."""
    return ListEnvelope[projected(model)]  # type: ignore[misc, return-value]


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
    408: "The body stopped arriving for BODY_TIMEOUT seconds (`REQUEST_TIMEOUT`)",
    409: "Duplicate unique value, foreign key violation, a record with dependants, or the last"
    " admin (`LAST_ADMIN`)",
    412: "If-Match does not match the record's current version",
    413: "Body or record too large",
    415: "The body is not JSON (application/json)",
    422: "Validation error; `details` lists each field and message",
    429: "Rate limited: see Retry-After and X-Rate-Limit-*",
    503: "Store unavailable (`STORE_UNAVAILABLE`), busy with long queries or downloads"
    " (`STORE_BUSY`), or unable to write its data directory (`PERSISTENCE_ERROR`: disk full);"
    " with Retry-After. `OUTCOME_UNKNOWN` (no Retry-After): the store was lost after a write"
    " was sent, which may have been applied; read before sending it again. `JOBS_BUSY` (a"
    " route that starts a job): the worker holds JOB_MAX_QUEUED jobs already",
    504: "Store timeout (on a write: it may still have been applied)",
    507: "Store memory limit reached: writes that add data are refused, reads go on; a read"
    " over many rows stops once the store's memory in use is a quarter past the limit",
}


ETAG_HEADER = {
    "ETag": {
        "description": 'Weak tag of what was answered: W/"<version>" for a record',
        "schema": {"type": "string"},
    }
}
LOCATION_HEADER = {
    "Location": {"description": "Where to read what was created", "schema": {"type": "string"}}
}
RECORD_HEADERS = {**LOCATION_HEADER, **ETAG_HEADER}
CREATED: dict[int | str, dict[str, Any]] = {201: {"headers": RECORD_HEADERS}}
"""A route that creates a record (``record_response`` with a location)."""
TAGGED: dict[int | str, dict[str, Any]] = {200: {"headers": ETAG_HEADER}}
"""A 200 with the ETag of what it answers: a record written, a query's page."""
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    **TAGGED,
    304: {"description": "Not modified (If-None-Match)", "headers": ETAG_HEADER},
    412: {
        "model": ErrorEnvelope,
        "description": "If-Match does not name the current ETag (`PRECONDITION_FAILED`)",
        "headers": ETAG_HEADER,
    },
}
"""A GET that takes If-None-Match and If-Match (``read_preconditions``)."""
QUERY_MATCHED = {
    412: "If-None-Match matches the current result, or If-Match does not (`PRECONDITION_FAILED`)"
}
"""A POST query that takes If-None-Match (a hit is 412, as RFC 9110 asks of a POST) and
If-Match."""


def error_responses(
    *statuses: int, validation: bool = True, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given error statuses, plus those every route can hit:
    503/504 (store), and 422 (parameters or body) and 429 (rate limit) unless ``validation``
    is false (the probes); 408 (body timeout) with 413 (a route that takes a body).
    ``described``: this route's own wording for some statuses."""
    common = {503, 504, 422, 429} if validation else {503, 504}
    if 413 in statuses:  # a route that takes a body can also time out reading it
        common.add(408)
    descriptions = {**_DESCRIPTIONS, **(described or {})}
    return {
        status: {"model": ErrorEnvelope, "description": descriptions[status]}
        for status in sorted({*statuses, *common, *(described or {})})
    }
