"""GET|PUT /api/v1/data/{table}/schema: typed models, inferred shapes, attached JSON Schemas."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storeserver.errors import BadRequest
from tests.support.auth import register
from tests.support.factories import PASSWORD, assert_error, create_record, token
from tests.support.stack import Stack
from tests.support.storedirect import bulk_insert

pytestmark = pytest.mark.integration

PRODUCT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "price": {"type": "number", "minimum": 0},
        "meta": {"type": "object", "properties": {"color": {"type": "string"}}},
    },
    "required": ["name", "price"],
}
TYPE_NAMES = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str"}
TYPE_NAMES |= {list: "list", dict: "map"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(st.characters(codec="utf-8"), max_size=6)
)
values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.sampled_from("xy"), scalars)
rows = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, min_size=1), min_size=1
).map(lambda items: items[:12])


def schema_url(table: str) -> str:
    return f"/api/v1/data/{table}/schema"


def test_typed_tables_answer_their_public_models(client: httpx.Client) -> None:
    for table, expected in (("users", {"email", "full_name"}), ("orders", {"total_price"})):
        response = client.get(schema_url(table))
        assert response.status_code == 200, response.text
        info = response.json()["data"]
        assert info["typed"] is True and info["table"] == table
        assert expected <= set(info["schema"]["properties"])
        assert isinstance(info["rows"], int) and info["indexes"]
        assert "password" not in response.text  # neither password nor password_hash


def test_users_index_and_foreign_key_are_shown(client: httpx.Client) -> None:
    users = client.get(schema_url("users")).json()["data"]
    assert any(index["field"] == "email" and index["unique"] for index in users["indexes"])
    orders = client.get(schema_url("orders")).json()["data"]
    assert any(fk["field"] == "user_id" for fk in orders["foreign_keys"])


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=rows)
def test_shape_inference_on_mixed_data(client: httpx.Client, records: list[dict[str, Any]]) -> None:
    table = f"shape_{token()}"
    for record in records:
        create_record(client, table, **record)
    expected: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        for name, value in record.items():
            expected[name][TYPE_NAMES[type(value)]] += 1

    response = client.get(schema_url(table))
    assert response.status_code == 200, response.text
    info = response.json()["data"]
    assert info["typed"] is False and info["rows"] == info["sampled"] == len(records)
    assert info["schema"] is None and info["indexes"] == []
    fields = info["fields"]
    for name, counts in expected.items():
        assert fields[name] == {"count": sum(counts.values()), "types": dict(counts)}
    assert fields["id"]["count"] == len(records)
    assert set(fields) - set(expected) <= {"id", "created_at", "updated_at", "version"}


def test_sample_bounds_the_rows_examined(client: httpx.Client) -> None:
    table = f"shape_{token()}"
    for n in range(5):
        create_record(client, table, n=n)
    info = client.get(schema_url(table), params={"sample": 2}).json()["data"]
    assert info["rows"] == 5 and info["sampled"] == 2 and info["fields"]["n"]["count"] == 2
    assert_error(client.get(schema_url(table), params={"sample": 0}), 422)
    assert_error(client.get(schema_url(table), params={"sample": "1_0"}), 422)


def test_unknown_table_is_404(client: httpx.Client) -> None:
    missing = schema_url(f"nothing_{token()}")
    assert_error(client.get(missing), 404)
    # QA: removing the schema of a misspelt table answered 200, "none was attached".
    assert_error(client.delete(missing), 404, "NOT_FOUND")
    assert_error(client.put(missing, json={"schema": None}), 404, "NOT_FOUND")
    assert_error(client.get(missing), 404)  # and neither made the table


def test_the_schema_goes_under_schema_only(client: httpx.Client) -> None:
    """QA: by its Python field name, ``json_schema`` was taken too, and attached."""
    table = f"byname_{token()}"
    create_record(client, table, x=1)
    body = {"json_schema": {"required": ["y"]}}
    assert_error(client.put(schema_url(table), json=body), 422)
    assert client.get(schema_url(table)).json()["data"]["schema"] is None
    create_record(client, table, x=2)  # no schema: nothing required


def test_attach_then_a_rejected_write(client: httpx.Client) -> None:
    table = f"products_{token()}"
    create_record(client, table, name="pen", price=2)
    attached = client.put(schema_url(table), json={"schema": PRODUCT_SCHEMA})
    assert attached.status_code == 200, attached.text
    assert attached.json()["data"] == {
        "attached": True,
        "checked": 1,
        "violating": 0,
        "violations": [],
    }
    assert client.get(schema_url(table)).json()["data"]["schema"] == PRODUCT_SCHEMA

    url = f"/api/v1/data/{table}"
    error = assert_error(client.post(url, json={"data": {"name": "ink", "price": -1}}), 422)
    assert any("price" in str(detail.get("field")) for detail in error["details"]), error
    error = assert_error(client.post(url, json={"data": {"name": "ink"}}), 422)
    assert error["details"][0]["field"] == "body.data.price", error
    nested = {"name": "ink", "price": 1, "meta": {"color": 7}}
    error = assert_error(client.post(url, json={"data": nested}), 422)
    assert any("meta.color" in str(detail.get("field")) for detail in error["details"]), error

    record = create_record(client, table, name="ink", price=1.5)
    error = assert_error(client.patch(f"{url}/{record['id']}", json={"data": {"price": "x"}}), 422)
    assert any("price" in str(detail.get("field")) for detail in error["details"]), error
    by_filter = client.patch(url, params={"name": "ink"}, json={"data": {"price": -5}})
    error = assert_error(by_filter, 422)
    assert error["details"][0]["field"] == "body.data.price", error
    assert client.get(f"{url}/{record['id']}").json()["data"]["price"] == 1.5

    removed = client.put(schema_url(table), json={"schema": None})
    assert removed.status_code == 200 and removed.json()["data"]["attached"] is False
    create_record(client, table, price="anything")


def test_schema_and_indexes_are_never_records_of_those_ids(
    client: httpx.Client, stack: Stack
) -> None:
    """DELETE .../schema removes the schema; the sub-resources' other methods are 405 with
    their Allow, and never reach the records called "schema" or "indexes". No way in creates
    one, the store included; records from before that rule (loaded from an older release's
    data) are kept: tests/storeserver/test_writes_extended.py."""
    table = f"subres_{token()}"
    url = f"/api/v1/data/{table}"
    for rid in ("schema", "indexes", "count"):
        for response in (
            client.post(url, json={"data": {"id": rid, "n": 1}}),
            client.post(url, json={"data": [{"id": "fine"}, {"id": rid}]}),
            client.post(url, params={"upsert": "true"}, json={"data": {"id": rid}}),
        ):
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert "reserved" in error["details"][0]["message"], error
    with pytest.raises(BadRequest, match="reserved"):
        bulk_insert(stack, table, [{"id": "fine", "n": 1}, {"id": "indexes", "n": 1}])
    bulk_insert(stack, table, [{"id": "plain", "n": 1}])
    attach = client.put(schema_url(table), json={"schema": {"type": "object"}})
    assert attach.status_code == 200, attach.text
    removed = client.delete(schema_url(table))
    assert removed.status_code == 200, removed.text
    assert removed.json()["data"]["attached"] is False
    assert client.get(schema_url(table)).json()["data"].get("schema") is None
    for method, path, allow in [
        ("PATCH", f"{url}/schema", "DELETE, GET, HEAD, PUT"),
        ("POST", f"{url}/schema", "DELETE, GET, HEAD, PUT"),
        ("PUT", f"{url}/indexes", "GET, HEAD, POST"),
        ("PATCH", f"{url}/indexes", "GET, HEAD, POST"),
        ("DELETE", f"{url}/indexes", "GET, HEAD, POST"),
    ]:
        response = client.request(method, path, json={"data": {"n": 2}})
        assert_error(response, 405, "METHOD_NOT_ALLOWED")
        assert response.headers["allow"] == allow, (method, path)
    untouched = client.get(url, params={"n": 1}).json()
    assert [r["id"] for r in untouched["data"]] == ["plain"]


def test_existing_violations_are_reported_not_kept_silently(client: httpx.Client) -> None:
    table = f"products_{token()}"
    good = create_record(client, table, name="pen", price=2)
    bad = [create_record(client, table, name="cap", price=-3), create_record(client, table, x=1)]
    refused = client.put(schema_url(table), json={"schema": PRODUCT_SCHEMA})
    error = assert_error(refused, 409, "SCHEMA_VIOLATIONS")
    assert "2" in error["message"]
    assert {detail["id"] for detail in error["details"]} == {r["id"] for r in bad}
    assert any(detail["field"] == "price" for detail in error["details"])
    # a missing field is named itself, as a write's 422 names it (QA: "")
    missing = {d["field"] for d in error["details"] if d["id"] == bad[1]["id"]}
    assert missing == {"name", "price"}
    assert client.get(schema_url(table)).json()["data"]["schema"] is None  # nothing attached
    create_record(client, table, price=-1)  # still unvalidated

    forced = client.put(schema_url(table), json={"schema": PRODUCT_SCHEMA, "force": True})
    assert forced.status_code == 200, forced.text
    result = forced.json()["data"]
    assert result["attached"] is True and result["checked"] == 4 and result["violating"] == 3
    assert good["id"] not in {violation["id"] for violation in result["violations"]}
    # the rows are kept as they were
    assert client.get(f"/api/v1/data/{table}/{bad[1]['id']}").status_code == 200


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "nonsense"},
        {"properties": {"a": {"minimum": "zero"}}},
        {"required": "name"},
        {"pattern": "("},
        {"$ref": "https://example.com/schema.json"},
        {"properties": {"a": {"$ref": "#/$defs/missing"}}},
    ],
)
def test_an_invalid_json_schema_is_422(client: httpx.Client, schema: dict[str, Any]) -> None:
    table = f"products_{token()}"
    create_record(client, table, name="pen")
    error = assert_error(client.put(schema_url(table), json={"schema": schema}), 422)
    assert error["details"][0]["field"].startswith("body.schema")


def test_references_the_schema_names_by_its_ids_are_taken_and_enforced(
    client: httpx.Client,
) -> None:
    """QA: the API took only "#..." references and refused those a nested "$id" (or the
    root's own URI) names, though the store resolves them; the store checks them now."""
    money = {"type": "number", "minimum": 0}
    by_nested_id = {
        "$id": "https://example.com/product",
        "$defs": {"money": {"$id": "money.json", **money}},
        "properties": {"price": {"$ref": "money.json"}},
    }
    by_root_uri = {
        "$id": "https://example.com/product",
        "$defs": {"money": money},
        "properties": {"price": {"$ref": "https://example.com/product#/$defs/money"}},
    }
    for schema in (by_nested_id, by_root_uri):
        table = f"products_{token()}"
        create_record(client, table, price=1)
        attached = client.put(schema_url(table), json={"schema": schema})
        assert attached.status_code == 200, attached.text
        refused = client.post(f"/api/v1/data/{table}", json={"data": {"price": -1}})
        assert_error(refused, 422)
        assert client.post(f"/api/v1/data/{table}", json={"data": {"price": 2}}).status_code == 201


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"a": {"$ref": "#/properties"}}},  # a map of subschemas, not one
        {"properties": {"a": {"$ref": "#/$defs/c/const"}}, "$defs": {"c": {"const": {"x": 1}}}},
        {"properties": {"a": {"pattern": r"\p{L}{300}"}}},  # compiles past RE2's limit
    ],
    ids=["map-of-schemas", "into-a-const", "pattern-too-large"],
)
def test_a_schema_no_write_could_pass_is_refused_when_set(
    client: httpx.Client, schema: dict[str, Any]
) -> None:
    """QA: accepted, then every write reaching it failed 422 "cannot be applied"."""
    table = f"products_{token()}"
    create_record(client, table, name="pen")
    error = assert_error(client.put(schema_url(table), json={"schema": schema}), 422)
    assert error["details"][0]["field"].startswith("body.schema")


def test_schema_body_is_checked(client: httpx.Client) -> None:
    table = f"products_{token()}"
    create_record(client, table, name="pen")
    assert_error(client.put(schema_url(table), json={"schema": []}), 422)
    assert_error(client.put(schema_url(table), json={"force": True}), 422)
    assert_error(client.put(schema_url(table), json={"schema": {}, "extra": 1}), 422)
    forced = client.put(schema_url(table), json={"schema": {}, "force": "true"})  # not a flag
    assert assert_error(forced, 422)["details"][0]["field"] == "body.force"


@pytest.mark.parametrize("table", ["users", "orders"])
def test_typed_tables_refuse_a_schema(client: httpx.Client, table: str) -> None:
    assert_error(client.put(schema_url(table), json={"schema": {}}), 400, "TYPED_TABLE")


def test_schema_routes_are_admin_only(client: httpx.Client, anon: httpx.Client) -> None:
    table = f"products_{token()}"
    create_record(client, table, name="pen")
    user = register(anon)
    assert user.password == PASSWORD
    for method, url, body in (
        ("GET", schema_url(table), None),
        ("GET", schema_url("users"), None),
        ("PUT", schema_url(table), {"schema": {}}),
    ):
        response = anon.request(method, url, json=body, headers=user.headers)
        assert_error(response, 403, "FORBIDDEN")
        assert_error(anon.request(method, url, json=body), 401)


# -- schemas the store must not choke on -------------------------------------------------------


def nested_not(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"not": schema}
    return schema


def test_a_schema_of_too_many_values_is_refused_before_it_is_checked(client: httpx.Client) -> None:
    """QA: 100,000 items cost jsonschema's check ~3 s, in the worker and then in the store."""
    table = f"products_{token()}"
    create_record(client, table, name="pen")
    response = client.put(schema_url(table), json={"schema": {"type": [[]] * 30_000}})
    error = assert_error(response, 400, "LIMIT_EXCEEDED")
    assert "at most 20000 values" in error["message"]


@pytest.mark.parametrize("levels", [200, 90])
def test_a_deeply_nested_schema_is_422(client: httpx.Client, levels: int) -> None:
    """200 levels would overflow jsonschema's recursion in the API worker (a 500 once): the
    API's own walk refuses them; 90 pass the API but not the store's nesting cap (64): both
    are the 422 of an invalid schema."""
    table = f"products_{token()}"
    create_record(client, table, name="pen")
    response = client.put(schema_url(table), json={"schema": nested_not(levels)})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    detail = error["details"][0]
    # The store names the schema; the API's walk, the place past its depth.
    assert (
        detail["field"] == "body.schema"
        if levels < 100
        else detail["field"].startswith("body.schema.not.not")
    )
    assert "nest" in detail["message"]
    assert client.get(f"/api/v1/data/{table}").status_code == 200  # the store is fine


@pytest.mark.parametrize("pattern", [r"^(a)\1$", "^(?=a)", "(?<!x)y"])
def test_a_pattern_re2_cannot_run_is_422_naming_it(client: httpx.Client, pattern: str) -> None:
    """Schema patterns run on RE2 in the store: no backreferences or lookaround. Refused when
    the schema is set, not at the first write."""
    table = f"products_{token()}"
    create_record(client, table, name="pen")
    for schema, field in (
        ({"properties": {"name": {"pattern": pattern}}}, "body.schema.properties.name.pattern"),
        ({"patternProperties": {pattern: {}}}, "body.schema.patternProperties"),
    ):
        error = assert_error(client.put(schema_url(table), json={"schema": schema}), 422)
        assert error["details"][0]["field"] == field
        assert repr(pattern) in error["details"][0]["message"]
        assert "RE2" in error["details"][0]["message"]
    assert client.get(schema_url(table)).json()["data"]["schema"] is None


def test_a_catastrophic_pattern_is_checked_by_re2(client: httpx.Client) -> None:
    """``^(a+)+$`` on 25 "a" and a "!" held the store ~2 s with Python's backtracking ``re``
    (tests/storeserver/test_schemas.py shows that ``re`` no longer runs)."""
    table = f"products_{token()}"
    create_record(client, table, x="aa")
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}}
    assert client.put(schema_url(table), json={"schema": schema}).status_code == 200
    rejected = client.post(f"/api/v1/data/{table}", json={"data": {"x": "a" * 25 + "!"}})
    error = assert_error(rejected, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.data.x"
    assert client.post(f"/api/v1/data/{table}", json={"data": {"x": "a" * 25}}).status_code == 201


def test_unicode_property_patterns_are_taken_and_costly_checks_refused(
    client: httpx.Client,
) -> None:
    """QA: ``\\p{L}`` (letters of any script), which RE2 runs, was refused by the API's
    Python ``re`` check; and one 300 KB string against ``.{0,1000}.{0,1000}x`` held the store
    12 s (504s for everyone). Now the write is refused before the search runs."""
    table = f"people_{token()}"
    create_record(client, table, name="Ann")
    letters = {"properties": {"name": {"type": "string", "pattern": r"^[\p{L} '-]+$"}}}
    assert client.put(schema_url(table), json={"schema": letters}).status_code == 200
    url = f"/api/v1/data/{table}"
    assert client.post(url, json={"data": {"name": "Zoë O'Brien-Łukasz"}}).status_code == 201
    assert_error(client.post(url, json={"data": {"name": "R2D2"}}), 422, "VALIDATION_ERROR")
    table = f"people_{token()}"
    url = f"/api/v1/data/{table}"
    create_record(client, table, name="box")
    costly = {"properties": {"name": {"type": "string", "pattern": ".{0,1000}.{0,1000}x"}}}
    assert client.put(schema_url(table), json={"schema": costly}).status_code == 200
    error = assert_error(client.post(url, json={"data": {"name": "a" * 300_000}}), 422)
    assert "characters x pattern instructions" in error["details"][0]["message"]
    assert client.get(f"/api/v1/data/{table}").status_code == 200


def test_unique_items_over_many_maps(client: httpx.Client) -> None:
    """1,500 distinct maps were ~1 M pairwise comparisons in the store's thread (~4 s); they
    are hashed now (tests/storeserver/test_schemas.py), with the same equality."""
    table = f"products_{token()}"
    create_record(client, table, x=[])
    schema = {"type": "object", "properties": {"x": {"type": "array", "uniqueItems": True}}}
    assert client.put(schema_url(table), json={"schema": schema}).status_code == 200
    items: list[Any] = [{"a": i} for i in range(1500)]
    url = f"/api/v1/data/{table}"
    assert client.post(url, json={"data": {"x": items}}).status_code == 201
    error = assert_error(client.post(url, json={"data": {"x": [*items, {"a": 7.0}]}}), 422)
    assert error["details"][0]["field"] == "body.data.x"
    assert client.post(url, json={"data": {"x": [1, True, "1", [1], {"a": 1}]}}).status_code == 201


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity"])
def test_a_schema_with_a_non_finite_number_is_422(client: httpx.Client, literal: str) -> None:
    """Python's json reads these; stored, they would come back as null (a different schema)."""
    table = f"sch_nf_{token()}"
    schema = '{"type": "object", "properties": {"n": {"maximum": LITERAL}}}'
    body = '{"schema": ' + schema.replace("LITERAL", literal) + "}"
    response = client.put(
        f"/api/v1/data/{table}/schema",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "body.schema.properties.n.maximum"


def test_multiple_of_takes_the_prices_people_write(client: httpx.Client) -> None:
    """JSON numbers are floats in a generic table; 19.99 was "not a multiple of 0.01"."""
    table = f"products_{token()}"
    create_record(client, table, price=1.0)
    schema = {"type": "object", "properties": {"price": {"type": "number", "multipleOf": 0.01}}}
    assert client.put(schema_url(table), json={"schema": schema}).status_code == 200
    url = f"/api/v1/data/{table}"
    for price in (19.99, 4.35, 0.07, 0.29, 0.57, 1.1, 0.3):
        response = client.post(url, json={"data": {"price": price}})
        assert response.status_code == 201, response.text
        assert response.json()["data"]["price"] == price
    error = assert_error(
        client.post(url, json={"data": {"price": 19.999}}), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["field"] == "body.data.price"
    assert "19.999 is not a multiple of 0.01" in error["details"][0]["message"]
