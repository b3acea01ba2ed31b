"""``fields`` projection on ``find`` and ``scan`` (storeserver.projection)."""

from __future__ import annotations

from typing import Any

import pytest

from storeserver.engine import Engine
from storeserver.errors import BadRequest, LimitExceeded
from storeserver.projection import MAX_FIELDS, parse_fields

RECORD = {
    "id": "r1",
    "name": "ann",
    "nothing": None,
    "addr": {"city": "Oslo", "geo": {"lat": 1, "lon": 2}, "zip": None},
    "tags": ["a"],
    "pw": "secret",
}


def project(fields: list[str], record: dict[str, Any] = RECORD) -> dict[str, Any]:
    projector = parse_fields(fields, frozenset({"pw"}), False)
    assert projector is not None
    return projector(record)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([], {"id": "r1"}),
        (["id"], {"id": "r1"}),
        (["name", "name"], {"id": "r1", "name": "ann"}),
        (["nothing", "missing"], {"id": "r1", "nothing": None}),  # present None kept
        (["addr.city"], {"id": "r1", "addr": {"city": "Oslo"}}),
        (
            ["addr.geo.lat", "addr.zip", "tags"],
            {"id": "r1", "addr": {"geo": {"lat": 1}, "zip": None}, "tags": ["a"]},
        ),
        (["addr.geo.lat", "addr"], {"id": "r1", "addr": RECORD["addr"]}),  # covered by addr
        (["addr.nope", "name.first", "tags.0"], {"id": "r1"}),  # missing / through non-maps
        (["id.x"], {"id": "r1"}),
    ],
)
def test_projection(fields: list[str], expected: dict[str, Any]) -> None:
    assert project(fields) == expected


def test_projection_does_not_change_the_record() -> None:
    before = repr(RECORD)
    project(["addr.city", "addr.geo.lat"])
    assert repr(RECORD) == before


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ("name", BadRequest),
        ([1], BadRequest),
        ([""], BadRequest),
        (["a..b"], BadRequest),
        (["pw"], BadRequest),
        (["pw.inner"], BadRequest),
        ([f"f{i}" for i in range(MAX_FIELDS + 1)], LimitExceeded),
    ],
)
def test_bad_fields(fields: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        parse_fields(fields, frozenset({"pw"}), False)
    assert info.value.details["arg"] == "fields"  # type: ignore[attr-defined]


def test_hidden_fields_with_include_hidden() -> None:
    projector = parse_fields(["pw"], frozenset({"pw"}), True)
    assert projector is not None and projector(RECORD) == {"id": "r1", "pw": "secret"}
    assert parse_fields(None, frozenset(), False) is None
    assert parse_fields([f"f{i}" for i in range(MAX_FIELDS)], frozenset(), False)


@pytest.fixture
def engine() -> Engine:
    engine = Engine(journal=False)
    engine.execute("create_table", {"table": "t", "hidden": ["pw"], "indexes": [{"field": "n"}]})
    for n in range(5):
        record = {"id": f"r{n}", "n": n % 2, "pw": "s", "addr": {"city": f"c{n}", "zip": n}}
        engine.execute("insert", {"table": "t", "record": record})
    return engine


def test_find_projects_items(engine: Engine) -> None:
    found = engine.execute(
        "find",
        {
            "table": "t",
            "where": [["n", "eq", 1]],
            "fields": ["addr.city"],
            "sort": [["id", "desc"]],
        },
    )
    assert found == {
        "items": [{"id": "r3", "addr": {"city": "c3"}}, {"id": "r1", "addr": {"city": "c1"}}],
        "total": 2,
    }
    found = engine.execute("find", {"table": "t", "fields": ["pw", "n"], "include_hidden": True})
    assert found["items"][0] == {"id": "r0", "pw": "s", "n": 0}
    with pytest.raises(BadRequest):
        engine.execute("find", {"table": "t", "fields": ["pw"]})
    with pytest.raises(BadRequest):
        engine.execute("find", {"table": "t", "fields": "n"})
    # without fields: whole records, hidden fields stripped (unchanged)
    assert "pw" not in engine.execute("find", {"table": "t", "limit": 1})["items"][0]


def test_scan_projects_every_page(engine: Engine) -> None:
    first = engine.execute("scan", {"table": "t", "fields": ["n"], "limit": 3})
    assert first["items"] == [{"id": f"r{i}", "n": i % 2} for i in range(3)]
    rest = engine.execute("scan", {"cursor": first["cursor"], "limit": 3})
    assert rest == {"items": [{"id": "r3", "n": 1}, {"id": "r4", "n": 0}], "cursor": None}
    cursor = engine.execute("scan", {"table": "t", "limit": 1})["cursor"]
    with pytest.raises(BadRequest):  # fields are chosen when the cursor opens
        engine.execute("scan", {"cursor": cursor, "fields": ["n"]})
    opened = len(engine._scans)
    for bad in (["pw"], "n", [f"f{i}" for i in range(MAX_FIELDS + 1)]):
        with pytest.raises((BadRequest, LimitExceeded)):
            engine.execute("scan", {"table": "t", "fields": bad})
    assert len(engine._scans) == opened  # a refused scan opens no cursor
    hidden = engine.execute("scan", {"table": "t", "fields": ["pw"], "include_hidden": True})
    assert hidden["items"][0] == {"id": "r0", "pw": "s"}
