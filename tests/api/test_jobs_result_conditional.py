"""``GET /jobs/{id}/result`` in-process: the validators of each content coding and the
conditional headers (RFC 9110 §13), evaluated in §13.2.2's order before Range.

The job store is a stub where every job is a finished export; the result files are real (in
``tmp_path``), and the app's whole middleware stack (gzip included) answers.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import FileResponse

from api.auth.principals import Principal
from api.deps import get_caller
from api.jobs import download
from api.jobs.web import get_jobs
from api.main import create_app
from api.settings import Settings
from tests.support.factories import assert_error
from tests.support.inprocess import in_process

URL = "/api/v1/jobs/job-1/result"
BODY = b"".join(b'{"id": "%05d", "name": "row %d"}\n' % (i, i) for i in range(200))
GZIP = {"Accept-Encoding": "gzip"}
NDJSON = "application/x-ndjson"
IDENTITY = {"Accept-Encoding": "identity"}
PAST = "Sat, 01 Jan 2000 00:00:00 GMT"
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"


class Jobs:
    """The part of the job store the route reads: succeeded exports, one per file given."""

    async def get(self, job_id: str) -> dict[str, Any]:
        result = {"file": f"{job_id}.ndjson", "format": "ndjson", "media_type": NDJSON}
        return {"id": job_id, "state": "succeeded", "params": {"table": "t"}, "result": result}


def results_app(folder: Path, files: dict[str, bytes], **settings: Any) -> FastAPI:
    """The real app whose job ``<name>`` is a finished export of ``files[name]``."""
    folder.mkdir()
    for name, body in files.items():
        (folder / f"{name}.ndjson").write_bytes(body)
    app = create_app(Settings(job_result_dir=str(folder), **settings))
    app.dependency_overrides[get_caller] = lambda: Principal(id="a", role="admin", session_id="s")
    app.dependency_overrides[get_jobs] = lambda: SimpleNamespace(jobs=Jobs())
    return app


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return results_app(tmp_path / "jobs", {"job-1": BODY, "small": BODY[:100]})


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app) as client:
        yield client


async def validators(http: httpx.AsyncClient) -> tuple[str, str, str]:
    """The identity ETag, the gzip ETag and Last-Modified, as plain GETs send them."""
    identity = await http.get(URL, headers=IDENTITY)
    zipped = await http.get(URL, headers=GZIP)
    assert identity.status_code == zipped.status_code == 200
    return identity.headers["etag"], zipped.headers["etag"], identity.headers["last-modified"]


def assert_not_modified(response: httpx.Response, etag: str) -> None:
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert "Accept-Encoding" in response.headers["vary"]
    assert response.headers["cache-control"] == "private, no-cache"
    assert "content-encoding" not in response.headers


def assert_whole(response: httpx.Response, etag: str, coding: str | None) -> None:
    assert response.status_code == 200, response.text
    assert response.content == BODY  # httpx undoes the gzip coding
    assert response.headers["etag"] == etag
    assert response.headers.get("content-encoding") == coding


async def test_each_content_coding_has_its_own_strong_etag(http: httpx.AsyncClient) -> None:
    """RFC 9110 §8.8.3: a strong validator differs between the gzip and identity bytes."""
    identity = await http.get(URL, headers=IDENTITY)
    zipped = await http.get(URL, headers=GZIP)
    etag = identity.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong: If-Range can use it
    assert_whole(identity, etag, None)
    assert identity.headers["content-length"] == str(len(BODY))
    assert_whole(zipped, etag[:-1] + '-gzip"', "gzip")
    assert int(zipped.headers["content-length"]) < len(BODY)
    assert "Accept-Encoding" in zipped.headers["vary"]
    assert identity.headers["last-modified"] == zipped.headers["last-modified"]


@pytest.mark.parametrize(
    ("accept", "sent", "expected"),
    [
        (IDENTITY, "identity", "identity"),
        (IDENTITY, "weak identity", "identity"),  # If-None-Match compares weakly
        (GZIP, "gzip", "gzip"),
        (GZIP, "weak gzip", "gzip"),
        # A cache may name every stored response (RFC 9111 §4.3.1): the 304 says which.
        (GZIP, "identity", "identity"),
        (GZIP, "stale, gzip", "gzip"),
        (GZIP, "identity, gzip", "gzip"),  # the one this request would get, preferably
        (IDENTITY, "*", "identity"),
        (GZIP, "*", "gzip"),
    ],
)
async def test_if_none_match_hit_is_304(
    http: httpx.AsyncClient, accept: dict[str, str], sent: str, expected: str
) -> None:
    identity, zipped, _ = await validators(http)
    tags = {"identity": identity, "gzip": zipped, "stale": '"stale"', "*": "*"}
    tags |= {"weak identity": "W/" + identity, "weak gzip": "W/" + zipped}
    header = ", ".join(tags[name] for name in sent.split(", "))
    response = await http.get(URL, headers={**accept, "If-None-Match": header})
    assert_not_modified(response, tags[expected])


async def test_if_none_match_on_several_lines_is_one_list(http: httpx.AsyncClient) -> None:
    identity, _, _ = await validators(http)
    lines = [("Accept-Encoding", "identity"), ("If-None-Match", '"a"'), ("If-None-Match", identity)]
    assert_not_modified(await http.get(URL, headers=lines), identity)


async def test_if_none_match_miss_is_the_whole_file(http: httpx.AsyncClient) -> None:
    identity, zipped, _ = await validators(http)
    stale = await http.get(URL, headers={**GZIP, "If-None-Match": '"stale", W/"x"'})
    assert_whole(stale, zipped, "gzip")
    # The gzip tag does not stand for the identity bytes a request without gzip gets.
    other = await http.get(URL, headers={**IDENTITY, "If-None-Match": zipped})
    assert_whole(other, identity, None)


async def test_if_modified_since(http: httpx.AsyncClient) -> None:
    identity, zipped, modified = await validators(http)
    for date in (modified, FUTURE):
        assert_not_modified(
            await http.get(URL, headers={**GZIP, "If-Modified-Since": date}), zipped
        )
    for date in (PAST, "not a date"):
        response = await http.get(URL, headers={**IDENTITY, "If-Modified-Since": date})
        assert_whole(response, identity, None)
    # Ignored when If-None-Match is present (RFC 9110 §13.2.2): a miss there is the file.
    both = {**IDENTITY, "If-Modified-Since": modified, "If-None-Match": '"zzz"'}
    assert_whole(await http.get(URL, headers=both), identity, None)


@pytest.mark.parametrize("sent", ['"nope"', "weak identity", 'W/"x", "y"', "garbage"])
async def test_if_match_miss_is_412(http: httpx.AsyncClient, sent: str) -> None:
    identity, zipped, _ = await validators(http)
    header = "W/" + identity if sent == "weak identity" else sent  # strong comparison
    response = await http.get(URL, headers={**GZIP, "If-Match": header})
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert response.headers["etag"] == zipped


@pytest.mark.parametrize(
    ("accept", "sent"),
    [
        (IDENTITY, "identity"),
        (GZIP, "gzip"),
        (GZIP, "identity"),
        (IDENTITY, "gzip"),
        (GZIP, "*"),
        (IDENTITY, '"a", identity'),
    ],
)
async def test_if_match_hit_serves_the_file(
    http: httpx.AsyncClient, accept: dict[str, str], sent: str
) -> None:
    """Either coding's tag says the file is unchanged: the request is served as usual."""
    identity, zipped, _ = await validators(http)
    header = sent.replace("identity", identity).replace("gzip", zipped)
    response = await http.get(URL, headers={**accept, "If-Match": header})
    expected = (zipped, "gzip") if accept is GZIP else (identity, None)
    assert_whole(response, *expected)


async def test_if_unmodified_since(http: httpx.AsyncClient) -> None:
    identity, _, modified = await validators(http)
    response = await http.get(URL, headers={**IDENTITY, "If-Unmodified-Since": PAST})
    assert_error(response, 412, "PRECONDITION_FAILED")
    for date in (modified, FUTURE, "not a date"):
        response = await http.get(URL, headers={**IDENTITY, "If-Unmodified-Since": date})
        assert_whole(response, identity, None)
    # Ignored when If-Match is present (RFC 9110 §13.2.2).
    both = {**IDENTITY, "If-Unmodified-Since": PAST, "If-Match": identity}
    assert_whole(await http.get(URL, headers=both), identity, None)


async def test_ranges_are_of_the_identity_bytes(http: httpx.AsyncClient) -> None:
    """A range is never gzipped and carries the identity tag, which If-Range compares
    strongly; a stale or weak If-Range, or the gzip tag, is the whole file in the coding the
    request accepts, with that coding's tag."""
    identity, zipped, modified = await validators(http)
    for if_range in (None, identity, modified):
        headers = {**GZIP, "Range": "bytes=0-9"} | ({"If-Range": if_range} if if_range else {})
        part = await http.get(URL, headers=headers)
        assert (part.status_code, part.content) == (206, BODY[:10]), if_range
        assert part.headers["etag"] == identity
        assert "content-encoding" not in part.headers
        assert "Accept-Encoding" in part.headers["vary"]
    for if_range in (zipped, "W/" + identity, '"old"', PAST):
        headers = {**GZIP, "Range": "bytes=0-9", "If-Range": if_range}
        assert_whole(await http.get(URL, headers=headers), zipped, "gzip")


async def test_preconditions_come_before_range(http: httpx.AsyncClient) -> None:
    identity, _, _ = await validators(http)
    size = len(BODY)
    unsatisfiable = {**GZIP, "Range": f"bytes={size}-"}
    response = await http.get(URL, headers={**unsatisfiable, "If-Match": '"nope"'})
    assert_error(response, 412, "PRECONDITION_FAILED")
    response = await http.get(URL, headers={**unsatisfiable, "If-None-Match": identity})
    assert_not_modified(response, identity)
    # An If-Range that holds lets the range be judged: none starts in the file, 416.
    response = await http.get(URL, headers={**unsatisfiable, "If-Range": identity})
    assert_error(response, 416, "RANGE_NOT_SATISFIABLE")
    assert response.headers["content-range"] == f"bytes */{size}"


async def test_a_gzipped_download_is_the_file(http: httpx.AsyncClient) -> None:
    """The gzip coding is applied once (by the route, not again by the middleware)."""
    response = await http.get(URL, headers=GZIP)
    assert gzip.decompress(await raw_body(http, GZIP)) == BODY
    assert response.headers["content-encoding"] == "gzip"


async def raw_body(http: httpx.AsyncClient, headers: dict[str, str]) -> bytes:
    async with http.stream("GET", URL, headers=headers) as response:
        return b"".join([chunk async for chunk in response.aiter_raw()])


async def test_a_result_under_gzip_min_bytes_is_not_gzipped(http: httpx.AsyncClient) -> None:
    """As every response under GZIP_MIN_BYTES (1024): sent as it is, with the identity tag."""
    url = "/api/v1/jobs/small/result"
    plain = await http.get(url, headers=IDENTITY)
    response = await http.get(url, headers=GZIP)
    assert (response.status_code, response.content) == (200, BODY[:100])
    assert "content-encoding" not in response.headers
    assert response.headers["etag"] == plain.headers["etag"]
    again = await http.get(url, headers={**GZIP, "If-None-Match": plain.headers["etag"]})
    assert_not_modified(again, plain.headers["etag"])


async def test_a_streamed_result_is_gzipped_under_its_own_tag(tmp_path: Path) -> None:
    """A file of several 64 KiB chunks is streamed, which the middleware gzips whatever
    GZIP_MIN_BYTES says: the route gzips it itself, so its tag always names the coding."""
    big = BODY * 20  # about 140 KB: three chunks
    app = results_app(tmp_path / "jobs", {"big": big}, gzip_min_bytes=1024 * 1024)
    url = "/api/v1/jobs/big/result"
    async with in_process(app) as http:
        plain = await http.get(url, headers=IDENTITY)
        response = await http.get(url, headers=GZIP)
    assert (plain.content, plain.headers.get("content-encoding")) == (big, None)
    assert (response.content, response.headers["content-encoding"]) == (big, "gzip")
    assert response.headers["etag"] == plain.headers["etag"][:-1] + '-gzip"'


async def test_a_head_of_a_gzipped_result_says_so_without_compressing_it(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: a HEAD of a 10 MB result took as long as its GET, the file compressed for
    nothing. It sends the GET's headers (but the length, known only once compressed)."""
    got = await http.get(URL, headers=GZIP)

    def no_compression(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a HEAD compressed the file")

    monkeypatch.setattr(download, "GZipResponder", no_compression)
    head = await http.head(URL, headers=GZIP)
    assert head.status_code == 200 and head.content == b""
    same = ("etag", "content-encoding", "content-type", "content-disposition", "last-modified")
    assert {k: head.headers.get(k) for k in same} == {k: got.headers.get(k) for k in same}
    assert head.headers["vary"] == got.headers["vary"] and "content-length" not in head.headers


@pytest.mark.parametrize("headers", [IDENTITY, GZIP, {**IDENTITY, "Range": "bytes=0-9"}])
async def test_a_result_deleted_after_the_route_read_it_is_a_404_not_a_cut_off_200(
    http: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headers: Any
) -> None:
    """QA: a sweep deleting the file between the route's stat and the response's open sent
    200 with Content-Length and ETag, then no body."""
    real = download.result_stat

    def stat_then_sweep(path: Path) -> Any:
        stat = real(path)
        path.unlink()
        return stat

    monkeypatch.setattr(download, "result_stat", stat_then_sweep)
    response = await http.get(URL, headers=headers)
    assert_error(response, 404, "NOT_FOUND")


@pytest.mark.parametrize("headers", [IDENTITY, GZIP, {**IDENTITY, "Range": "bytes=0-9"}])
async def test_a_result_deleted_once_opened_is_sent_whole(
    http: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headers: Any
) -> None:
    real = FileResponse.__call__

    async def sweep_then_send(self: FileResponse, scope: Any, receive: Any, send: Any) -> None:
        (tmp_path / "jobs" / "job-1.ndjson").unlink(missing_ok=True)
        await real(self, scope, receive, send)

    monkeypatch.setattr(FileResponse, "__call__", sweep_then_send)
    response = await http.get(URL, headers=headers)
    assert response.status_code == (206 if "Range" in headers else 200), response.text
    assert response.content == (BODY[:10] if "Range" in headers else BODY)
