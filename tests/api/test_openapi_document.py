"""The OpenAPI document itself, built in-process (no server): its examples are valid, and it
declares what the routes really answer (the 400 of an unparsable JSON body, the job in a 202,
the optional token of open registration, the parameters of ``/users/me``, the list filters
of every route that reads them, the types a job's result is served in)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from fastapi import FastAPI

from api.auth.principals import Principal
from api.deps import get_caller
from api.jobs.kinds import MEDIA_TYPES
from api.jobs.web import get_jobs
from api.main import create_app
from api.settings import Settings
from tests.support.factories import assert_error
from tests.support.inprocess import in_process

API = "/api/v1"
BEARER = {"OAuth2PasswordBearer": []}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings())


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


def examples_in(node: Any, where: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """Every (where, example, the schema it illustrates) inside a schema."""
    found: list[tuple[str, Any, dict[str, Any]]] = []
    if isinstance(node, dict):
        for example in node.get("examples", []) if isinstance(node.get("examples"), list) else []:
            found.append((f"{where}.examples", example, node))
        if "example" in node:
            found.append((f"{where}.example", node["example"], node))
        for key, value in node.items():
            if key not in ("examples", "example"):
                found += examples_in(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += examples_in(value, f"{where}[{index}]")
    return found


def all_examples(spec: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """The examples of the components' schemas, and those of each operation's request body,
    responses and parameters (in their schema, or beside it on the media type or parameter)."""
    found = examples_in(spec["components"]["schemas"], "schemas")
    for method, path, operation in operations(spec):
        where = f"{method.upper()} {path}"
        media: list[tuple[str, dict[str, Any]]] = [
            (f"{where} body {kind}", content)
            for kind, content in operation.get("requestBody", {}).get("content", {}).items()
        ]
        for status, response in operation["responses"].items():
            media += [
                (f"{where} {status} {kind}", content)
                for kind, content in response.get("content", {}).items()
            ]
        media += [
            (f"{where} parameter {parameter['name']}", parameter)
            for parameter in operation.get("parameters", [])
        ]
        for label, holder in media:
            schema = holder.get("schema", {})
            found += examples_in(schema, label)
            if "example" in holder:
                found.append((f"{label} example", holder["example"], schema))
            for name, example in (holder.get("examples") or {}).items():
                if isinstance(example, dict) and "value" in example:
                    found.append((f"{label} examples.{name}", example["value"], schema))
    return found


def test_every_example_is_valid_against_its_schema(spec: dict[str, Any]) -> None:
    """FastAPI drops every null of an example (it writes the document with exclude_none):
    JobPublic's example lost its required ``"error": null`` and no longer matched itself."""
    found = all_examples(spec)
    assert len(found) >= 40
    assert any(where.startswith("schemas.JobPublic.") for where, _, _ in found)
    invalid = []
    for where, example, schema in found:
        validator = jsonschema.Draft202012Validator({**schema, "components": spec["components"]})
        invalid += [f"{where}: {error.message}" for error in validator.iter_errors(example)]
    assert not invalid, "\n".join(invalid)


def test_the_record_examples_fit_the_table_schema_example(spec: dict[str, Any]) -> None:
    """QA: in Swagger UI, attaching the example schema and then creating the example record
    was a 422 (the schema requires a price the records did not have)."""
    schemas = spec["components"]["schemas"]
    (body,) = schemas["SchemaBody"]["examples"]
    validator = jsonschema.Draft202012Validator(body["schema"])
    records = [
        record
        for name in ("DataBody", "DataCreateBody", "DataRecord")
        for example in schemas[name]["examples"]
        for data in [example.get("data", example)]
        for record in (data if isinstance(data, list) else [data])
    ]
    assert len(records) >= 4
    problems = [error.message for record in records for error in validator.iter_errors(record)]
    assert not problems, problems


def test_the_job_example_is_a_job_as_the_api_sends_it(spec: dict[str, Any]) -> None:
    (example,) = spec["components"]["schemas"]["JobPublic"]["examples"]
    assert example["error"] is None and example["state"] == "succeeded"
    assert set(example) == set(spec["components"]["schemas"]["JobPublic"]["required"])


def test_open_registration_documents_the_token_as_optional(spec: dict[str, Any]) -> None:
    """An operation with a single requirement makes the token mandatory (Swagger UI's lock,
    generated clients asking for credentials): sign-up must offer the anonymous ``{}``."""
    assert spec["paths"][f"{API}/users"]["post"]["security"] == [{}, BEARER]
    for method, path in (("get", "/users"), ("get", "/users/me"), ("patch", "/users/{user_id}")):
        assert spec["paths"][API + path][method]["security"] == [BEARER], (method, path)
    optional = [
        (method, path)
        for method, path, operation in operations(spec)
        if operation.get("security") == [{}, BEARER]
    ]
    assert optional == [("post", f"{API}/users")]  # the only route taking ``Caller`` alone


async def test_a_too_deep_json_body_is_a_documented_400_on_every_route_reading_one(
    app: FastAPI, spec: dict[str, Any]
) -> None:
    """FastAPI answers 400 ("There was an error parsing the body") for JSON nested past the
    parser's recursion limit, before anything else: each JSON-body route declares it."""
    deep = b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    reading = [
        (method, path)
        for method, path, operation in operations(spec)
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert len(reading) >= 15 and ("post", f"{API}/users") in reading
    async with in_process(app) as http:
        for method, path in reading:
            url = re.sub(r"\{[a-z_]+\}", "x", path)
            response = await http.request(
                method, url, content=deep, headers={"Content-Type": "application/json"}
            )
            error = assert_error(response, 400, "BAD_REQUEST")
            assert "parsing the body" in error["message"], (method, path)
            declared = spec["paths"][path][method]["responses"]["400"]
            assert "JSON body nested too deeply" in declared["description"], (method, path)
            schema = declared["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}


def test_every_method_that_may_carry_a_body_documents_413(spec: dict[str, Any]) -> None:
    """QA: DELETEs, logout and snapshot answer 413 to an oversized body (the limit comes before
    routing) but did not say so."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in ("post", "put", "patch", "delete"):
                assert "413" in operation["responses"], (method, path)
    deleting = spec["paths"][f"{API}/data/{{table}}/{{record_id}}"]["delete"]["responses"]
    assert "MAX_BODY_BYTES" in deleting["413"]["description"]
    assert list(deleting) == sorted(deleting)


def test_ready_documents_only_what_it_answers(spec: dict[str, Any]) -> None:
    """/ready turns a store timeout into 503 within 1 s: it never sends the 504 of a store
    timeout elsewhere, nor a 422 or 429."""
    responses = spec["paths"][f"{API}/ready"]["get"]["responses"]
    assert sorted(responses) == ["200", "503"]
    assert "STORE_NOT_READY" in responses["503"]["description"]


def test_every_202_documents_the_job_it_carries(spec: dict[str, Any]) -> None:
    accepted = {
        (method, path): operation["responses"]["202"]
        for method, path, operation in operations(spec)
        if "202" in operation["responses"]
    }
    assert set(accepted) == {
        ("patch", f"{API}/data/{{table}}"),
        ("delete", f"{API}/data/{{table}}"),
        ("get", f"{API}/dump/{{table}}"),
        ("post", f"{API}/admin/snapshot"),
        ("post", f"{API}/batch/import"),
        ("get", f"{API}/batch/{{table}}/export"),
        ("delete", f"{API}/jobs/{{job_id}}"),
    }
    for (method, path), response in accepted.items():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Envelope_JobPublic_"}, (method, path)
        started = path != f"{API}/jobs/{{job_id}}"  # a cancellation names no new job
        assert ("Location" in response.get("headers", {})) is started, (method, path)


def test_users_me_takes_the_parameters_of_users_id(spec: dict[str, Any]) -> None:
    me = spec["paths"][f"{API}/users/me"]["get"]
    by_id = spec["paths"][f"{API}/users/{{user_id}}"]["get"]
    parameters = [p for p in by_id["parameters"] if p["name"] != "user_id"]
    assert me["parameters"] == parameters
    assert {p["name"] for p in parameters} == {
        "embed",
        "orders_page",
        "orders_per_page",
        "If-None-Match",
        "If-Match",
    }
    assert me["responses"] == by_id["responses"]


def test_the_served_document_is_cached(app: FastAPI) -> None:
    assert app.openapi() is app.openapi()


SELECTING_AS_THE_LIST = [
    ("get", "/data/{table}/count"),
    ("patch", "/data/{table}"),
    ("delete", "/data/{table}"),
    ("get", "/batch/{table}/export"),
]


def parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [p for p in operation.get("parameters", []) if p["name"] == name]
    return found


@pytest.mark.parametrize(("method", "path"), SELECTING_AS_THE_LIST)
def test_routes_that_select_as_the_data_list_document_its_filters(
    spec: dict[str, Any], method: str, path: str
) -> None:
    """They honour the filters of ``GET /data/{table}``, but read them from the query string
    as a whole: FastAPI listed none, and a generated client could send none (a write by
    filter only with ``all=true``). The same parameter as the list's, and its date bounds."""
    listed = spec["paths"][f"{API}/data/{{table}}"]["get"]
    operation = spec["paths"][API + path][method]
    for name in ("filters", "created_after", "created_before"):
        assert parameter(operation, name) == parameter(listed, name), name


def test_only_the_routes_that_read_filters_document_them(spec: dict[str, Any]) -> None:
    documented = {
        (method, path.removeprefix(API))
        for method, path, operation in operations(spec)
        if any(p["name"] == "filters" for p in operation.get("parameters", []))
    }
    lists = {
        ("get", "/users"),
        ("get", "/orders"),
        ("get", "/users/{user_id}/orders"),
        ("get", "/data/{table}"),
        ("get", "/join/{left}/{right}/{key}"),
    }
    assert documented == lists | set(SELECTING_AS_THE_LIST)


def test_a_job_result_documents_the_types_it_is_served_in(spec: dict[str, Any]) -> None:
    """With headers only, a generated client's ``parsed`` was None for every download."""
    responses = spec["paths"][f"{API}/jobs/{{job_id}}/result"]["get"]["responses"]
    text = {"schema": {"type": "string"}}
    files = {"application/x-ndjson": text, "text/csv": text}
    assert responses["200"]["content"] == files
    assert responses["206"]["content"] == {**files, "multipart/byteranges": text}


class FinishedExports:
    """The job store as the download reads it: job ``<format>`` is a finished export in it."""

    async def get(self, job_id: str) -> dict[str, Any]:
        result = {"file": f"{job_id}.{job_id}", "format": job_id, "media_type": MEDIA_TYPES[job_id]}
        return {"id": job_id, "state": "succeeded", "params": {"table": "t"}, "result": result}


async def test_a_job_result_is_served_in_a_documented_type(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    app = create_app(Settings(job_result_dir=str(tmp_path)))
    app.dependency_overrides[get_caller] = lambda: Principal(id="a", role="admin", session_id="s")
    app.dependency_overrides[get_jobs] = lambda: SimpleNamespace(jobs=FinishedExports())
    bodies = {"ndjson": '{"id": "a"}\n', "csv": "id\r\na\r\n"}
    declared = spec["paths"][f"{API}/jobs/{{job_id}}/result"]["get"]["responses"]["200"]
    async with in_process(app) as http:
        for fmt, body in bodies.items():
            (tmp_path / f"{fmt}.{fmt}").write_text(body, newline="")
            answer = await http.get(f"{API}/jobs/{fmt}/result")
            assert answer.status_code == 200, answer.text
            assert answer.text == body
            media_type = answer.headers["content-type"].partition(";")[0]
            assert media_type in declared["content"], fmt


@pytest.mark.parametrize(
    ("path", "method", "codes"),
    [
        ("/api/v1/jobs/{job_id}", "delete", ["JOB_FINISHED", "JOB_NOT_CANCELLABLE"]),
        ("/api/v1/jobs/{job_id}/result", "get", ["JOB_NOT_FINISHED"]),
        ("/api/v1/data/{table}/schema", "put", ["SCHEMA_VIOLATIONS"]),
    ],
)
def test_a_409_names_the_conflicts_its_route_answers(
    spec: dict[str, Any], path: str, method: str, codes: list[str]
) -> None:
    """QA: these routes' 409 read "Duplicate unique value, foreign key violation, ... or the
    last admin", none of which they answer."""
    described = spec["paths"][path][method]["responses"]["409"]["description"]
    assert all(f"`{code}`" in described for code in codes), described
    assert "Duplicate unique value" not in described


def test_an_order_date_is_documented_as_the_api_takes_it(spec: dict[str, Any]) -> None:
    """QA: an admin's order_date as seconds since 1970 was taken (201) but the document
    allowed only a date-time string: a client that validates first could not send it."""
    date = {"properties": spec["components"]["schemas"]["OrderCreate"]["properties"]}
    for value in (1700000000, 1700000000.5, "2024-05-01T12:00:00Z", None):
        jsonschema.validate({"order_date": value}, date)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"order_date": [1]}, date)


def _keys_anywhere(node: Any, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        found.update(node)
        for value in node.values():
            _keys_anywhere(value, found)
    elif isinstance(node, list):
        for value in node:
            _keys_anywhere(value, found)
    return found


def test_bounds_are_json_schema_keywords(spec: dict[str, Any]) -> None:
    """QA (schemathesis): every page bound reached clients as ``ge``/``le``, which JSON Schema
    does not know, so generated clients and validators took any integer (a validator placed
    before the bounds kept pydantic from translating them)."""
    assert not {"ge", "le", "gt", "lt"} & _keys_anywhere(spec, set())
    params = {p["name"]: p["schema"] for p in spec["paths"]["/api/v1/users"]["get"]["parameters"]}
    assert (params["page"]["minimum"], params["page"]["maximum"]) == (1, 1_000_000)
    assert (params["per_page"]["minimum"], params["per_page"]["maximum"]) == (1, 100)
