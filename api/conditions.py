"""The preconditions of a write to one record: ``If-Match`` and ``If-None-Match``.

RFC 9110 §13.1: If-Match (a version the record must be at; ``*``: any) and If-None-Match
(versions it must not be at; ``*``: the record must not exist) are read here, each with its
repeated lines joined as one list (§5.3). ``api.services.versions`` applies them in the store:
the check and the write are one command (``expected_version``), never a read then a write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, Request

from api.errors import ApiError
from api.etags import ANY, MalformedEntityTags, if_match_versions

WRITE_PRECONDITIONS = {
    412: "If-Match does not match the record's current version, or If-None-Match matches it"
    " (`*`: the record exists); nothing is written",
}
"""The 412 of a write that takes ``WriteConditions`` (``error_responses(described=...)``)."""


@dataclass(frozen=True)
class WriteConditions:
    """``if_match``: the versions the write may happen at (``None``: any, the header absent or
    ``*``; empty: none). ``if_none_match``: the versions it must not happen at (``None``:
    absent); ``none_match_any``: If-None-Match ``*``, refused whenever the record exists."""

    if_match: frozenset[int] | None = None
    if_none_match: frozenset[int] | None = None
    none_match_any: bool = False

    @property
    def refuses_some(self) -> bool:
        """Whether If-None-Match was sent: the version must be read to decide."""
        return self.none_match_any or self.if_none_match is not None


def header_list(request: Request, name: str) -> str | None:
    """A list header with its repeated lines joined as one list (RFC 9110 §5.3)."""
    lines = request.headers.getlist(name)
    return ", ".join(lines) if lines else None


def malformed(name: str) -> ApiError:
    # Still 412 (the precondition cannot hold), but saying so: "does not match the current
    # version" sent a client whose tag was unquoted to re-read a record it had.
    message = f'malformed {name}: send * or the ETag as GET sent it, W/"<version>"'
    detail = {"field": f"header.{name.lower()}", "message": message}
    return ApiError(412, "PRECONDITION_FAILED", message, [detail])


async def parse_write_conditions(
    request: Request,
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description='Write only if the record is at this version: W/"3" (several: a list)',
        ),
    ] = None,
    if_none_match: Annotated[
        str | None,
        Header(
            alias="If-None-Match",
            description='Write only if the record is not at this version (W/"3"); `*`: never'
            " to a record that exists",
        ),
    ] = None,
) -> WriteConditions:
    """Both headers, every line of each (the parameters above document them; FastAPI would
    give only the first line). A value that is not ``*`` or entity tags is 412, saying so."""
    accepted = header_list(request, "if-match")
    refused = header_list(request, "if-none-match")
    try:
        versions = if_match_versions(accepted)
    except MalformedEntityTags:
        raise malformed("If-Match") from None
    if refused is None or not refused.strip():
        # An empty list names no tag (RFC 9110 §5.6.1): the condition holds, as a GET reads
        # it (QA: a write refused it as malformed).
        return WriteConditions(versions)
    if refused.strip() == ANY:
        return WriteConditions(versions, none_match_any=True)
    try:
        return WriteConditions(versions, if_match_versions(refused))
    except MalformedEntityTags:
        # Ignoring it, as a GET does, would write what the client asked not to write.
        raise malformed("If-None-Match") from None
