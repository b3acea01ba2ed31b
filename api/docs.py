"""The documentation pages (``/docs``, ``/redoc``) and the files they load, served by the app.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net (and ReDoc's fonts from
Google): behind a firewall, on a plane or on a machine without internet, both pages stay blank.
Here the bundles come from the ``fastapi-offline`` wheel, pinned like every dependency, and are
served under ``ASSETS_URL``; the pages are FastAPI's own HTML with those URLs. Each page is
rendered once per app, so the bytes served are the bytes ``api.headers`` hashes for the
Content-Security-Policy of its inline script.

The assets answer conditional requests as job results do (``api.jobs.download``): a strong
ETag per content coding (the gzip one with a ``-gzip`` suffix), If-Match / If-Unmodified-Since
412, If-None-Match / If-Modified-Since 304. The gzip coding is chosen here, not by the gzip
middleware (which would send it under the identity's tag), and byte ranges are served on the
identity coding only: a range of the file spliced into a gzip download would corrupt it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from email.utils import formatdate
from importlib.resources import files
from mimetypes import guess_type
from pathlib import Path
from stat import S_ISREG
from typing import Any, Final

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

from api.compression import gzip_accepted

OPENAPI_URL: Final = "/openapi.json"
DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
OAUTH2_REDIRECT_URL: Final = "/docs/oauth2-redirect"
ASSETS_URL: Final = "/docs/assets"
# Swagger UI would otherwise send the spec's URL to validator.swagger.io for a badge.
SWAGGER_UI_PARAMETERS: Final[dict[str, Any]] = {"validatorUrl": None}
# The bundles change only with the pinned wheel; a day in a browser's cache spares a worker
# the 2.8 MB of a reload, and the ETag answers a revalidation with a 304.
ASSETS_CACHE_CONTROL: Final = "public, max-age=86400"
FAVICON: Final = f"{ASSETS_URL}/favicon.png"
REDOC_JS: Final = "redoc.standalone.js"
# ReDoc's sidebar footer shows Redocly's logo from its CDN, which the page's CSP refuses (a
# console error, a broken image), and it has no option to leave it out. An empty src fails at
# once without a request, and ReDoc then drops the image (its onError hides it).
REDOC_LOGO: Final = b'"https://cdn.redoc.ly/redoc/logo-mini.svg"'


def swagger_page(title: str) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{title} - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


def redoc_page(title: str) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=OPENAPI_URL,
        title=f"{title} - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/{REDOC_JS}",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )


def redirect_page() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


class DocAssets(StaticFiles):
    """The bundled files, with a cache lifetime, validators and the gzip coding decided per
    request (the module's docstring); ReDoc's bundle without its CDN logo, from memory."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory=directory)
        # (tests/api/security/test_headers.py checks the URL is gone from what is served.)
        source = Path(directory) / REDOC_JS
        self.redoc = source.read_bytes().replace(REDOC_LOGO, b'""')
        self.redoc_etag = f'"{hashlib.blake2b(self.redoc, digest_size=12).hexdigest()}"'
        self.redoc_modified = int(source.stat().st_mtime)
        self.redoc_gzip: bytes | None = None  # compressed on first use, once per worker
        # Each other file's gzip form, by path, with the ETag of the file it was made from:
        # compressed once per worker, off the event loop (Swagger UI's 1.4 MB bundle took
        # ~80 ms of the loop per request, for anyone, without a token).
        self.gzipped: dict[str, tuple[str, bytes]] = {}

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path != REDOC_JS or scope["method"] not in ("GET", "HEAD"):
            if scope["method"] in ("GET", "HEAD") and gzip_accepted(scope):
                await self._gzip_once(path)
            return await super().get_response(path, scope)
        # Imported here: api.jobs.download imports api.middleware, which imports this module.
        from api.jobs.download import cached_tag, gzip_etag

        request = Request(scope)
        zipped = gzip_accepted(scope)
        headers = {
            "Cache-Control": ASSETS_CACHE_CONTROL,
            "Last-Modified": formatdate(self.redoc_modified, usegmt=True),
        }
        cached = cached_tag(request, self.redoc_etag, zipped, self.redoc_modified)
        if cached is not None:
            return Response(status_code=304, headers={**headers, "ETag": cached})
        if not zipped:
            headers["ETag"] = self.redoc_etag
            return Response(self.redoc, headers=headers, media_type="text/javascript")
        if self.redoc_gzip is None:  # 1 MB: compressed off the event loop, and only once
            self.redoc_gzip = await anyio.to_thread.run_sync(gzip.compress, self.redoc)
        headers |= {"ETag": gzip_etag(self.redoc_etag), "Content-Encoding": "gzip"}
        return Response(self.redoc_gzip, headers=headers, media_type="text/javascript")

    async def _gzip_once(self, path: str) -> None:
        """Fill ``gzipped`` for the file at ``path`` if it is missing or stale."""
        from api.jobs.download import file_etag

        full_path, stat_result = await anyio.to_thread.run_sync(self.lookup_path, path)
        if stat_result is None or not S_ISREG(stat_result.st_mode) or _precompressed(full_path):
            return
        etag = file_etag(stat_result)
        if self.gzipped.get(full_path, ("", b""))[0] != etag:
            data = await anyio.to_thread.run_sync(_gzip_file, full_path)
            self.gzipped[full_path] = (etag, data)

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        from api.jobs.download import (
            GzipFileResponse,
            WholeFileResponse,
            cached_tag,
            file_etag,
            gzip_etag,
            range_verdict,
        )

        request = Request(scope)
        etag, modified = file_etag(stat_result), int(stat_result.st_mtime)
        last_modified = formatdate(stat_result.st_mtime, usegmt=True)
        # A Range is served (206, identity) only when If-Range, if sent, names this coding's
        # validators, and Starlette would answer it (no plain-text 400 or 416): else all of it.
        http_range = request.headers.get("range")
        ranged = (
            http_range is not None
            and request.headers.get("if-range") in (None, etag, last_modified)
            and range_verdict(http_range, stat_result.st_size) == "serve"
        )
        media_type = guess_type(str(full_path))[0] or "application/octet-stream"
        zipped = not ranged and not _precompressed(str(full_path)) and gzip_accepted(scope)
        cached = cached_tag(request, etag, zipped, modified)
        headers = {"Cache-Control": ASSETS_CACHE_CONTROL}
        if cached is not None:
            return Response(status_code=304, headers={**headers, "ETag": cached})
        response_class: type[FileResponse] = WholeFileResponse
        if ranged:
            response_class = FileResponse
        elif zipped:
            # Accept-Ranges: none, so that no client resumes this download with a Range.
            headers |= {"ETag": gzip_etag(etag), "Accept-Ranges": "none"}
            made_from, data = self.gzipped.get(str(full_path), ("", b""))
            if made_from == etag:
                headers |= {"Content-Encoding": "gzip", "Last-Modified": last_modified}
                return Response(data, headers=headers, media_type=media_type)
            response_class = GzipFileResponse  # not cached (changed on disk meanwhile)
        return response_class(full_path, stat_result=stat_result, headers=headers)


def _precompressed(path: str) -> bool:
    """The favicon is a PNG, already compressed (the middleware would not touch it either)."""
    return (guess_type(path)[0] or "").startswith("image/")


def _gzip_file(path: str) -> bytes:
    return gzip.compress(Path(path).read_bytes())


def install_docs(app: FastAPI) -> None:
    """Add the pages and the assets; the app must be built with ``docs_url=None`` and
    ``redoc_url=None`` so that FastAPI does not add its CDN-loading pages."""
    pages = {
        DOCS_URL: swagger_page(app.title),
        REDOC_URL: redoc_page(app.title),
        OAUTH2_REDIRECT_URL: redirect_page(),
    }
    for url, page in pages.items():

        async def serve(request: Request, page: HTMLResponse = page) -> Response:
            return HTMLResponse(page.body)

        app.add_route(url, serve, include_in_schema=False)
    app.mount(ASSETS_URL, DocAssets(directory=str(files("fastapi_offline") / "static")))
