"""Security headers carried by every response, and the Content-Security-Policy per page.

The API answers JSON only, so its policy forbids everything (``default-src 'none'``). The
documentation pages are the exception: FastAPI's Swagger UI and ReDoc pages load their
bundles from cdn.jsdelivr.net, and Swagger UI starts from one inline script. Their policy
allows exactly those origins, and the inline scripts by their SHA-256 (computed here from the
same FastAPI functions and arguments the app serves them with; ``tests/api/security`` checks
that the served pages match), never ``'unsafe-inline'`` for scripts. Inline styles are allowed
on those pages only: both UIs set styles at run time.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Final

from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)

OPENAPI_URL: Final = "/openapi.json"
DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
OAUTH2_REDIRECT_URL: Final = "/docs/oauth2-redirect"
# Swagger UI would otherwise send the spec's URL to validator.swagger.io for a badge.
SWAGGER_UI_PARAMETERS: Final[dict[str, Any]] = {"validatorUrl": None}

CDN: Final = "https://cdn.jsdelivr.net"
FAVICON_HOST: Final = "https://fastapi.tiangolo.com"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_LOCKDOWN: Final = "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

API_CSP: Final = f"default-src 'none'; {_LOCKDOWN}"


def script_hashes(html: str) -> list[str]:
    """CSP source expressions for every inline ``<script>`` of a page."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def _scripts(*sources: str, page: str = "") -> str:
    return "script-src " + " ".join([*sources, *script_hashes(page)])


def _page(response: Any) -> str:
    return bytes(response.body).decode()


def docs_policies(title: str) -> dict[str, str]:
    """The CSP of each documentation page, for an app with this title and FastAPI's URLs."""
    swagger = _page(
        get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
    )
    redoc = _page(get_redoc_html(openapi_url=OPENAPI_URL, title=f"{title} - ReDoc"))
    redirect = _page(get_swagger_ui_oauth2_redirect_html())
    return {
        DOCS_URL: (
            f"default-src 'none'; {_scripts(CDN, page=swagger)}; "
            f"style-src {CDN} 'unsafe-inline'; img-src 'self' data: {FAVICON_HOST}; "
            f"connect-src 'self'; {_LOCKDOWN}"
        ),
        REDOC_URL: (
            f"default-src 'none'; {_scripts(CDN, page=redoc)}; "
            "style-src 'unsafe-inline' https://fonts.googleapis.com; "
            "font-src https://fonts.gstatic.com; "
            f"img-src 'self' data: {FAVICON_HOST} https://cdn.redoc.ly; "
            f"connect-src 'self'; worker-src blob:; {_LOCKDOWN}"
        ),
        OAUTH2_REDIRECT_URL: f"default-src 'none'; {_scripts(page=redirect)}; {_LOCKDOWN}",
    }


HSTS_MAX_AGE: Final = 2 * 365 * 86_400


class SecurityHeaders:
    """Precomputed header sets: one for the API, one per documentation page."""

    def __init__(self, title: str = "memdb-service", hsts_max_age: int = HSTS_MAX_AGE) -> None:
        common = {
            "Strict-Transport-Security": f"max-age={hsts_max_age}; includeSubDomains",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Resource-Policy": "same-origin",
            "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
        }
        self.default: dict[str, str] = {**common, "Content-Security-Policy": API_CSP}
        self.by_path: dict[str, dict[str, str]] = {
            path: {**common, "Content-Security-Policy": csp}
            for path, csp in docs_policies(title).items()
        }

    def for_path(self, path: str) -> dict[str, str]:
        return self.by_path.get(path, self.default)


# The page titles are not part of the inline scripts, so one instance serves every app.
SECURITY_HEADERS: Final = SecurityHeaders()


def security_headers_for(path: str) -> dict[str, str]:
    """The security headers of a response to ``path`` (also used by the 500 handler)."""
    return SECURITY_HEADERS.for_path(path)
