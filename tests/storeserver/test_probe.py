"""``python -m storeserver.probe``: exit 0 when ready, else 1 with the reason on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import storeserver.probe


def probe(address: str, secret: str | None = None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STORE_SECRET"}
    if secret is not None:
        env["STORE_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "storeserver.probe", "--address", address, *args],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def reason(done: subprocess.CompletedProcess) -> str:
    (line,) = done.stderr.splitlines()  # one line, no traceback
    failure = json.loads(line)
    assert failure["error"] == "STORE_NOT_READY"
    return failure["message"]


def test_a_ready_store_exits_zero_silently(store_process):
    done = probe(store_process().address)
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.parametrize("wait", [[], ["--wait", "0.3"]])
def test_no_store_there_says_it_cannot_connect(sock_dir, wait):
    done = probe(f"unix:{sock_dir / 'none.sock'}", None, *wait)
    assert done.returncode == 1
    assert "cannot connect to" in reason(done) and "No such file" in reason(done)


@pytest.mark.parametrize("secret", [None, "not-the-secret"])
def test_a_missing_or_wrong_secret_says_authentication_failed(store_process, secret):
    store = store_process(STORE_SECRET="s" * 32)
    done = probe(store.address, secret)
    assert done.returncode == 1
    assert "refused the probe: authentication failed" in reason(done)
    assert probe(store.address, "s" * 32).returncode == 0


def test_a_bad_address_is_named(sock_dir):
    done = probe("localhost:notaport")
    assert done.returncode == 1 and "not a store address" in reason(done)


def test_a_store_still_loading_is_named_as_not_ready(monkeypatch, capsys):
    monkeypatch.setattr(storeserver.probe, "check", lambda *a, **k: {"pong": True, "ready": False})
    assert storeserver.probe.main(["--address", "unix:/nowhere.sock"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "is not ready (loading its data, or stopping)" in json.loads(line)["message"]
