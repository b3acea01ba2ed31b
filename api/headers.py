"""Security headers carried by every response, and the Content-Security-Policy per page.

The API answers JSON only, so its policy forbids everything (``default-src 'none'``). The
documentation pages are the exception: they load the Swagger UI and ReDoc bundles the app
serves itself (``api.docs``), and Swagger UI starts from one inline script. Their policy allows
exactly that: the app's own origin, and the inline script by its SHA-256 (computed here from the
page ``api.docs`` serves; ``tests/api/security`` checks that the served pages match), never
``'unsafe-inline'`` for scripts. Inline styles are allowed on those pages only: both UIs set
styles at run time.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final

from api.docs import (
    DOCS_URL,
    OAUTH2_REDIRECT_URL,
    REDOC_URL,
    redirect_page,
    redoc_page,
    swagger_page,
)

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
SELF: Final = "'self'"
_LOCKDOWN: Final = "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

API_CSP: Final = f"default-src 'none'; {_LOCKDOWN}"


def script_hashes(html: str) -> list[str]:
    """CSP source expressions for every inline ``<script>`` of a page."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def _scripts(*sources: str, page: bytes = b"") -> str:
    return "script-src " + " ".join([*sources, *script_hashes(page.decode())])


def docs_policies(title: str) -> dict[str, str]:
    """The CSP of each documentation page of an app with this title."""
    swagger, redoc = bytes(swagger_page(title).body), bytes(redoc_page(title).body)
    redirect = bytes(redirect_page().body)
    # ReDoc renders its search index in a worker started from a blob: URL.
    return {
        DOCS_URL: (
            f"default-src 'none'; {_scripts(SELF, page=swagger)}; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            f"connect-src 'self'; {_LOCKDOWN}"
        ),
        REDOC_URL: (
            f"default-src 'none'; {_scripts(SELF, page=redoc)}; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
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
