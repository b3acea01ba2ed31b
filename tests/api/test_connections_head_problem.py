"""``head_problem`` and ``routable_target`` (``api.connections``) on their own: no sockets."""

from __future__ import annotations

import pytest

from api.connections import head_problem, routable_target

HOST = [(b"host", b"example.com")]


@pytest.mark.parametrize(
    ("version", "headers", "upgrade", "status"),
    [
        ("1.1", HOST, False, None),
        ("1.0", [], False, None),
        ("2.0", HOST, False, 505),
        ("0.9", HOST, False, 505),
        ("1.1", [], False, 400),
        ("1.0", HOST + HOST, False, 400),
        ("1.1", [(b"host", b"[::1]:8080")], False, None),
        ("1.1", [(b"host", b"")], False, None),
        ("1.1", [(b"host", b"a b")], False, 400),
        ("1.1", [(b"host", b"%zz")], False, 400),
        ("1.1", [*HOST, (b"authorization", b"Bearer a")], False, None),
        (
            "1.1",
            [*HOST, (b"authorization", b"Bearer a"), (b"authorization", b"Bearer a")],
            False,
            400,
        ),
        ("1.0", [(b"transfer-encoding", b"chunked")], False, 400),
        ("1.0", [(b"transfer-encoding", b"gzip")], False, 400),
        ("1.1", [*HOST, (b"transfer-encoding", b"gzip, chunked")], False, 501),
        ("1.1", [*HOST, (b"content-length", b"0")], True, None),
        ("1.1", [*HOST, (b"content-length", b"00")], True, None),
        ("1.1", [*HOST, (b"content-length", b"10")], True, 400),
        ("1.1", [*HOST, (b"transfer-encoding", b"chunked")], True, 400),
        ("1.1", [*HOST, (b"content-length", b"10")], False, None),
    ],
)
def test_head_problem(
    version: str, headers: list[tuple[bytes, bytes]], upgrade: bool, status: int | None
) -> None:
    problem = head_problem(version, headers, upgrade)
    assert (problem.status if problem else None) == status


@pytest.mark.parametrize(
    ("url", "routed"),
    [
        (b"/a?b=1", b"/a?b=1"),
        (b"http://h/a?b", b"http://h/a?b"),
        (b"http://h:80", b"/"),
        (b"http://h?x=1", b"/?x=1"),
        (b"*", b"*"),
        (b"h:80", None),
    ],
)
def test_routable_target(url: bytes, routed: bytes | None) -> None:
    assert routable_target(url) == routed
