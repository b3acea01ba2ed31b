"""The documentation pages (``/docs``, ``/redoc``) and the files they load, served by the app.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net (and ReDoc's fonts from
Google): behind a firewall, on a plane or on a machine without internet, both pages stay blank.
Here the bundles come from the ``fastapi-offline`` wheel, pinned like every dependency, and are
served under ``ASSETS_URL``; the pages are FastAPI's own HTML with those URLs. Each page is
rendered once per app, so the bytes served are the bytes ``api.headers`` hashes for the
Content-Security-Policy of its inline script.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

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
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )


def redirect_page() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


class DocAssets(StaticFiles):
    """The bundled files, with a cache lifetime (StaticFiles sends ETag and Last-Modified)."""

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
