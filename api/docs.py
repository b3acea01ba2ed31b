"""The documentation pages (``/docs``, ``/redoc``) and the files they load, served by the app.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net (and ReDoc's fonts from
Google): behind a firewall, on a plane or on a machine without internet, both pages stay blank.
Here the bundles come from the ``fastapi-offline`` wheel, pinned like every dependency, and are
served under ``ASSETS_URL``; the pages are FastAPI's own HTML with those URLs. Each page is
rendered once per app, so the bytes served are the bytes ``api.headers`` hashes for the
Content-Security-Policy of its inline script.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from api.etags import none_match_hits

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
    """The bundled files, with a cache lifetime (StaticFiles sends ETag and Last-Modified);
    ReDoc's bundle without its CDN logo, from memory."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory=directory)
        # (tests/api/security/test_headers.py checks the URL is gone from what is served.)
        self.redoc = (Path(directory) / REDOC_JS).read_bytes().replace(REDOC_LOGO, b'""')
        self.redoc_etag = f'"{hashlib.blake2b(self.redoc, digest_size=12).hexdigest()}"'

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path != REDOC_JS or scope["method"] not in ("GET", "HEAD"):
            return await super().get_response(path, scope)
        headers = {"ETag": self.redoc_etag, "Cache-Control": ASSETS_CACHE_CONTROL}
        if none_match_hits(Headers(scope=scope).get("if-none-match"), self.redoc_etag):
            return Response(status_code=304, headers=headers)
        return Response(self.redoc, headers=headers, media_type="text/javascript")

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = ASSETS_CACHE_CONTROL
        return response


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
