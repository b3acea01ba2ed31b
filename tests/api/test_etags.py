"""ETag building and conditional-header parsing: pure functions, no server."""

from __future__ import annotations

import pytest

from api.etags import (
    MalformedEntityTags,
    if_match_versions,
    list_etag,
    none_match_hits,
    parse_entity_tags,
    record_etag,
)


def test_record_etag_is_weak_version() -> None:
    assert record_etag(7) == 'W/"7"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('W/"3"', ["3"]),
        ('"3"', ["3"]),
        ('W/"3", "4" ,W/"5"', ["3", "4", "5"]),
        ('"a,b", W/"c"', ["a,b", "c"]),
        ('junk, W/"2"', ["2"]),
        ("", []),
    ],
)
def test_parse_entity_tags(header: str, expected: list[str]) -> None:
    assert parse_entity_tags(header) == expected


def test_star_is_any() -> None:
    assert parse_entity_tags(" * ") is None
    assert if_match_versions("*") is None
    assert none_match_hits("*", 'W/"1"')


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ('W/"3"', frozenset({3})),
        ('"3"', frozenset({3})),
        ('W/"3", W/"9"', frozenset({3, 9})),
        ('W/"abc"', frozenset()),
        ('W/"²"', frozenset()),
        ('"99999999999999999999999"', frozenset()),
        # tags are opaque text, as a GET compares them: "01" is not the tag of version 1 (QA:
        # a write took W/"000000000000000001" as it, where a GET's 304 did not)
        ('W/"01"', frozenset()),
        ('W/"000000000000000001", W/"2"', frozenset({2})),
        ('W/"+1"', frozenset()),
    ],
)
def test_if_match_versions(header: str | None, expected: frozenset[int] | None) -> None:
    assert if_match_versions(header) == expected


@pytest.mark.parametrize("header", ["1", "W/1", "", "  ", 'W/"1", 2', 'W/"1" junk', "**"])
def test_if_match_that_is_not_entity_tags_is_malformed(header: str) -> None:
    """Not "names no version" (a stale tag): the client must fix the header, not re-read."""
    with pytest.raises(MalformedEntityTags):
        if_match_versions(header)


def test_none_match_ignores_weakness() -> None:
    assert none_match_hits('"4"', 'W/"4"')
    assert none_match_hits('W/"1", W/"4"', 'W/"4"')
    assert not none_match_hits('W/"5"', 'W/"4"')
    assert not none_match_hits(None, 'W/"4"')


def test_list_etag_changes_with_versions_total_and_page() -> None:
    records = [{"id": "a", "version": 1}, {"id": "b", "version": 1}]
    base = list_etag(records, 2, 1, 20)
    assert base.startswith('W/"') and base == list_etag(list(records), 2, 1, 20)
    assert base != list_etag([{"id": "a", "version": 2}, records[1]], 2, 1, 20)
    assert base != list_etag(records, 3, 1, 20)
    assert base != list_etag(records, 2, 1, 10)
    assert base != list_etag(records, 2, 1, 20, "fields=n")
