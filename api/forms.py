"""URL-encoded form bodies read as UTF-8, whether their non-ASCII text is escaped or raw.

Starlette's ``FormParser`` decodes a urlencoded body as Latin-1 before it unescapes it, so
``%C3%A4`` is "ä" but the same two bytes sent raw (as ``curl -d`` sends them) are "Ã¤": the
right non-ASCII password or email was a 401 (QA; fastapi#2433). WHATWG's parser, which
browsers follow, reads both as UTF-8. Escaping the raw bytes ≥ 0x80 before Starlette reads a
field makes both spellings the same percent-escapes, which it decodes as UTF-8 (invalid
UTF-8 becomes U+FFFD either way, as before for escapes).
"""

from __future__ import annotations

import re

import starlette.requests
from starlette.formparsers import FormParser

_HIGH_BYTE = re.compile(rb"[\x80-\xff]")


def _escaped(raw: bytearray) -> bytearray:
    return bytearray(_HIGH_BYTE.sub(lambda m: b"%%%02X" % m[0][0], raw))


class Utf8FormParser(FormParser):
    def on_field_end(self) -> None:
        self._field_name = _escaped(self._field_name)
        self._field_value = _escaped(self._field_value)
        super().on_field_end()


def install() -> None:
    """``Request.form()`` uses ``starlette.requests.FormParser``: ours from now on."""
    starlette.requests.FormParser = Utf8FormParser  # type: ignore[misc]
