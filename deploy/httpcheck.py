"""Container healthcheck: exit 0 when URL answers 200, else 1 (standard library only).

Used as `python /app/deploy/httpcheck.py URL` so the healthcheck's argv has no spaces: podman's
Docker-compatible API splits a CMD healthcheck's arguments on whitespace.
"""

import sys
import urllib.error
import urllib.request


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/api/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
