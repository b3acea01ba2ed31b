"""api.forms: a urlencoded body's fields read as UTF-8, raw or escaped (WHATWG)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import starlette.requests
from starlette.datastructures import Headers

from api import forms


async def parsed(body: bytes) -> list[tuple[str, str]]:
    async def stream() -> AsyncIterator[bytes]:
        yield body[:7]  # fields split across chunks, as a socket delivers them
        yield body[7:]

    form = await forms.Utf8FormParser(Headers(), stream()).parse()
    return [(k, str(v)) for k, v in form.multi_items()]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("pässwörd=ä b".encode(), [("pässwörd", "ä b")]),
        (b"p=%C3%A4+b&q=x", [("p", "ä b"), ("q", "x")]),
        ("p=%C3%A4ö%E2%82%AC€".encode(), [("p", "äö€€")]),  # raw and escaped in one value
        (b"p=%C3", [("p", "\ufffd")]),  # invalid UTF-8, escaped or raw: U+FFFD as before
        (b"p=\xc3&q=\xff", [("p", "\ufffd"), ("q", "\ufffd")]),
        (b"p=%25C3", [("p", "%C3")]),  # an escaped % stays one
    ],
)
async def test_fields_read_as_utf8_raw_or_escaped(body: bytes, expected: list[tuple[str, str]]):
    assert await parsed(body) == expected


def test_install_makes_request_form_use_it() -> None:
    forms.install()
    assert starlette.requests.FormParser is forms.Utf8FormParser
