"""storeserver.schemas: JSON Schema keywords kept linear, schemas that would stall or crash the
store's thread refused when they are set."""

from __future__ import annotations

import time
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import jsonschema._keywords
import jsonschema._utils
import msgpack
import pytest
import re2

from storeserver import builds, schemakeywords, schemapatterns, schemas
from storeserver.engine import Engine
from storeserver.errors import BadRequest, Conflict, ValidationFailed
from storeserver.protocol import encode_result
from storeserver.schemakeywords import RecordValidator
from storeserver.schemas import MAX_SCHEMA_DEPTH, TableSchema
from tests.support.calls import count_calls
from tests.support.engine import run


def nested(levels: int, wrap: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels - 1):
        schema = wrap(schema)
    return schema


def messages(schema: dict[str, Any], record: dict[str, Any]) -> list[str]:
    return [e["message"] for e in TableSchema.parse(schema).errors(record)]


# -- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"not": s},
        lambda s: {"allOf": [s]},
        lambda s: {"properties": {"a": s}},
    ],
)
def test_a_schema_nested_past_the_cap_is_refused(wrap: Any) -> None:
    with pytest.raises(BadRequest) as info:
        TableSchema.parse(nested(200, wrap))  # a RecursionError in jsonschema before
    assert info.value.details == {"arg": "schema", "path": []}
    assert f"deeper than {MAX_SCHEMA_DEPTH}" in info.value.message


def test_a_schema_at_the_cap_is_accepted_and_applied() -> None:
    chain = TableSchema.parse(nested(MAX_SCHEMA_DEPTH, lambda s: {"not": s}))
    assert [e["path"] for e in chain.errors({})] == [[]]  # an odd number of "not"
    # a record's 31 levels under the top can be described with "properties" (2 levels each)
    described = TableSchema.parse(nested(32, lambda s: {"properties": {"a": s}}))
    assert described.errors({"a": 1}) == []


def test_a_recursion_error_while_checking_is_a_bad_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def overflow(*args: Any, **kwargs: Any) -> None:
        raise RecursionError

    monkeypatch.setattr(RecordValidator, "check_schema", overflow)
    with pytest.raises(BadRequest, match="nested too deeply"):
        TableSchema.parse({"type": "object"})


@pytest.mark.parametrize(
    ("schema", "path", "problem"),
    [
        # QA: a keyword under a bytes key was kept and ignored (minimum 5 let 1 in)
        ({"properties": {"a": {"type": "integer", b"minimum": 5}}}, ["properties", "a"], "keys"),
        ({"const": {b"x": 1}}, ["const"], "keys"),
        ({"enum": [msgpack.Timestamp(1, 0)]}, ["enum", 0], "Timestamp"),
        ({"examples": [b"raw"]}, ["examples", 0], "bytes"),
        ({"maximum": float("nan")}, ["maximum"], "NaN"),
    ],
)
def test_a_schema_holding_what_json_cannot_is_refused(
    schema: dict[str, Any], path: list[Any], problem: str
) -> None:
    with pytest.raises(BadRequest, match=problem) as info:
        TableSchema.parse(schema)
    assert info.value.details == {"arg": "schema", "path": path}


async def test_a_deep_schema_sent_over_the_socket_is_refused(client: Any) -> None:
    deep = nested(500, lambda s: {"not": s})
    with pytest.raises(BadRequest) as info:
        await client.call("set_schema", {"table": "t", "schema": deep})
    assert info.value.details["arg"] == "schema"
    assert (await client.call("ping"))["pong"] is True  # the command failed, not the store
    with pytest.raises(BadRequest, match="keys must be strings"):
        await client.call("set_schema", {"table": "t", "schema": {"const": {b"x": 1}}})
    with pytest.raises(BadRequest, match=r"pattern '\(a\)\\\\1'"):
        await client.call("set_schema", {"table": "t", "schema": {"pattern": r"(a)\1"}})
    assert (await client.call("list_tables", {})) == []


# -- references ---------------------------------------------------------------------------------

REPRO = {
    "type": "object",
    "properties": {"a": {"$ref": "#/$defs/x"}},
    "$defs": {"x": {"$ref": "#/$defs/x"}},
}


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        (REPRO, ["$defs", "x", "$ref"]),
        ({"allOf": [{"$ref": "#"}]}, ["allOf", 0, "$ref"]),
        (
            {
                "properties": {"p": {"$ref": "#/$defs/a"}},
                "$defs": {"a": {"not": {"$ref": "#/$defs/b"}}, "b": {"if": {"$ref": "#/$defs/a"}}},
            },
            ["$defs", "b", "if", "$ref"],
        ),
        (
            {"$ref": "#/$defs/x", "$defs": {"x": {"$anchor": "x", "anyOf": [{"$ref": "#x"}]}}},
            ["$defs", "x", "anyOf", 0, "$ref"],
        ),
        (
            {"$ref": "#/$defs/x/oneOf/0", "$defs": {"x": {"oneOf": [{"$ref": "#/$defs/x"}]}}},
            ["$defs", "x", "oneOf", 0],  # the loop closes on a lexical step
        ),
        (
            {"dependentSchemas": {"k": {"$dynamicRef": "#"}}},
            ["dependentSchemas", "k", "$dynamicRef"],
        ),
    ],
)
def test_a_ref_loop_that_never_reaches_into_the_record_is_refused(
    schema: dict[str, Any], path: list[Any]
) -> None:
    """Such a schema was accepted, then every write reaching the loop failed with
    "the schema cannot be applied: maximum recursion depth exceeded..."."""
    with pytest.raises(BadRequest) as info:
        TableSchema.parse(schema)
    assert "the schema's $ref chain loops" in info.value.message
    assert info.value.details == {"arg": "schema", "path": path}


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"child": {"$ref": "#"}}, "required": ["n"]},  # a tree
        {
            "$ref": "#/$defs/node",
            "$defs": {
                "node": {"allOf": [{"$ref": "#/$defs/leaf"}], "items": {"$ref": "#/$defs/node"}},
                "leaf": {"properties": {"n": {"$ref": "#/$defs/leaf"}}},
            },
        },
        {"$defs": {"unused": {"$ref": "#/$defs/unused"}}},  # never applied to a record
        {"$ref": "https://json-schema.org/draft/2020-12/schema"},  # jsonschema knows it
    ],
)
def test_recursion_through_the_record_is_accepted(schema: dict[str, Any]) -> None:
    TableSchema.parse(schema).errors({"n": 1, "child": {"n": 2, "child": {}}})


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, ["properties", "a", "$ref"]),
        ({"$ref": "https://example.com/schema.json"}, ["$ref"]),
        ({"items": {"$ref": "#/allOf/x"}, "allOf": [{}]}, ["items", "$ref"]),
        ({"type": "object", "not": {"$ref": "#/type"}}, ["not", "$ref"]),  # a string
        # maps that are no subschema (QA: accepted, then every write reaching them failed
        # "the schema cannot be applied")
        (
            {"properties": {"type": {"type": "string"}, "size": {"$ref": "#/properties"}}},
            ["properties", "size", "$ref"],
        ),
        (
            {
                "$defs": {"d": {"const": {"pattern": "(?<=a)b"}}},
                "properties": {"s": {"$ref": "#/$defs/d/const"}},
            },
            ["properties", "s", "$ref"],
        ),
        ({"enum": [{"minimum": "a"}], "not": {"$ref": "#/enum/0"}}, ["not", "$ref"]),
        ({"x-data": {"type": "string"}, "$ref": "#/x-data"}, ["$ref"]),  # an unknown keyword
    ],
)
def test_a_ref_to_no_schema_is_refused(schema: dict[str, Any], path: list[Any]) -> None:
    """It was accepted, then failed at every write reaching it, showing Python's text."""
    with pytest.raises(BadRequest) as info:
        TableSchema.parse(schema)
    assert "points to no schema" in info.value.message
    assert info.value.details == {"arg": "schema", "path": path}


def test_a_ref_is_taken_to_a_subschema_anywhere_not_to_a_map_of_them() -> None:
    """Any place that holds a subschema may be referenced; ``#/$defs`` (a map of them) was
    taken, then applied as a schema at every write reaching it."""
    document: dict[str, Any] = {
        "$defs": {
            "int": {"type": "integer"},
            "any": {"anyOf": [{"type": "integer"}]},
            "twice": {"allOf": [{"not": {"not": {"type": "integer"}}}]},
        },
        "definitions": {"int": {"type": "integer"}},
        "properties": {"n": {"type": "integer"}},
        "patternProperties": {"^i_": {"type": "integer"}},
        "prefixItems": [{"type": "integer"}],
        "items": {"type": "integer"},
        "dependentSchemas": {"k": {"type": "integer"}},
    }
    for target in (
        "#/$defs/int",
        "#/definitions/int",
        "#/properties/n",
        "#/patternProperties/%5Ei_",
        "#/prefixItems/0",
        "#/items",
        "#/dependentSchemas/k",
        "#/$defs/twice/allOf/0/not/not",
        "#/$defs/any/anyOf/0",
    ):
        schema = {**document, "properties": {**document["properties"], "r": {"$ref": target}}}
        assert messages(schema, {"r": 1}) == []
        assert messages(schema, {"r": "x"}) == ["'x' is not of type 'integer'"]
    for target in ("#/$defs", "#/patternProperties", "#/prefixItems", "#/dependentSchemas"):
        schema = {**document, "properties": {**document["properties"], "r": {"$ref": target}}}
        with pytest.raises(BadRequest, match="points to no schema"):
            TableSchema.parse(schema)


def test_set_schema_refuses_a_ref_loop_even_with_force() -> None:
    engine = Engine(clock=lambda: 1_700_000_000.0)
    engine.execute("insert", {"table": "rec", "record": {"a": 1}})
    for force in (False, True):
        with pytest.raises(BadRequest, match=r"\$ref chain loops"):
            engine.execute("set_schema", {"table": "rec", "schema": REPRO, "force": force})
    engine.execute("insert", {"table": "rec", "record": {"a": 2}})  # no schema attached


def test_a_schema_that_cannot_be_applied_shows_no_python_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop attached before they were refused (a journal replays it unchecked) or a chain
    too long for the recursion limit: the message says so in the store's words."""
    looping = TableSchema(REPRO)
    assert looping.errors({"a": 1}) == [
        {"path": [], "message": "the schema cannot be applied to this record: it nests too deeply"}
    ]
    assert looping.errors({"b": 1}) == []  # the loop is not reached

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'str' object has no attribute 'items'")

    monkeypatch.setattr(RecordValidator, "iter_errors", broken)
    [error] = TableSchema({"type": "object"}).errors({})
    assert error["message"] == "the schema cannot be applied to this record"


# Each level of the record doubles the paths to ``n``: 2**depth applications of it.
DOUBLING = {
    "$defs": {
        "n": {
            "allOf": [
                {"properties": {"a": {"$ref": "#/$defs/n"}}},
                {"properties": {"a": {"$ref": "#/$defs/n"}}},
            ]
        }
    },
    "$ref": "#/$defs/n",
}


def _nested(depth: int) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for _ in range(depth):
        record = {"a": record}
    return record


def _steps_taken(schema: TableSchema, record: dict[str, Any]) -> int:
    before = schemas.BASE_STEPS + schemas.STEPS_PER_VALUE * schemas._count_values(record)
    errors = schema.errors(record)
    assert errors == [], errors
    return min(before, schemas.MAX_STEPS) - schemakeywords.STEPS.left


def test_a_schema_reaching_a_value_along_many_paths_is_checked_within_a_budget() -> None:
    """QA: such a schema was accepted, and an insert 18 levels deep held the store 12 s (31,
    which records allow, days). Its check stops at the budget: counted in steps, not timed."""
    schema = TableSchema.parse(DOUBLING)
    assert _steps_taken(schema, _nested(8)) > 2**8  # within budget: checked, and valid
    [error] = schema.errors(_nested(31))
    assert error["path"] == []
    assert "more than 100 schema keywords per value" in error["message"]
    assert schemakeywords.STEPS.left == -1  # stopped the step after the budget
    engine = Engine(clock=lambda: 1_700_000_000.0)
    engine.execute("set_schema", {"table": "deep", "schema": DOUBLING})
    with pytest.raises(ValidationFailed, match="schema keywords per value"):
        engine.execute("insert", {"table": "deep", "record": _nested(31)})
    engine.execute("insert", {"table": "deep", "record": _nested(3)})


def _twice_per_level(depth: int) -> dict[str, Any]:
    """Levels that each reach the next twice, by ``$ref`` and by ``then`` (no loop)."""
    defs: dict[str, Any] = {
        f"L{k}": {"$ref": f"#/$defs/L{k + 1}", "if": {}, "then": {"$ref": f"#/$defs/L{k + 1}"}}
        for k in range(depth)
    }
    defs[f"L{depth}"] = {}
    return defs


@pytest.mark.parametrize(
    ("schema", "record"),
    [
        ({"unevaluatedProperties": False, "$ref": "#/$defs/L0"}, {"x": 1}),
        ({"properties": {"l": {"unevaluatedItems": False, "$ref": "#/$defs/L0"}}}, {"l": [1]}),
    ],
    ids=["unevaluatedProperties", "unevaluatedItems"],
)
def test_the_unevaluated_keywords_walks_are_charged_to_the_budget(
    schema: dict[str, Any], record: dict[str, Any]
) -> None:
    """QA: jsonschema's walks that find what a schema evaluated, for these two keywords,
    were not charged: 17 levels reaching the next twice took 2^17 calls for ``{"x": 1}`` on
    every write (18 levels: 6.9 s). Counted in steps, the check stops at the budget; a few
    levels are still checked, and valid or not as before."""
    assert jsonschema._utils.find_evaluated_property_keys_by_schema.__wrapped__  # metered
    assert jsonschema._utils.find_evaluated_item_indexes_by_schema.__wrapped__
    [error] = messages({**schema, "$defs": _twice_per_level(17)}, record)
    assert "schema keywords per value" in error
    shallow = {**schema, "$defs": _twice_per_level(3)}
    assert "Unevaluated" in messages(shallow, record)[0]
    assert messages(shallow, {}) == []
    engine = Engine(clock=lambda: 1_700_000_000.0)
    engine.execute(
        "set_schema", {"table": "t", "schema": {**schema, "$defs": _twice_per_level(17)}}
    )
    with pytest.raises(ValidationFailed, match="schema keywords per value"):
        engine.execute("insert", {"table": "t", "record": record})


def test_the_budget_grows_with_the_record_and_stops_at_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ordinary schemas take a few steps a value, whatever the record's size, up to
    ``MAX_STEPS`` in all; an anyOf of thousands of branches fits on a small record."""
    items = TableSchema.parse({"properties": {"xs": {"items": {"type": "integer", "minimum": 0}}}})
    small = _steps_taken(items, {"xs": list(range(100))})
    large = _steps_taken(items, {"xs": list(range(20_000))})
    assert small < 1_000 and 20_000 < large < 3 * 20_000
    branches = TableSchema.parse(
        {"properties": {"k": {"anyOf": [{"const": n} for n in range(5_000)]}}}
    )
    assert _steps_taken(branches, {"k": 4_999}) > 5_000  # a record of 2 values, past 100 each

    monkeypatch.setattr(schemas, "MAX_STEPS", 10_000)
    [error] = items.errors({"xs": list(range(20_000))})
    assert "or 1,000,000 in all" in error["message"]  # the text names the real cap


def test_false_branches_and_long_required_lists_are_counted_in_the_budget() -> None:
    """QA: a ``false`` subschema applied no keyword, so nothing counted it, and ``anyOf`` kept
    every failing branch's errors: three levels of 60 branches through ``$ref`` ending in
    ``false`` held the store 2.8 s for ``{"n": 1}``. A 19,000-name ``required`` counted one
    step per application (52 s for 500 items). Both reach the budget now."""
    fan = 60
    branches = TableSchema.parse(
        {
            "$defs": {
                "l3": {"anyOf": [False] * fan},
                "l2": {"anyOf": [{"$ref": "#/$defs/l3"}] * fan},
            },
            "properties": {"n": {"anyOf": [{"$ref": "#/$defs/l2"}] * fan}},
        }
    )
    [error] = branches.errors({"n": 1})
    assert "schema keywords per value" in error["message"]
    names = TableSchema.parse(
        {
            "properties": {
                "n": {"items": {"anyOf": [{"required": [f"f{i}" for i in range(19_000)]}, True]}}
            }
        }
    )
    assert _steps_taken(names, {"n": [{}]}) > 19_000 // schemakeywords.NAMES_PER_STEP
    [error] = names.errors({"n": [{}] * 100})
    assert "schema keywords per value" in error["message"]


def test_a_keyword_quoting_a_big_value_is_charged_for_the_quote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA: ``type`` failing in 100 ``anyOf`` branches under 100 more quoted a list of 10,000
    numbers 10,000 times (6 s) in 20,000 steps. Its message's length is counted now."""
    monkeypatch.setattr(schemas, "MAX_STEPS", 10_000)
    schema = TableSchema.parse(
        {
            "$defs": {"inner": {"anyOf": [{"type": "string"}] * 20}},
            "properties": {"n": {"anyOf": [{"$ref": "#/$defs/inner"}] * 20}},
        }
    )
    [error] = schema.errors({"n": list(range(10))})
    assert "is not valid under any of the given schemas" in error["message"]
    [error] = schema.errors({"n": list(range(10_000))})
    assert "schema keywords per value" in error["message"]


def test_a_false_subschema_quotes_the_value_briefly() -> None:
    """jsonschema's message quoted the whole value, again for each of many branches (QA: 8 s
    for 100 branches of 100 ``false`` over a list of 10,000 numbers)."""
    schema = TableSchema.parse(
        {"properties": {"m": {"$ref": "#/$defs/f"}, "n": {"anyOf": [False]}}, "$defs": {"f": False}}
    )
    [error] = schema.errors({"m": list(range(10_000))})
    assert error["message"] == "False schema does not allow [0, 1, 2, 3, 4, 5, ...]"
    [error] = schema.errors({"n": list(range(10_000))})
    assert error["message"] == "[0, 1, 2, 3, 4, 5, ...] is not valid under any of the given schemas"


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("oneOf", 5, None),
        ("oneOf", 15, "15 is valid under each of {'maximum': 20, 'minimum': 0}, {'minimum': 10}"),
        ("oneOf", -1, "-1 is not valid under any of the given schemas"),
        ("anyOf", 15, None),
        ("anyOf", -1, "-1 is not valid under any of the given schemas"),
    ],
)
def test_any_of_and_one_of_keep_their_meaning(
    keyword: str, value: int, message: str | None
) -> None:
    schema = TableSchema.parse(
        {"properties": {"n": {keyword: [{"minimum": 0, "maximum": 20}, {"minimum": 10}]}}}
    )
    errors = schema.errors({"n": value})
    assert [e["message"] for e in errors] == ([] if message is None else [message])
    assert all(e["path"] == ["n"] for e in errors)


def test_a_branch_resolves_its_references_in_its_own_resource() -> None:
    """A branch with an ``$id`` is a resource of its own: its ``#/$defs/...`` is its own."""
    schema = TableSchema.parse(
        {
            "properties": {
                "n": {
                    "anyOf": [
                        {
                            "$id": "https://example.com/s",
                            "$defs": {"a": {"type": "string"}},
                            "$ref": "#/$defs/a",
                        }
                    ],
                    "not": {
                        "$id": "https://example.com/i",
                        "$defs": {"a": {"type": "integer"}},
                        "$ref": "#/$defs/a",
                    },
                }
            }
        }
    )
    assert schema.errors({"n": "x"}) == []
    assert [e["message"][:40] for e in schema.errors({"n": 1})] == [
        "1 is not valid under any of the given sc",
        "1 should not be valid under {'$defs': {'",
    ]


DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


def test_a_subschema_naming_its_draft_is_checked_by_the_stores_validator() -> None:
    """QA: jsonschema picks the class checking a subschema by its ``$schema``: one naming Draft
    2020-12 (the root's, reached again through ``$ref: "#"``) went to the stock validator,
    with Python's ``re`` (``^(a+)+$`` held the store 4.6 s on 27 characters), no steps and
    whole quotes. RE2 tells: its ``\\d`` is an ASCII digit, Python's any Unicode digit."""
    nested = TableSchema.parse(
        {"properties": {"x": {"$schema": DRAFT_2020_12, "pattern": "^\\d$"}}}
    )
    [error] = nested.errors({"x": "\u0663"})  # ARABIC-INDIC DIGIT THREE
    assert error["path"] == ["x"] and "does not match" in error["message"]
    tree = TableSchema.parse(
        {
            "$schema": DRAFT_2020_12,
            "properties": {"name": {"pattern": "^\\d$"}, "children": {"items": {"$ref": "#"}}},
        }
    )
    [error] = tree.errors({"name": "1", "children": [{"name": "\u0663"}]})
    assert error["path"] == ["children", 0, "name"]
    assert _steps_taken(tree, {"name": "1", "children": [{"name": "2"}] * 50}) > 50


def test_a_message_is_charged_once_where_it_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: charged again at every level it passed on its way up, a failing branch's quote of a
    big value deep in the record used up the budget of a record another branch took."""
    monkeypatch.setattr(schemas, "BASE_STEPS", 5_000)

    def deep(leaf: dict[str, Any]) -> dict[str, Any]:
        for _ in range(12):
            leaf = {"properties": {"a": leaf}}
        return leaf

    schema = TableSchema.parse({"oneOf": [deep({"type": "integer"}), deep({"type": "string"})]})
    record: dict[str, Any] = {"a": "x" * 200_000}
    for _ in range(11):
        record = {"a": record}
    assert schema.errors(record) == []


def test_a_false_subschema_names_the_field_it_refuses() -> None:
    """QA: jsonschema leaves a ``false`` subschema's error at its parent: the 422 named no
    field for ``{"properties": {"secret": false}}``."""
    schema = TableSchema.parse({"properties": {"secret": False, "xs": {"items": False}}})
    assert [e["path"] for e in schema.errors({"secret": 1, "xs": []})] == [["secret"]]


def test_not_and_required_keep_their_meaning() -> None:
    never = TableSchema.parse({"properties": {"a": {"not": True}, "b": {"not": False}}})
    assert [e["path"] for e in never.errors({"a": 1, "b": 2})] == [["a"]]
    required = TableSchema.parse({"required": ["x", "y"], "dependentRequired": {"x": ["z"]}})
    assert [e["message"] for e in required.errors({"x": 1})] == [
        "'y' is a required property",
        "'z' is a dependency of 'x'",
    ]


def test_unique_items_takes_a_decimal_and_a_float_of_the_same_text_as_one_number() -> None:
    """QA: const and enum did, uniqueItems did not: [0.1 (a CSV cell), 0.1] passed as unique."""
    schema = TableSchema.parse({"properties": {"tags": {"uniqueItems": True}}})
    [error] = schema.errors({"tags": [Decimal("0.1"), 0.1]})
    assert "non-unique" in error["message"]
    assert schema.errors({"tags": [Decimal("0.1"), 0.2]}) == []


# -- patterns -----------------------------------------------------------------------------------


def test_patterns_run_on_re2() -> None:
    assert RecordValidator.VALIDATORS["pattern"].__wrapped__ is schemakeywords._pattern
    assert (
        RecordValidator.VALIDATORS["patternProperties"].__wrapped__
        is schemakeywords._pattern_properties
    )
    assert isinstance(schemapatterns.compile_pattern("^(a+)+$"), type(re2.compile("a")))


def test_a_catastrophic_pattern_is_answered_not_backtracked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python's re would take seconds on this (minutes with a few more "a"): it must not run
    monkeypatch.setattr(jsonschema._keywords, "re", SimpleNamespace(search=_never))
    schema = {"properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}}
    assert messages(schema, {"x": "a" * 25 + "!"}) == [
        f"{'a' * 25 + '!'!r} does not match '^(a+)+$'"
    ]
    assert messages(schema, {"x": "a" * 40}) == []


def test_additional_and_unevaluated_properties_match_patterns_on_re2() -> None:
    """jsonschema matches patternProperties for these two keywords in ``_utils`` with
    Python's re, which backtracks: ^(a+)+$ against the key below would hold the store for
    seconds (minutes with a few more "a")."""
    assert jsonschema._utils.re is schemapatterns._Re2Search
    key = "a" * 25 + "!"
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        schema = {"patternProperties": {"^(a+)+$": {}, "^b": {}}, keyword: False}
        assert messages(schema, {"a" * 40: 1, "bee": 2}) == []
        [message] = messages(schema, {key: 1, "bee": 2})
        assert repr(key) in message


def test_pattern_searches_like_jsonschema() -> None:
    schema = {
        "properties": {"s": {"pattern": "b"}, "n": {"pattern": "^x"}},
        "patternProperties": {"^p_": {"type": "integer"}, "d+": {"minimum": 0}},
    }
    assert messages(schema, {"s": "abc", "n": 5, "p_1": 1, "odd": 1, "q": "z"}) == []
    assert messages(schema, {"s": "ac"}) == ["'ac' does not match 'b'"]
    assert messages(schema, {"p_x": "1"}) == ["'1' is not of type 'integer'"]
    assert messages(schema, {"xddx": -1}) == ["-1 is less than the minimum of 0"]
    # ECMA-262 (and RE2): \d is ASCII, $ is the end of the text
    assert messages({"propertyNames": {"pattern": r"^\d+$"}}, {"12": 1}) == []
    assert len(messages({"propertyNames": {"pattern": r"^\d+$"}}, {"١٢": 1})) == 1
    assert len(messages({"properties": {"s": {"pattern": "^a$"}}}, {"s": "a\n"})) == 1


def test_patterns_are_charged_by_characters_times_instructions() -> None:
    """QA: ``.{0,1000}.{0,1000}x`` (18,005 RE2 instructions: its fast mode gives up) against
    one 300 KB string held the store 12 s. A check that would pass ``PATTERN_WORK`` is
    refused before the search runs, in ``pattern``, ``patternProperties`` and the matching
    of ``additionalProperties`` alike; a simple pattern still checks a long string."""
    big = ".{0,1000}.{0,1000}x"
    long = "a" * 300_000
    too_costly = "the schema cannot be applied to this record: " + schemas._PATTERNS_TOO_COSTLY
    for schema, record in (
        ({"properties": {"s": {"pattern": big}}}, {"s": long}),
        ({"patternProperties": {big: {}}}, {long: 1}),
        ({"patternProperties": {big: {}}, "additionalProperties": False}, {long: 1}),
    ):
        assert messages(schema, record) == [too_costly]
    # Within the budget: checked, whatever the string's length.
    assert messages({"properties": {"s": {"pattern": big}}}, {"s": "a" * 2000 + "x"}) == []
    simple = {"properties": {"s": {"pattern": "^[a-z]+$"}}}
    assert messages(simple, {"s": "a" * 1_000_000}) == []
    assert len(messages(simple, {"s": "a" * 1_000_000 + "1"})) == 1
    letters = {"properties": {"s": {"pattern": r"^\p{L}+$"}}}
    assert messages(letters, {"s": "Zoë"}) == [] and len(messages(letters, {"s": "x1"})) == 1


class _Spied(list):  # type: ignore[type-arg]
    looked_up = 0

    def __contains__(self, item: object) -> bool:
        _Spied.looked_up += 1
        return super().__contains__(item)


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"prefixItems": [{}], "unevaluatedItems": False}, [1]),
        ({"prefixItems": [{}], "unevaluatedItems": False}, [1, 2]),
        (
            {"allOf": [{"prefixItems": [{}, {}]}], "unevaluatedItems": {"type": "string"}},
            [1, 2, "a"],
        ),
        ({"allOf": [{"prefixItems": [{}, {}]}], "unevaluatedItems": {"type": "string"}}, [1, 2, 3]),
        ({"contains": {"type": "integer"}, "unevaluatedItems": False}, [1, 2, "x"]),
        ({"properties": {"a": {}}, "unevaluatedProperties": False}, {"a": 1}),
        ({"properties": {"a": {}}, "unevaluatedProperties": False}, {"a": 1, "b": 2}),
        (
            {"allOf": [{"properties": {"a": {}}}], "unevaluatedProperties": {"type": "integer"}},
            {"a": "x", "b": 2},
        ),
        (
            {"allOf": [{"properties": {"a": {}}}], "unevaluatedProperties": {"type": "integer"}},
            {"a": "x", "b": "y"},
        ),
        ({"patternProperties": {"^p": {}}, "unevaluatedProperties": False}, {"pa": 1, "q": 2}),
    ],
)
def test_unevaluated_items_and_properties_judge_as_jsonschema_without_list_lookups(
    schema: dict[str, Any], instance: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: jsonschema looked each item (or key) up in a list of the evaluated ones: n² for n
    items, and 32,000 held the store ~9 s. The verdicts are jsonschema's; the evaluated ones
    are never searched in a list."""
    valid = jsonschema.Draft202012Validator(schema).is_valid(instance)
    for name in ("find_evaluated_item_indexes_by_schema", "find_evaluated_property_keys_by_schema"):
        real = getattr(jsonschema._utils, name)

        def spied(*args: Any, real: Any = real) -> list[Any]:
            return _Spied(real(*args))

        monkeypatch.setattr(jsonschema._keywords, name, spied)
        monkeypatch.setattr(schemakeywords, name, spied)
    _Spied.looked_up = 0
    found = messages({"properties": {"v": schema}}, {"v": instance})
    assert (found == []) is valid, found
    assert _Spied.looked_up == 0


@pytest.mark.parametrize(
    ("schema", "pattern", "path"),
    [
        ({"pattern": r"(a)\1"}, r"(a)\1", ["pattern"]),
        ({"properties": {"x": {"pattern": "(?=a)b"}}}, "(?=a)b", ["properties", "x", "pattern"]),
        ({"patternProperties": {"(?<!a)b": {}}}, "(?<!a)b", ["patternProperties"]),
        ({"propertyNames": {"pattern": "["}}, "[", ["propertyNames", "pattern"]),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_when_set(
    schema: dict[str, Any], pattern: str, path: list[str]
) -> None:
    with pytest.raises(BadRequest) as info:
        TableSchema.parse(schema)
    assert info.value.details == {"arg": "schema", "path": path}
    assert f"pattern {pattern!r}" in info.value.message and "RE2" in info.value.message


# -- uniqueItems ----------------------------------------------------------------------------------


UNIQUE = {"properties": {"u": {"uniqueItems": True}}}


def test_unique_items_hashes_instead_of_comparing_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RecordValidator.VALIDATORS["uniqueItems"].__wrapped__ is schemakeywords._unique_items
    monkeypatch.setattr(jsonschema._utils, "equal", _never)
    monkeypatch.setattr(jsonschema._keywords, "uniq", _never)
    maps = [{"a": i} for i in range(5000)]  # ~25 s of pairwise comparisons before
    assert messages(UNIQUE, {"u": maps}) == []
    assert messages(UNIQUE, {"u": [*maps, {"a": 17}]}) == [
        "has non-unique elements (item 5000 repeats an earlier one)"
    ]


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([1, 1.0], False),
        ([0, -0.0], False),
        ([True, 1], True),
        ([False, 0], True),
        ([[True], [1]], True),
        ([{"a": 1, "b": [1, 2]}, {"b": [1, 2.0], "a": 1}], False),  # key order is irrelevant
        ([[1, 2], [2, 1]], True),  # list order is not
        (["1", 1], True),
        ([None, None], False),
        ([{"a": None}, {}], True),
        ([{"a": {"b": True}}, {"a": {"b": 1}}], True),
        ([], True),
    ],
)
def test_unique_items_keeps_jsonschemas_equality(items: list[Any], unique: bool) -> None:
    assert (messages(UNIQUE, {"u": items}) == []) is unique
    stock = jsonschema.Draft202012Validator(UNIQUE["properties"]["u"])
    assert stock.is_valid(items) is unique
    assert messages({"properties": {"u": {"uniqueItems": False}}}, {"u": items}) == []


# -- multipleOf -----------------------------------------------------------------------------------


def multiple(value: Any, divisor: Any) -> bool:
    return messages({"properties": {"n": {"multipleOf": divisor}}}, {"n": value}) == []


@pytest.mark.parametrize("price", [19.99, 4.35, 0.07, 0.29, 0.57, 1.1, 0.3, 100.0, 0, -19.99])
def test_multiple_of_is_exact_for_the_decimals_people_write(price: float) -> None:
    """JSON numbers reach a generic table as floats; in binary 19.99 / 0.01 is not whole."""
    assert multiple(price, 0.01)
    assert multiple(Decimal(repr(price)), 0.01)
    assert multiple(price, Decimal("0.01"))


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [
        (19.999, 0.01, False),
        (1.005, 0.01, False),
        (7, 2, False),
        (7, 0.5, True),
        (10, Decimal("2.5"), True),
        (Decimal("0.30"), 0.1, True),
        (1e-05, 0.001, False),
        (0.001, 1e-05, True),
        (2**63 - 1, 3, False),
        (2**62, 2, True),
        (1e300, 7, False),
        (5e-324, 5e-324, True),
        (float("inf"), 0.01, False),  # storable over msgpack: refused, not a crash
    ],
)
def test_multiple_of_in_decimal(value: Any, divisor: Any, expected: bool) -> None:
    assert multiple(value, divisor) is expected


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [
        (1e308, 1e-308, True),  # a quotient of 617 digits
        (1.7976931348623157e308, 5e-324, True),
        (1e-308, 1e308, False),
        (Decimal("1e999999999"), Decimal("1e-999999999"), True),
        (Decimal("3e999999999"), Decimal("7e-999999999"), False),
        (Decimal("1e-999999999"), Decimal("1e999999999"), False),
    ],
)
def test_multiple_of_with_huge_exponents_builds_no_huge_number(
    value: Any, divisor: Any, expected: bool
) -> None:
    """No power of ten is built: 10**2e9 would take minutes and ~800 MB."""
    started = time.perf_counter()
    assert multiple(value, divisor) is expected
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("value", [Decimal("19.999"), 19.999])
def test_a_violation_shows_a_decimal_as_the_number_written(value: Any) -> None:
    """Not Python's ``Decimal('19.999')``: a CSV cell or a total_price is a Decimal."""
    schema = {"properties": {"n": {"multipleOf": 0.01, "minimum": 20, "enum": [1]}}}
    assert messages(schema, {"n": value}) == [
        "19.999 is not a multiple of 0.01",
        "19.999 is less than the minimum of 20",
        "19.999 is not one of [1]",
    ]
    listed = {"properties": {"l": {"maxItems": 1}}}
    assert messages(listed, {"l": [Decimal("1.50"), "Decimal('2')"]}) == [
        "[1.50, \"Decimal('2')\"] is too long"  # a string that reads like one is kept
    ]


def test_a_schema_decimal_longer_than_a_stored_one_is_refused() -> None:
    """``multipleOf`` turns its divisor into an int at every write: quadratic in its digits
    (300,000 of them took 3.9 s)."""
    started = time.perf_counter()
    for keyword in ("multipleOf", "minimum", "const"):
        schema = {"properties": {"v": {keyword: Decimal("7" * 300_000)}}}
        with pytest.raises(BadRequest, match="at most 100 digits") as info:
            TableSchema.parse(schema)
        assert info.value.details == {"arg": "schema", "path": ["properties", "v", keyword]}
    assert time.perf_counter() - started < 0.5
    TableSchema.parse({"properties": {"v": {"multipleOf": Decimal("1E-999999999")}}})


def test_multiple_of_does_not_convert_a_long_decimal_kept_from_before_the_bound() -> None:
    # Such values are refused on write (records.decimal_problem); a snapshot may hold one, and
    # a set_schema checks every row. A schema loaded from one is not parsed again either.
    started = time.perf_counter()
    long = Decimal("7" * 300_000)
    assert messages({"properties": {"v": {"multipleOf": 0.01}}}, {"v": long}) == [
        "multipleOf is not checked on a number of more than 100 digits"
    ]
    loaded = TableSchema({"properties": {"v": {"multipleOf": long}}})
    assert [e["message"] for e in loaded.errors({"v": 7})] == [
        "multipleOf is not checked on a number of more than 100 digits"
    ]
    assert time.perf_counter() - started < 0.5


def test_a_multiple_of_failure_names_the_value() -> None:
    schema = {"properties": {"price": {"multipleOf": 0.01}}}
    assert messages(schema, {"price": 19.999}) == ["19.999 is not a multiple of 0.01"]


def test_a_schema_keyword_failure_reaches_the_client_as_validation() -> None:
    engine = Engine(clock=lambda: 1_700_000_000.0)
    schema = {"properties": {"x": {"pattern": "^(a+)+$"}, "u": {"uniqueItems": True}}}
    engine.run_job(engine.execute("set_schema", {"table": "t", "schema": schema}))
    with pytest.raises(ValidationFailed):
        engine.execute("insert", {"table": "t", "record": {"x": "a" * 30 + "!"}})
    with pytest.raises(ValidationFailed):
        engine.execute("insert", {"table": "t", "record": {"u": [{"a": 1}, {"a": 1.0}]}})
    engine.execute("insert", {"table": "t", "record": {"x": "aa", "u": [{"a": 1}, {"a": 2}]}})


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("jsonschema's own (backtracking or quadratic) check ran")


def test_the_same_schema_again_is_neither_logged_nor_audited() -> None:
    """QA: each repeat of one ``PUT .../schema`` added a log and an audit entry, where a write
    that changes nothing adds neither. A different one (1 is not 1.0 here either) does."""
    engine = Engine()
    engine.execute("set_schema", {"table": "t", "schema": {"properties": {"n": {"maximum": 10}}}})
    assert "schema" in [e[0] for e in engine.drain_changes()]
    engine.execute("set_schema", {"table": "t", "schema": {"properties": {"n": {"maximum": 10}}}})
    assert engine.drain_changes() == []
    assert len(run(engine, "audit_list", table="t")["items"]) == 1
    engine.execute("set_schema", {"table": "t", "schema": {"properties": {"n": {"maximum": 10.0}}}})
    assert "schema" in [e[0] for e in engine.drain_changes()]
    assert len(run(engine, "audit_list", table="t")["items"]) == 2
    # the same keys in another order: the attached schema (the one the log holds) stays
    two = {"properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    engine.execute("set_schema", {"table": "t", "schema": two})
    reordered = {"properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}}
    engine.execute("set_schema", {"table": "t", "schema": reordered})
    [logged] = [e[2] for e in engine.drain_changes() if e[0] == "schema"]
    assert list(engine._catalog.tables["t"].schema.document["properties"]) == ["a", "b"]
    assert list(logged["properties"]) == ["a", "b"]


def test_a_forced_schema_reports_its_violations_within_a_small_frame() -> None:
    """QA: each message quoted a whole enum (36 KB), ten per row, 100 rows: a 37 MB report.
    The schema was attached, then the reply failed LIMIT_EXCEEDED (a write reported failed
    once applied), and without force the 409 lost its list of violations."""
    engine = Engine(clock=lambda: 1_700_000_000.0)
    for _ in range(200):
        engine.execute("insert", {"table": "big", "record": {f"p{k}": 1 for k in range(10)}})
    codes = ["x" * 40 + str(n) for n in range(800)]
    schema = {"properties": {f"p{k}": {"enum": codes} for k in range(10)}}
    with pytest.raises(Conflict) as info:
        engine.execute("set_schema", {"table": "big", "schema": schema})
    refused = info.value.details
    assert refused["violating"] == 200 and refused["violations"]
    report = engine.execute("set_schema", {"table": "big", "schema": schema, "force": True})
    assert report["attached"] and report["violating"] == 200
    assert 10 <= len(report["violations"]) < 200
    assert len(encode_result(1, report)) < builds.REPORT_BYTES + 4096 < (1 << 20)  # least frame
    message = report["violations"][0]["errors"][0]["message"]
    assert message.startswith("1 is not one of ['xxx") and len(message) < 400  # quoted briefly

    short = TableSchema.parse({"properties": {"s": {"maxLength": 3}}})
    [error] = short.errors({"s": "y" * 5_000})
    assert len(error["message"]) == schemas.MAX_MESSAGE_CHARS + 1
    assert error["message"].endswith("…")
    long_key = "k" * 5_000
    [error] = TableSchema.parse({"additionalProperties": {"type": "string"}}).errors({long_key: 1})
    assert error["path"] == ["k" * schemas.MAX_PATH_KEY_CHARS + "…"]


def test_a_costly_set_schema_over_few_rows_goes_on_as_a_job_on_a_server() -> None:
    """Review: each row gets its own budget, and set_schema over fewer than 10,000 rows ran
    them all in one call (20 rows of that schema: 3.8 s). On a server it now goes on as a job,
    a row or so per step; checking one such row takes ~40 ms, eight steps' time."""
    engine = Engine(clock=lambda: 1_700_000_000.0)
    for _ in range(6):
        engine.execute("insert", {"table": "deep", "record": _nested(10)})
    engine.spill_reads()
    job = engine.execute("set_schema", {"table": "deep", "schema": DOUBLING})
    assert isinstance(job, builds.SchemaCheck)
    steps = 1
    while True:
        done, report = engine.advance(job)
        if done:
            break
        steps += 1
    assert steps >= 3
    assert report["attached"] and report["checked"] == 6 and report["violating"] == 0


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (1.0, True),
        (Decimal("1.00"), True),
        (True, False),  # true != 1, as in jsonschema
        ("a", True),
        ("A", False),
        ([1.0, 2], True),
        ([2, 1], False),
        ({"k": True}, True),
        ({"k": 1}, False),
        (None, True),
    ],
)
def test_enum_keeps_jsonschemas_equality(value: Any, valid: bool) -> None:
    schema = TableSchema.parse({"properties": {"v": {"enum": [1, "a", [1, 2], {"k": True}, None]}}})
    assert (schema.errors({"v": value}) == []) is valid


def test_enum_keys_its_values_once_not_at_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: jsonschema compared the value with each of 19,000 codes in Python (and quoted
    them all when none matched): ~20 ms per check. Counted in keys made, not timed."""
    keyed = count_calls(monkeypatch, schemakeywords, "index_key")
    codes = [f"code-{n}" for n in range(19_000)]
    schema = TableSchema.parse({"properties": {"c": {"enum": codes}}})
    for n in range(100):
        assert schema.errors({"c": f"code-{n}"}) == []
    [error] = schema.errors({"c": "nope"})
    assert error["message"].startswith("'nope' is not one of ['code-0',")
    assert len(error["message"]) < 200
    assert keyed.calls < 19_000 + 200


def test_enum_keys_a_large_value_once_per_check_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA: every application keyed the value again (300 `not enum` over a 200,000-item list:
    13 s). A list or map is keyed only if the enum holds one of its size, and once per check."""
    keyed = count_calls(monkeypatch, schemakeywords, "index_key")
    branches = [{"not": {"enum": [1, "x"]}}] * 50
    schema = TableSchema.parse({"properties": {"a": {"allOf": branches}}})
    assert schema.errors({"a": [0] * 10_000}) == []
    assert keyed.calls <= 2  # the enum's own two values, once: the list never
    same_size = [{"not": {"enum": [[1, 1, 1], "x"]}}] * 50
    schema = TableSchema.parse({"properties": {"a": {"allOf": same_size}}})
    keyed.calls = 0
    assert schema.errors({"a": [0, 0, 0]}) == []
    assert schema.errors({"a": [0, 0, 0]}) == []  # a new check keys it again, once
    assert keyed.calls <= 2 + 2
    assert schemakeywords.INSTANCE_KEYS == {}  # nothing of a record kept past its check


# -- bounds, const and enum with decimals -------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "limit", "value", "passes"),
    [
        ("minimum", 0.1, Decimal("0.1"), True),
        ("minimum", 0.1, Decimal("0.09"), False),
        ("maximum", 0.3, Decimal("0.3"), True),
        ("maximum", 0.3, Decimal("0.30000000000000001"), False),
        ("exclusiveMaximum", 0.1, Decimal("0.1"), False),
        ("exclusiveMaximum", 0.1, Decimal("0.0999"), True),
        ("exclusiveMinimum", 0.1, Decimal("0.1"), False),
        ("exclusiveMinimum", Decimal("0.1"), 0.1, False),
        ("minimum", Decimal("0.1"), 0.1, True),
        ("minimum", 0.1, 0.1, True),  # floats with floats (and ints) as they are
        ("maximum", 1, 1.0000000000000002, False),
        ("minimum", 20, Decimal("19.999"), False),
    ],
)
def test_a_bound_compares_a_decimal_with_a_float_as_written(
    keyword: str, limit: Any, value: Any, passes: bool
) -> None:
    """QA: ``minimum: 0.1`` refused the decimal 0.1 (a CSV cell) and ``exclusiveMaximum: 0.1``
    took it: Python compares a Decimal with the float's binary value, 0.1000000000000000055."""
    assert (messages({"properties": {"n": {keyword: limit}}}, {"n": value}) == []) is passes


@pytest.mark.parametrize(
    ("expected", "value", "equal"),
    [
        (1.1, Decimal("1.1"), True),
        (0.1, Decimal("0.10"), True),
        (Decimal("0.1"), 0.1, True),
        (1.1, 1.1, True),
        (1, 1.0, True),
        (1, True, False),
        ([0.1, {"a": 0.5}], [Decimal("0.1"), {"a": Decimal("0.5")}], True),
        (0.1, Decimal("0.1000000000000000055511151231257827"), False),
        (2**60, float(2**60), True),  # review: floats are compared as they are
        (float(2**60), 2**60, True),
        ([2**60], [float(2**60)], True),
        ([1, 2], [1, 2, 3], False),
        ({"a": 1}, [1], False),
    ],
)
def test_const_and_enum_compare_a_decimal_with_a_float_as_written(
    expected: Any, value: Any, equal: bool
) -> None:
    assert (messages({"properties": {"n": {"const": expected}}}, {"n": value}) == []) is equal
    assert (messages({"properties": {"n": {"enum": [expected]}}}, {"n": value}) == []) is equal
    assert (messages({"properties": {"n": {"enum": [7, expected]}}}, {"n": value}) == []) is equal


def test_a_table_holding_a_decimal_takes_a_schema_bounded_by_the_same_number() -> None:
    engine = Engine(clock=lambda: 1_700_000_000.0)
    engine.execute("insert", {"table": "t", "record": {"p": Decimal("0.1")}})
    schema = {"properties": {"p": {"minimum": 0.1, "maximum": 0.1, "enum": [0.1], "const": 0.1}}}
    engine.run_job(engine.execute("set_schema", {"table": "t", "schema": schema}))
    engine.execute("insert", {"table": "t", "record": {"p": Decimal("0.1")}})
    with pytest.raises(ValidationFailed):
        engine.execute("insert", {"table": "t", "record": {"p": Decimal("0.11")}})


def test_const_keys_a_large_value_once_per_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: ``not const`` applied 300 times to a 200,000-item list keyed it each time (17 s
    with ints, 138 s with floats); it is keyed once, and a list of another size not at all."""
    schema = {"properties": {"x": {"allOf": [{"not": {"const": [1, 2, 3]}}] * 300}}}
    same_size = {"properties": {"x": {"allOf": [{"not": {"const": [0.5] * 50}}] * 300}}}
    record = {"x": [n + 0.5 for n in range(200_000)]}
    shorter = {"x": [n + 0.5 for n in range(50)]}
    keyed = count_calls(monkeypatch, schemakeywords, "_key")
    assert messages(schema, record) == []
    assert keyed.calls == 0  # another size: no key made
    assert messages(same_size, shorter) == []
    # the record's list and the const (one list in the 300 places), once each in that check
    assert keyed.calls == 2
