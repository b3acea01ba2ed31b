"""Field names in query and aggregate bodies take the limit of every other place a field is
named (``api.queries.GENERIC_FIELD``: 8 dotted levels of 64 characters, 519 in all): a
metric's field and a body's sort as much as inserts, group_by, filters and the query string."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.factories import assert_error, token

pytestmark = pytest.mark.integration

LEVELS = [letter * 64 for letter in "abcdefgh"]
LONGEST = ".".join(LEVELS)


def nested(path: list[str], value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for ``["a", "b"]``."""
    for part in reversed(path):
        value = {part: value}
    return value


def test_the_longest_field_name_is_a_metric_field_and_a_sort_key(client: httpx.Client) -> None:
    """QA: 519 characters filtered and grouped, but as a metric's field or in a body's sort it
    was a 422 string_too_long (a separate cap of 512)."""
    assert len(LONGEST) == 519
    table = f"qb_{token()}"
    rows = [nested(LEVELS, 2), nested(LEVELS, 5)]
    assert client.post(f"/api/v1/data/{table}", json={"data": rows}).status_code == 201
    aggregate = f"/api/v1/data/{table}/aggregate"

    metrics = [{"op": op, "field": LONGEST, "as": op} for op in ("sum", "min", "max", "count")]
    response = client.post(aggregate, json={"metrics": metrics})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"sum": 7, "min": 2, "max": 5, "count": 2}]

    response = client.post(aggregate, json={"group_by": [LONGEST], "sort": f"{LONGEST}:desc"})
    assert response.status_code == 200, response.text
    assert [group[LONGEST] for group in response.json()["data"]] == [5, 2]

    response = client.post(f"/api/v1/data/{table}/query", json={"sort": f"{LONGEST}:desc"})
    assert response.status_code == 200, response.text
    assert [{LEVELS[0]: row[LEVELS[0]]} for row in response.json()["data"]] == rows[::-1]


def test_the_longest_sort_a_list_takes_is_a_bodys_too(client: httpx.Client) -> None:
    """Four fields (the most a sort takes) of the longest names, each descending."""
    table = f"qb_{token()}"
    names = [f"{LONGEST[:-1]}{last}" for last in "wxyz"]
    rows = [nested(name.split("."), i) for i, name in enumerate(names)]
    assert client.post(f"/api/v1/data/{table}", json={"data": rows}).status_code == 201
    sort = ",".join(f"{name}:desc" for name in names)

    listed = client.get(f"/api/v1/data/{table}", params={"sort": sort})
    assert listed.status_code == 200, listed.text
    queried = client.post(f"/api/v1/data/{table}/query", json={"sort": sort})
    assert queried.status_code == 200, queried.text
    assert queried.json()["data"] == listed.json()["data"]
    assert len(queried.json()["data"]) == 4

    groups = client.post(f"/api/v1/data/{table}/aggregate", json={"group_by": names, "sort": sort})
    assert groups.status_code == 200, groups.text
    assert groups.json()["meta"]["total"] == 4


def test_a_field_name_past_the_limit_is_refused_wherever_a_field_is_named(
    client: httpx.Client,
) -> None:
    """Within 519 characters, a name with a ninth level or a 65-character level is a 400
    naming it everywhere; past 519 it is longer than any field name, and a metric's field,
    capped at that length by the body's schema, is a 422 before the name is read."""
    table = f"qb_{token()}"
    assert client.post(f"/api/v1/data/{table}", json={"data": {"a": 1}}).status_code == 201
    url = f"/api/v1/data/{table}"
    aggregate, query = f"{url}/aggregate", f"{url}/query"

    def answers(name: str) -> list[tuple[httpx.Response, str]]:
        metric = {"metrics": [{"op": "sum", "field": name, "as": "s"}]}
        return [
            (client.post(aggregate, json=metric), "body.metrics.0.field"),
            (client.post(aggregate, json={"group_by": ["a"], "sort": name}), "body.sort"),
            (client.post(query, json={"sort": f"{name}:desc"}), "body.sort"),
            (client.post(aggregate, json={"group_by": [name]}), "body.group_by.0"),
            (
                client.post(query, json={"filter": {"field": name, "op": "eq", "value": 1}}),
                "body.filter.field",
            ),
            (client.get(url, params={"sort": f"{name}:desc"}), "sort"),
            (client.get(url, params={name: "1"}), name),
        ]

    for name in (".".join("abcdefghi"), "a" * 65):
        for response, field in answers(name):
            error = assert_error(response, 400, "BAD_QUERY")
            assert error["details"][0]["field"] == field, error
    past = f"{LONGEST}x"
    assert len(past) == 520
    for index, (response, field) in enumerate(answers(past)):
        if index == 0:
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert error["details"][0]["type"] == "string_too_long", error
        else:
            error = assert_error(response, 400, "BAD_QUERY")
        assert error["details"][0]["field"] == field, error
