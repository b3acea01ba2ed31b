"""Response compression by Accept-Encoding, and the router's trailing-slash redirects
(``api.middleware``)."""

from __future__ import annotations

import httpx
import pytest

from api.middleware import accepts_gzip, relative_redirect
from tests.support.factories import user_payload

ACCEPT_ENCODINGS = [
    ("gzip, deflate, br", True),
    ("gzip", True),
    ("GZIP", True),  # codings are case-insensitive
    ("*", True),
    ("x-gzip", True),
    ("br, gzip;q=0.5", True),
    ("gzip;q=1.0, identity; q=0.5, *;q=0", True),
    ("", False),
    ("identity", False),
    ("br", False),
    ("gzip;q=0", False),  # q=0: not acceptable
    ("gzip; q=0", False),
    ("gzip;Q=0.0", False),
    ("gzip;q=0.000", False),
    ("*, gzip;q=0", False),  # gzip named: * does not cover it
    ("*;q=0", False),
    ("gzip;q=nonsense", False),
]


@pytest.mark.parametrize(("header", "gzipped"), ACCEPT_ENCODINGS)
def test_accepts_gzip(header: str, gzipped: bool) -> None:
    assert accepts_gzip(header.encode()) is gzipped


@pytest.mark.integration
@pytest.mark.parametrize(
    ("header", "gzipped"),
    [("gzip;q=0", False), ("*, gzip;q=0", False), ("GZIP", True), ("*", True), ("gzip", True)],
)
def test_responses_are_gzipped_only_when_accepted(
    anon: httpx.Client, header: str, gzipped: bool
) -> None:
    response = anon.get("/openapi.json", headers={"Accept-Encoding": header})
    assert response.status_code == 200 and len(response.content) > 1024
    assert (response.headers.get("content-encoding") == "gzip") is gzipped
    assert "Accept-Encoding" in response.headers["vary"]


@pytest.mark.integration
def test_accept_encoding_on_two_lines_is_one_list(anon: httpx.Client) -> None:
    headers = [("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")]
    assert anon.get("/openapi.json", headers=headers).headers["content-encoding"] == "gzip"


@pytest.mark.integration
def test_trailing_slash_redirects_stay_on_this_host(anon: httpx.Client) -> None:
    """Starlette builds the Location from the Host header: a forged Host made it a redirect
    to another site, and a 307 carries the method and body (a registration's password)."""
    evil = {"Host": "evil.example"}
    read = anon.get("/api/v1/users/me/", params={"a": "1"}, headers=evil)
    assert read.status_code == 307
    assert read.headers["location"] == "/api/v1/users/me?a=1"
    assert read.headers["cache-control"] == "no-store"
    assert read.headers["x-request-id"]
    register = anon.post("/api/v1/users/", json=user_payload(), headers=evil)
    assert register.status_code == 307 and register.headers["location"] == "/api/v1/users"
    assert register.headers["cache-control"] == "no-store"
    # still followed, to the same server
    followed = anon.post("/api/v1/users/", json=user_payload(), follow_redirects=True)
    assert followed.status_code == 201


def test_a_redirect_never_names_a_host() -> None:
    raw = [(b"content-length", b"0"), (b"location", b"http://evil.example//other.example/x?y=1")]
    assert relative_redirect(raw) == [
        (b"cache-control", b"no-store"),
        (b"content-length", b"0"),
        (b"location", b"/other.example/x?y=1"),
    ]
