"""``make load``'s command line: the target must be an http(s) URL (an exported ``HOST=0.0.0.0``
for ``make run`` used to become a target every request failed against)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtests import load
from tests.support.stack import ROOT


@pytest.mark.parametrize("host", ["0.0.0.0", "localhost:8000", "ftp://example.com", "http://"])
def test_a_target_that_is_not_a_url_exits_2(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load.parse(["--host", host])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --host: the target must be an http(s) URL" in err
    assert repr(host) in err


@pytest.mark.parametrize(
    ("host", "hint"),
    [
        ("127.0.0.1:8151", "add the scheme: http://127.0.0.1:8151"),
        ("localhost:8000", "add the scheme: http://localhost:8000"),
        ("0.0.0.0", "unset a HOST meant for make run"),
    ],
)
def test_the_refusal_hints_at_the_likely_mistake(
    host: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        load.parse(["--host", host])
    assert hint in capsys.readouterr().err


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("", ""),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://api.example.com/", "https://api.example.com"),
    ],
)
def test_urls_and_no_target_are_accepted(host: str, target: str) -> None:
    assert load.parse(["--host", host]).host == target


def test_make_load_refuses_an_exported_bare_host() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.load", "--host", "0.0.0.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unset a HOST meant for make run" in done.stderr


def test_summary_lists_unmeasured_routes_and_the_run_id() -> None:
    out = {
        "target": {"host": "http://h:1", "local": False},
        "users": 5,
        "spawn_rate": 5,
        "run_time": "20s",
        "rate_limit": "the target's own",
        "verdict": {
            "passed": False,
            "problems": ["joins (Reporter) never ran, its thresholds were not checked"],
            "unmeasured_routes": ["GET /join/users/orders/user_id"],
            "routes": {},
            "total": {},
            "run_id": "abc123",
        },
    }
    text = "\n".join(load.summary_lines(out))
    assert "gated routes without a request: GET /join/users/orders/user_id" in text
    assert "thresholds FAILED: joins (Reporter) never ran" in text
    assert "run id abc123" in text
