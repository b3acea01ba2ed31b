"""``api.compression.with_vary``: names added to Vary once, whatever was there."""

from __future__ import annotations

import pytest

from api.compression import with_vary

NAMES = (b"Accept-Encoding", b"Authorization")


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([], b"Accept-Encoding, Authorization"),
        ([b"Origin"], b"Origin, Accept-Encoding, Authorization"),
        ([b"accept-encoding"], b"accept-encoding, Authorization"),  # Starlette's, any case
        ([b"Accept-Encoding, Origin", b"Authorization"], b"Accept-Encoding, Origin, Authorization"),
        ([b" Origin ,, "], b"Origin, Accept-Encoding, Authorization"),
        ([b"*"], b"*"),  # varies on everything already
    ],
)
def test_vary_names_are_added_once_on_one_line(before: list[bytes], after: bytes) -> None:
    raw = [(b"content-type", b"application/json"), *((b"vary", line) for line in before)]
    merged = with_vary(raw, NAMES)
    assert merged == [(b"content-type", b"application/json"), (b"vary", after)]
