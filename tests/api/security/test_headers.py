"""Security headers on every response, the documentation's CSP, caching of auth responses,
and CORS (the shared stack allows https://app.example.com)."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from api.auth.principals import Principal
from api.deps import get_caller, get_store
from api.main import create_app
from api.settings import Settings
from tests.conftest import CORS_ORIGIN
from tests.support.factories import assert_error
from tests.support.inprocess import in_process

pytestmark = pytest.mark.integration
SECURITY = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def assert_security_headers(response: httpx.Response, csp: str | None = API_CSP) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (name, response.request.url)
    if csp is not None:
        assert response.headers["content-security-policy"] == csp
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/api/v1/users/me", {}, 200),
        ("GET", "/api/v1/health", {}, 200),
        ("GET", "/openapi.json", {}, 200),
        ("GET", "/api/v1/nope", {}, 404),
        ("GET", "/nope", {}, 404),
        ("DELETE", "/api/v1/health", {}, 405),
        ("GET", "/api/v1/users", {"params": {"per_page": 0}}, 422),
        (
            "POST",
            "/api/v1/users",
            {"content": b"x", "headers": {"Content-Type": "text/plain"}},
            415,
        ),
        ("POST", "/api/v1/data/t", {"content": b"{" * (2**20 + 1)}, 413),
        ("GET", "/api/v1/users/me", {"headers": {"Authorization": "Bearer x"}}, 401),
    ],
)
def test_every_response_carries_the_security_headers(
    client: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert_security_headers(response)


async def test_a_500_carries_them_too() -> None:
    class Broken:
        async def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
            raise RuntimeError("boom")

    app: FastAPI = create_app(Settings())
    app.dependency_overrides[get_store] = lambda: Broken()
    app.dependency_overrides[get_caller] = lambda: Principal("a", "admin", "s")
    async with in_process(app) as http:
        response = await http.get("/api/v1/data/things/x")
    assert response.status_code == 500
    assert_security_headers(response)
    assert "boom" not in response.text


@pytest.mark.parametrize(
    ("origin", "readable"), [(CORS_ORIGIN, True), ("https://evil.example", False)]
)
async def test_an_allowed_origin_can_read_a_500(origin: str, readable: bool) -> None:
    """QA: the 500 handler runs outside the CORS middleware, so a browser app from an allowed
    origin saw "Failed to fetch", not the envelope and its request id."""

    class Broken:
        async def call(self, command: str, args: dict[str, Any] | None = None) -> Any:
            raise RuntimeError("boom")

    app: FastAPI = create_app(Settings(cors_origins=[CORS_ORIGIN]))  # type: ignore[arg-type]
    app.dependency_overrides[get_store] = lambda: Broken()
    app.dependency_overrides[get_caller] = lambda: Principal("a", "admin", "s")
    async with in_process(app) as http:
        response = await http.get("/api/v1/data/things/x", headers={"Origin": origin})
    assert_error(response, 500, "INTERNAL_ERROR")
    assert ("access-control-allow-origin" in response.headers) is readable
    if readable:
        assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
        assert "Origin" in response.headers["vary"]


def inline_script_hashes(html: str) -> set[str]:
    return {
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    }


def directives(csp: str) -> dict[str, list[str]]:
    parsed = {}
    for part in csp.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_render_offline_under_a_csp_that_allows_exactly_what_they_load(
    anon: httpx.Client, path: str
) -> None:
    response = anon.get(path)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert_security_headers(response, csp=None)
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    scripts = policy["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    # Every inline script of the page is allowed by its hash, and nothing else inline is.
    hashes = inline_script_hashes(response.text)
    assert hashes == {s for s in scripts if s.startswith("'sha256-")}
    # Nothing comes from another host (the pages work without internet), and every script,
    # stylesheet and icon the page loads is served here, allowed by the policy as 'self'.
    assert not re.search(r"https?://", response.text), "the page loads something from outside"
    for tag, attr, directive in (
        ("script", "src", "script-src"),
        ("link", "href", "style-src"),
        ("link", "href", "img-src"),
    ):
        for url in re.findall(rf'<{tag}[^>]*\b{attr}="([^"]+)"', response.text):
            is_css = url.endswith(".css")
            if tag == "link" and is_css != (directive == "style-src"):
                continue
            assert not urlsplit(url).netloc and url.startswith("/"), url
            assert "'self'" in policy[directive], (url, policy[directive])
            asset = anon.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100
    # Swagger UI does not send the spec's address to an outside validator.
    assert "validator.swagger.io" not in response.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("redoc.standalone.js", "javascript"),
        ("favicon.png", "image/png"),
    ],
)
def test_doc_assets_are_cached_revalidated_and_not_rate_limited(
    anon: httpx.Client, name: str, media_type: str
) -> None:
    response = anon.get(f"/docs/assets/{name}")
    assert response.status_code == 200 and media_type in response.headers["content-type"]
    assert response.headers["cache-control"] == "public, max-age=86400"
    assert "x-rate-limit-limit" not in response.headers
    assert_security_headers(response)
    again = anon.get(f"/docs/assets/{name}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_redoc_loads_no_logo_from_its_cdn(anon: httpx.Client) -> None:
    """ReDoc's footer logo came from cdn.redoc.ly, which the page's CSP refuses (a console
    error, a broken image): the bundle is served without that URL, and still whole."""
    bundle = anon.get("/docs/assets/redoc.standalone.js")
    assert bundle.status_code == 200 and len(bundle.content) > 1_000_000
    assert "cdn.redoc.ly" not in bundle.text
    assert 'logo",onError:()=>t(!1),src:""' in bundle.text  # fails at once: ReDoc hides it


def test_an_unknown_doc_asset_is_a_404_in_the_envelope(anon: httpx.Client) -> None:
    for path in ("/docs/assets/nope.js", "/docs/assets/../../api/settings.py"):
        assert_error(anon.get(path), 404)


def test_auth_responses_are_never_cached(anon: httpx.Client) -> None:
    for response in (
        anon.post("/api/v1/auth/token", data={"username": "a@example.com", "password": "b" * 8}),
        anon.post("/api/v1/auth/refresh", json={"refresh_token": "nope"}),
        anon.post("/api/v1/auth/logout"),
        anon.get("/api/v1/users/me"),
    ):
        assert response.status_code == 401
        assert response.headers["cache-control"] == "no-store"


# --- CORS ---------------------------------------------------------------------------------


def preflight(
    http: httpx.Client,
    origin: str,
    method: str = "POST",
    headers: str = "authorization, content-type",
    path: str = "/api/v1/users",
) -> httpx.Response:
    return http.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def test_cors_preflight_from_the_configured_origin_is_allowed(anon: httpx.Client) -> None:
    response = preflight(anon, CORS_ORIGIN)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert_security_headers(response)


@pytest.mark.parametrize(
    "origin", ["https://evil.example.com", "null", "https://app.example.com.evil.net"]
)
def test_cors_preflight_from_another_origin_is_refused(anon: httpx.Client, origin: str) -> None:
    response = preflight(anon, origin)
    assert_error(response, 400, "CORS_REJECTED")
    assert "access-control-allow-origin" not in response.headers
    assert_security_headers(response)


def test_a_preflight_for_an_authorised_head_is_allowed(anon: httpx.Client) -> None:
    """QA: every GET answers HEAD, but a browser's preflight for a HEAD with a bearer token
    (checking an ETag) was refused: HEAD was not among the allowed methods."""
    response = preflight(anon, CORS_ORIGIN, "HEAD", "authorization", "/api/v1/users/me")
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == CORS_ORIGIN
    assert "HEAD" in response.headers["access-control-allow-methods"].split(", ")


def test_cors_for_browser_clients_as_they_are_written(anon: httpx.Client) -> None:
    """What common front-end set-ups send and read: X-Requested-With and Cache-Control in a
    preflight, credentials mode (cookies carry nothing here, but a blocked answer would),
    and Allow / WWW-Authenticate / Content-Disposition readable by the script."""
    requested = "authorization, x-requested-with, cache-control"
    response = preflight(anon, CORS_ORIGIN, "PATCH", requested)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-credentials"] == "true"
    answer = anon.post("/api/v1/users/me", headers={"Origin": CORS_ORIGIN})  # a 405
    assert answer.headers["access-control-allow-credentials"] == "true"
    exposed = {
        h.strip() for h in answer.headers["access-control-expose-headers"].lower().split(",")
    }
    assert {"allow", "www-authenticate", "content-disposition", "etag"} <= exposed


def test_a_refused_preflight_names_the_headers_it_refused(anon: httpx.Client) -> None:
    response = anon.options(
        "/api/v1/users",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, x-custom-thing",
        },
    )
    error = assert_error(response, 400, "CORS_REJECTED")
    refused, allowed = error["message"].split("(")[1].rstrip(")").split("; allowed: ")
    assert refused == "x-custom-thing"
    assert {"authorization", "if-match", "x-requested-with"} <= set(allowed.split(", "))


def test_cors_simple_requests(anon: httpx.Client) -> None:
    allowed = anon.get("/api/v1/health", headers={"Origin": CORS_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == CORS_ORIGIN
    exposed = allowed.headers["access-control-expose-headers"].lower()
    assert "x-rate-limit-remaining" in exposed and "x-request-id" in exposed
    refused = anon.get("/api/v1/health", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in refused.headers
