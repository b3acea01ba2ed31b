"""The documentation bundles' validators (``api.docs``): a strong ETag per content coding, byte
ranges on the identity coding only, and the preconditions of RFC 9110 §13 (412 and 304)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.docs import REDOC_JS, DocAssets
from tests.support.factories import assert_error
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
ASSETS = "/docs/assets"
GZIP = {"Accept-Encoding": "gzip"}
IDENTITY = {"Accept-Encoding": "identity"}
# A file StaticFiles serves, and ReDoc's bundle, served from memory.
BUNDLES = ["swagger-ui.css", "redoc.standalone.js"]


@pytest.fixture
def raw(stack: Stack) -> Iterator[httpx.Client]:
    """A client that does not send Accept-Encoding unless told (httpx asks for gzip)."""
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as http:
        http.headers.pop("accept-encoding")
        yield http


def digest(data: bytes) -> str:
    """Compared instead of the bytes, so that a failure does not print a megabyte."""
    return hashlib.sha256(data).hexdigest()


def sent(client: httpx.Client, name: str, *headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """The response to a GET with ``headers`` (merged), and its body as sent (not decoded)."""
    merged = {key: value for part in headers for key, value in part.items()}
    with client.stream("GET", f"{ASSETS}/{name}", headers=merged) as response:
        body = b"".join(response.iter_raw())
    return response, body


@pytest.mark.parametrize("name", BUNDLES)
def test_the_gzip_coding_has_its_own_strong_etag(raw: httpx.Client, name: str) -> None:
    plain, plain_body = sent(raw, name, IDENTITY)
    zipped, zipped_body = sent(raw, name, GZIP)
    assert (plain.status_code, zipped.status_code) == (200, 200)
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert digest(gzip.decompress(zipped_body)) == digest(plain_body)
    etag = plain.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong
    assert zipped.headers["etag"] == etag[:-1] + '-gzip"'
    for response in (plain, zipped):
        assert "Accept-Encoding" in response.headers["vary"]
        assert response.headers["cache-control"] == "public, max-age=86400"
        assert response.headers["last-modified"]
    assert zipped.headers.get("accept-ranges", "none") == "none"


def test_a_range_is_served_on_the_identity_coding_only(raw: httpx.Client) -> None:
    """The gzip answer had the identity's ETag and Accept-Ranges: bytes, so a client resuming
    it with Range + If-Range got 206 plain bytes to splice into the gzip ones."""
    name = "swagger-ui.css"
    plain, whole = sent(raw, name, IDENTITY)
    zipped, _ = sent(raw, name, GZIP)
    resumed, body = sent(
        raw, name, GZIP, {"Range": "bytes=0-9", "If-Range": zipped.headers["etag"]}
    )
    assert resumed.status_code == 200 and "content-range" not in resumed.headers
    assert resumed.headers["content-encoding"] == "gzip"
    assert resumed.headers["etag"] == zipped.headers["etag"]
    assert digest(gzip.decompress(body)) == digest(whole)
    for headers in (IDENTITY, GZIP):  # a usable Range: the identity bytes, whatever is accepted
        part, body = sent(
            raw, name, headers, {"Range": "bytes=0-9", "If-Range": plain.headers["etag"]}
        )
        assert part.status_code == 206 and body == whole[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{len(whole)}"
        assert "content-encoding" not in part.headers
        assert part.headers["etag"] == plain.headers["etag"]
    # A Range Starlette would refuse in plain text is ignored instead: all of it, 200.
    ignored, body = sent(raw, name, IDENTITY, {"Range": "bytes=5-2"})
    assert ignored.status_code == 200 and digest(body) == digest(whole)


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize("coding", [IDENTITY, GZIP], ids=["identity", "gzip"])
def test_if_match_and_if_unmodified_since_are_honoured(
    raw: httpx.Client, name: str, coding: dict[str, str]
) -> None:
    first, _ = sent(raw, name, coding)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    stale = raw.get(f"{ASSETS}/{name}", headers={**coding, "If-Match": '"not-this"'})
    assert stale.status_code == 412, stale.headers  # (not assert_error's: the text is 1 MB)
    assert_error(stale, 412, "PRECONDITION_FAILED")
    assert stale.headers["etag"] == etag
    old = raw.get(
        f"{ASSETS}/{name}",
        headers={**coding, "If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
    )
    assert old.status_code == 412, old.headers
    assert_error(old, 412, "PRECONDITION_FAILED")
    plain_etag = etag.replace('-gzip"', '"')
    for headers in (
        {"If-Match": plain_etag},
        {"If-Match": etag},
        {"If-Unmodified-Since": modified},
    ):
        held, _ = sent(raw, name, coding, headers)  # either coding's tag: the same file
        assert held.status_code == 200, headers


@pytest.mark.parametrize("name", [*BUNDLES, "favicon.png"])
@pytest.mark.parametrize("coding", [IDENTITY, GZIP], ids=["identity", "gzip"])
def test_revalidation_is_a_304(raw: httpx.Client, name: str, coding: dict[str, str]) -> None:
    first, _ = sent(raw, name, coding)
    etag = first.headers["etag"]
    for headers in ({"If-None-Match": etag}, {"If-Modified-Since": first.headers["last-modified"]}):
        again, body = sent(raw, name, coding, headers)
        assert again.status_code == 304 and body == b"", headers
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "public, max-age=86400"
        assert "Accept-Encoding" in again.headers["vary"]


def test_the_favicon_is_never_gzipped(raw: httpx.Client) -> None:
    """A PNG is compressed already: one coding, one tag, byte ranges whatever is accepted."""
    plain, _ = sent(raw, "favicon.png", IDENTITY)
    zipped, body = sent(raw, "favicon.png", GZIP)
    assert "content-encoding" not in zipped.headers and body.startswith(b"\x89PNG")
    assert zipped.headers["etag"] == plain.headers["etag"]
    assert zipped.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "swagger-ui.css"])
def test_a_gzipped_file_is_the_file_every_time(raw: httpx.Client, name: str) -> None:
    """Served from the worker's one compressed copy after the first request: the same bytes
    and ETag each time, decoding to the plain file."""
    plain, plain_body = sent(raw, name, IDENTITY)
    answers = [sent(raw, name, GZIP) for _ in range(3)]
    for response, body in answers:
        assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
        assert response.headers["etag"] == answers[0][0].headers["etag"]
        assert response.headers["last-modified"] == plain.headers["last-modified"]
        assert digest(gzip.decompress(body)) == digest(plain_body)


def test_the_compressed_copy_is_made_once_off_the_loop_and_reused(tmp_path: Path) -> None:
    """In-process: the second request is answered from ``gzipped`` (changing the cached bytes
    changes what is sent), and a file changed on disk is compressed again."""
    (tmp_path / "app.js").write_text("console.log('one');\n" * 50)
    (tmp_path / REDOC_JS).write_bytes(b"redoc")
    assets = DocAssets(str(tmp_path))
    scope = {"type": "http", "method": "GET", "headers": [(b"accept-encoding", b"gzip")]}

    async def body() -> bytes:
        response = await assets.get_response("app.js", scope)
        return response.body if hasattr(response, "body") else b""

    first = asyncio.run(body())
    assert gzip.decompress(first) == (tmp_path / "app.js").read_bytes()
    (key,) = assets.gzipped
    etag, _ = assets.gzipped[key]
    assets.gzipped[key] = (etag, b"cached")
    assert asyncio.run(body()) == b"cached"
    (tmp_path / "app.js").write_text("console.log('two');\n" * 60)
    assert gzip.decompress(asyncio.run(body())) == (tmp_path / "app.js").read_bytes()
