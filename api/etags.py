"""Weak ETags from record versions, and parsing of If-Match / If-None-Match (pure functions).

A record's ETag is ``W/"<version>"``. A list's ETag hashes the ids and versions on the page,
the total and the page geometry, so any change that alters the page alters the tag.
``If-Match`` compares versions and ignores the ``W/`` prefix, as the contract asks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

ANY: Final = "*"
_ENTITY_TAG = re.compile(r'\s*(?:W/)?"([^"]*)"\s*')
# A version's tag exactly as ``record_etag`` writes it: tags are opaque text (RFC 9110
# §8.8.3), so ``W/"01"`` is not version 1's, for a write as for a read's comparison.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


def record_etag(version: object) -> str:
    """The weak ETag of one record."""
    return f'W/"{version}"'


def identity_etag(record: Mapping[str, Any]) -> str:
    """The weak ETag of a URL that may show another record later (``/orders/{id}/user``: the
    order moved). It covers the record's id and version: two users both at version 1 would
    share ``W/"1"``, and a client revalidating would get a 304 and keep showing the other one
    (QA). Not a tag for If-Match on a write to the record itself."""
    digest = hashlib.blake2b(str(record.get("id")).encode(), digest_size=8).hexdigest()
    return f'W/"u{digest}-{record.get("version")}"'


def list_etag(
    records: Iterable[Mapping[str, Any]], total: int, page: int, per_page: int, shape: str = ""
) -> str:
    """The weak ETag of one page of a list (records may be joined pairs flattened by caller).

    ``shape``: what else decides how the same records are written, such as a projection;
    two queries whose pages hold the same versions but show different fields differ.
    """
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{total}:{page}:{per_page}:{shape}".encode())
    for record in records:
        digest.update(f"|{record.get('id')}:{record.get('version')}".encode())
    return f'W/"l{digest.hexdigest()}"'


def parse_entity_tags(header: str) -> list[str] | None:
    """Opaque tags of an If-Match/If-None-Match value; ``None`` for ``*``; junk is skipped."""
    text = header.strip()
    if text == ANY:
        return None
    tags: list[str] = []
    for part in _split_tags(text):
        match = _ENTITY_TAG.fullmatch(part)
        if match:
            tags.append(match.group(1))
    return tags


def _split_tags(text: str) -> list[str]:
    # Commas may appear inside quoted tags, so split only outside quotes.
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def none_match_hits(header: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` names ``etag`` (weak comparison) or is ``*``."""
    if header is None:
        return False
    tags = parse_entity_tags(header)
    if tags is None:
        return True
    current = _ENTITY_TAG.fullmatch(etag)
    return current is not None and current.group(1) in tags


class MalformedEntityTags(ValueError):
    """A conditional header that is neither ``*`` nor a list of entity tags (``1``, ``W/1``)."""


def if_match_versions(header: str | None) -> frozenset[int] | None:
    """Versions an ``If-Match`` accepts: ``None`` means no condition (absent or ``*``).

    An empty set means the header named no version at all: it can never match (412).
    Raises ``MalformedEntityTags`` for a value that is not ``*`` or entity tags: unlike a
    stale tag, it tells the client to fix the header rather than to read the record again.
    """
    if header is None:
        return None
    text = header.strip()
    if text == ANY:
        return None
    versions = set()
    for part in _split_tags(text) or [text]:
        match = _ENTITY_TAG.fullmatch(part)
        if match is None:
            raise MalformedEntityTags(header)
        if _VERSION.fullmatch(match.group(1)):
            versions.add(int(match.group(1)))
    return frozenset(versions)
