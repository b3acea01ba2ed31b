"""Which body checks answer, and when (``api.hardening``): every line of Content-Type and
Content-Encoding is read (RFC 9110 §5.3), and a 404 or 405 wins over a 415, as does the answer
of a route that reads no body."""

from __future__ import annotations

import gzip

import httpx
import orjson
import pytest

from tests.support.factories import assert_error, create_record, token, user_payload

pytestmark = pytest.mark.integration
COMPRESSED = "Request bodies must not be compressed (Content-Encoding: identity)"


@pytest.mark.parametrize(
    "lines",
    [["identity", "gzip"], ["gzip", "identity"], ["identity, gzip"], ["identity", "br, identity"]],
    ids=["second-line", "first-line", "one-line", "in-a-list"],
)
def test_a_coding_on_any_line_is_415_with_accept_encoding_identity(
    anon: httpx.Client, lines: list[str]
) -> None:
    """A gzip on a second line reached the JSON parser (422 "not valid UTF-8")."""
    headers = [("Content-Type", "application/json")]
    headers += [("Content-Encoding", line) for line in lines]
    body = gzip.compress(orjson.dumps(user_payload()))
    response = anon.post("/api/v1/users", content=body, headers=headers)
    error = assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert error["message"] == COMPRESSED
    assert response.headers["accept-encoding"] == "identity"  # RFC 9110 §12.5.3
    assert response.headers["connection"] == "close"


def test_identity_on_every_line_is_read(anon: httpx.Client) -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", "identity"),
        ("Content-Encoding", "IDENTITY"),
    ]
    payload = user_payload()
    response = anon.post("/api/v1/users", content=orjson.dumps(payload), headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["data"]["email"] == payload["email"]


def test_a_second_content_type_line_is_read_too(anon: httpx.Client) -> None:
    """A text/plain on a second line passed (the app reads the first): it is refused, and the
    415 for a media type says nothing of codings."""
    headers = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
    response = anon.post("/api/v1/users", content=orjson.dumps(user_payload()), headers=headers)
    error = assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert error["message"] == "The request body must be application/json"
    assert "accept-encoding" not in response.headers


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("text/csv; charset=iso-8859-1", "iso-8859-1"),
        ('text/csv; charset="UTF-16"', "utf-16"),
        ("text/csv; header=present; Charset=windows-1252", "windows-1252"),
    ],
)
def test_a_body_declared_in_another_charset_is_415_before_anything_is_written(
    client: httpx.Client, content_type: str, charset: str
) -> None:
    """QA: bodies are read as UTF-8, so a Latin-1 CSV was imported up to its first "é" and
    the rest never read; refused whole now, naming the charset."""
    table = f"cs_{token()}"
    body = "n,name\n1,a\n2,caf\u00e9\n3,c\n".encode("latin-1")
    response = client.post(
        "/api/v1/batch/import",
        params={"table": table},
        content=body,
        headers={"Content-Type": content_type},
    )
    error = assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert error["message"] == f"The request body must be UTF-8; it declares charset={charset}"
    assert_error(client.get(f"/api/v1/data/{table}"), 404, "NOT_FOUND")  # nothing written
    # JSON has no charset parameter (RFC 8259 §11): one is ignored, as before.
    json_latin1 = {"Content-Type": "application/json; charset=ISO-8859-1"}
    response = client.post(f"/api/v1/data/{table}", content=b'{"data": {}}', headers=json_latin1)
    assert response.status_code == 201, response.text
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=ISO-8859-1"}
    login = client.post(
        "/api/v1/auth/token", content=b"username=nobody%40example.com&password=x", headers=form
    )
    assert_error(login, 401)  # read, not refused for its charset (older HTTP clients add one)


@pytest.mark.parametrize("charset", ["utf-8", '"UTF-8"', "utf8", "UTF_8", "us-ascii"])
def test_a_body_declared_utf8_or_ascii_is_read(client: httpx.Client, charset: str) -> None:
    table = f"cs_{token()}"
    response = client.post(
        "/api/v1/batch/import",
        params={"table": table},
        content=b"n\n1\n",
        headers={"Content-Type": f"text/csv; charset={charset}"},
    )
    assert response.status_code == 200 and response.json()["data"]["imported"] == 1, response.text


TEXT = {"Content-Type": "text/plain"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code", "allow"),
    [
        ("PUT", "/api/v1/health", {}, 405, "METHOD_NOT_ALLOWED", "GET, HEAD"),
        ("POST", "/api/v1/nope", TEXT, 404, "NOT_FOUND", None),
        (
            "PUT",
            "/api/v1/batch/import",
            {"Content-Type": "application/json"},
            405,
            "METHOD_NOT_ALLOWED",
            "POST",
        ),
        # Routes that only answer 405 (the record routes' neighbours) count as no route.
        (
            "POST",
            "/api/v1/data/t/schema",
            TEXT,
            405,
            "METHOD_NOT_ALLOWED",
            "DELETE, GET, HEAD, PUT",
        ),
        ("POST", "/api/v1/users", TEXT, 415, "UNSUPPORTED_MEDIA_TYPE", None),
    ],
    ids=["405", "404", "upload-405", "refusing-route-405", "routed-415"],
)
def test_404_and_405_win_over_415(
    client: httpx.Client,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
    allow: str | None,
) -> None:
    response = client.request(method, path, content=b"{}", headers=headers)
    assert_error(response, status, code)
    assert response.headers.get("allow") == allow
    # The body was never read: the connection closes after the answer, as after a 415.
    assert response.headers["connection"] == "close"


def test_a_route_that_reads_no_body_answers_as_without_one(client: httpx.Client) -> None:
    """A DELETE's body has no meaning (RFC 9110 §9.3.5): a missing record is its 404 and an
    existing one is deleted, whatever the body's type (both were 415)."""
    table = f"hb_{token()}"
    missing = client.request("DELETE", f"/api/v1/data/{table}/zz", content=b"x", headers=TEXT)
    assert_error(missing, 404, "NOT_FOUND")
    record = create_record(client, table, name="kept?")
    url = f"/api/v1/data/{table}/{record['id']}"
    coded = {**TEXT, "Content-Encoding": "gzip"}
    deleted = client.request("DELETE", url, content=b"x", headers=coded)
    assert deleted.status_code == 204, deleted.text
    assert deleted.headers["connection"] == "close"
    assert_error(client.get(url), 404, "NOT_FOUND")


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/users"])
def test_a_declared_oversized_body_is_413_before_routing(anon: httpx.Client, path: str) -> None:
    response = anon.post(path, content=b"x" * (2**20 + 1), headers=TEXT)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert response.headers["connection"] == "close"
