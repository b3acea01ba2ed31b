"""storeserver.schemapatterns: what a schema's patterns may cost the store's thread, to compile
when the schema is set and to search at each write, counted in the module's own units."""

from __future__ import annotations

from typing import Any

import pytest
import re2

from storeserver import schemapatterns, schemas
from storeserver.engine import Engine
from storeserver.errors import BadRequest, ValidationFailed
from storeserver.schemapatterns import PATTERN_MEMORY, SEARCH_COST
from storeserver.schemas import TableSchema
from tests.support.engine import fail, run


def messages(schema: dict[str, Any], record: dict[str, Any]) -> list[str]:
    return [e["message"] for e in TableSchema.parse(schema).errors(record)]


def many_patterns(patterns: int) -> dict[str, Any]:
    """``patterns`` one-character patterns (4 RE2 instructions each)."""
    return {"patternProperties": {f"^{chr(0x3400 + n)}$": {} for n in range(patterns)}}


def keys(count: int) -> dict[str, Any]:
    """``count`` one-character keys, none matching ``many_patterns``."""
    return {chr(0x4E00 + n): 0 for n in range(count)}


TOO_COSTLY = "the schema cannot be applied to this record: " + schemas._PATTERNS_TOO_COSTLY


def test_each_search_is_charged_its_fixed_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: patternProperties searches every key with every pattern, and a search of a
    one-character key was charged 1 x 4 instructions though it takes ~2 µs: 1,200 patterns x
    1,200 keys held the store 2.7 s (4,000 x 4,000: 25 s) within the budget. Each search now
    costs ``SEARCH_COST`` more; the budget made small to count searches, not time them."""
    assert schemapatterns.compile_pattern("^\u3400$").programsize == 4
    per_search = SEARCH_COST + 1 * 4
    monkeypatch.setattr(schemas, "PATTERN_WORK", 400 * per_search)
    assert messages(many_patterns(20), keys(20)) == []  # 400 searches: the whole budget
    assert messages(many_patterns(20), keys(21)) == [TOO_COSTLY]  # 420
    engine = Engine(clock=lambda: 1_700_000_000.0)
    run(engine, "set_schema", table="t", schema=many_patterns(30))
    fail(engine, ValidationFailed, "insert", table="t", record=keys(30))
    run(engine, "insert", table="t", record=keys(5))
    # ~2 µs a search measured (1,000 x 1,000 in 1.9 s): the real budget is ~0.5 s of them
    assert schemapatterns.PATTERN_WORK // SEARCH_COST <= 250_000


def test_additional_properties_searches_each_pattern_on_its_own() -> None:
    """jsonschema joined the patterns with "|": an inline flag of one applied to the next (the
    key "b" passed as "(?i)^a|^B$"), and two patterns that each compile could make one that
    RE2 refuses as too large: every write with a key outside ``properties`` then failed."""
    flags = {"patternProperties": {"(?i)^a": {}, "^B$": {}}, "additionalProperties": False}
    assert messages(flags, {"b": 1}) == ["'b' does not match any of the regexes: '(?i)^a', '^B$'"]
    assert messages(flags, {"A": 1, "B": 2}) == []

    big = {r"^\p{L}{1,180}$": {"type": "string"}, r"^x-\p{L}{1,180}$": {}}
    joined = "|".join(big)
    with pytest.raises(re2.error):  # the join alone is past the limit
        schemapatterns.compile_pattern(joined)
    schema = {"patternProperties": big, "additionalProperties": False}
    assert messages(schema, {"name": "Ada", "x-y": 1}) == []
    [message] = messages(schema, {"name": "Ada", "?": 1})
    assert message.startswith("'?' does not match any of the regexes")
    assert (
        messages(
            {"patternProperties": big, "additionalProperties": {"type": "integer"}},
            {"name": "Ada", "?": 1},
        )
        == []
    )


def test_a_pattern_that_compiles_too_large_is_refused_naming_it() -> None:
    """QA: ``\\p{L}{300}`` took ~0.15 s and ~30 MB to compile, and 24 such patterns in a
    450-byte schema held the store 2.7 s; now RE2 stops at ``PATTERN_MEMORY``."""
    schema = {"properties": {"ok": {"pattern": "^[a-z]+$"}, "f": {"pattern": r"\p{L}{300}"}}}
    with pytest.raises(BadRequest) as info:
        TableSchema.parse(schema)
    assert info.value.details == {"arg": "schema", "path": ["properties", "f", "pattern"]}
    assert r"pattern '\\p{L}{300}' is too large for RE2" in info.value.message
    assert f"{PATTERN_MEMORY:,}-byte limit" in info.value.message
    engine = Engine(clock=lambda: 1_700_000_000.0)
    error = fail(engine, BadRequest, "set_schema", table="t", schema=schema)
    assert error.details["path"] == ["properties", "f", "pattern"]
    TableSchema.parse({"properties": {"f": {"pattern": r"^\p{L}{1,60}$"}}})  # within it
    # attached by an older store (a snapshot's schema is not checked again): said so, per write
    [error] = TableSchema(schema).errors({"f": "x"})
    assert error["message"].startswith(
        "the schema cannot be applied to this record: a pattern is too large (it compiles"
    )


def test_a_schemas_patterns_are_bounded_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each distinct pattern is charged its program's size, cached or not, so the same schema
    is taken or refused whatever was compiled before; a pattern used again is not charged."""
    letters = schemapatterns.compile_pattern(r"^\p{L}+$").programsize
    monkeypatch.setattr(schemapatterns, "SCHEMA_PATTERN_SIZE", 4 * letters + letters // 2)
    repeated = {"properties": {f"f{n}": {"pattern": r"^\p{L}+$"} for n in range(50)}}
    TableSchema.parse(repeated)
    distinct = {"properties": {f"f{n}": {"pattern": rf"^\p{{L}}+{n}$"} for n in range(5)}}
    for _ in range(2):  # compiled (and cached) by the first
        with pytest.raises(BadRequest) as info:
            TableSchema.parse(distinct)
        # the pattern met past the budget (jsonschema's meta-schema check visits a set)
        assert info.value.details["path"] in [["properties", f"f{n}", "pattern"] for n in range(5)]
        assert "the schema's patterns together compile to more than" in info.value.message
    TableSchema.parse({"properties": {f"f{n}": {"pattern": rf"^\p{{L}}+{n}$"} for n in range(4)}})
    assert schemapatterns.COMPILING.left is None  # nothing charged outside a schema's check
    schemapatterns.compile_pattern(r"^\p{L}+9$")


def test_the_compiled_patterns_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: 1,024 programs were kept (and re2.compile keeps its last 128 in a cache of its own),
    a schema's after it was removed or refused: 120 MB of store memory kept for good."""
    letters = schemapatterns.compile_pattern(r"^\p{L}+$").programsize
    monkeypatch.setattr(schemapatterns, "CACHE_SIZE", 10 * letters)
    re2_cached = re2._Regexp._make.cache_info().currsize
    for n in range(30):
        schemapatterns.compile_pattern(rf"^\p{{L}}+{n + 1000}$")
    assert schemapatterns.CACHED.size <= 10 * letters
    assert 5 <= len(schemapatterns._CACHE) <= 10
    assert sum(r.programsize for r in schemapatterns._CACHE.values()) == schemapatterns.CACHED.size
    assert r"^\p{L}+1029$" in schemapatterns._CACHE  # the latest stays
    assert re2._Regexp._make.cache_info().currsize == re2_cached
