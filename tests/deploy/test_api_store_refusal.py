"""The API role against a store that refuses its tables (a setting of the store too low for
them): one ``api_failed_to_start`` line naming the cause, last, and exit 2, which `make run`
stops on at once, instead of each worker retrying for STORE_WAIT_SECONDS, failing "store not
ready", and gunicorn's exit 3 restarted every ~35 s, too slowly for the crash-loop rule.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.test_supervisord import failed_make_run
from tests.support.stack import ROOT, free_port
from tests.support.store import StoreProcess, short_tmp_dir

pytestmark = pytest.mark.integration

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_api(sock_dir: Path, **store_settings: str) -> tuple[int, list[dict]]:
    """A store with ``store_settings``, then the entrypoint's api role (2 workers) against
    it: the api's exit code and its lines."""
    store = StoreProcess(sock_dir / "s.sock", env=store_settings).start()
    try:
        env = {
            **os.environ,
            "STORE_SOCKET": str(store.socket_path),
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "WEB_CONCURRENCY": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(sock_dir / "prometheus"),
            "JOB_RESULT_DIR": str(sock_dir / "jobs"),
        }
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        api = subprocess.Popen(
            [str(ENTRYPOINT), "api"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers too are stopped if it hangs
        )
        try:
            output, _ = api.communicate(timeout=60)
        finally:
            if api.poll() is None:
                os.killpg(api.pid, signal.SIGKILL)
                api.communicate()
    finally:
        store.stop()
        store.close()
    lines = output.decode().splitlines()
    return api.returncode, [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        (
            "STORE_MAX_MEMORY",
            "384",
            "the store refused to create the users table: MEMORY_LIMIT (STORE_MAX_MEMORY=384"
            " bytes is below what the store uses already, ",
        ),
        (
            "STORE_MAX_TABLES",
            "2",
            "the store refused to create the _jobs table: LIMIT_EXCEEDED (at most 2 tables:"
            " STORE_MAX_TABLES=2 leaves no room for it;",
        ),
    ],
)
def test_a_store_refusing_the_api_tables_ends_the_api_with_2_naming_the_cause(
    sock_dir: Path, setting: str, value: str, reason: str
) -> None:
    code, events = start_api(sock_dir, **{setting: value})
    assert code == 2, events
    last = events[-1]
    assert last["event"] == "api_failed_to_start" and last["level"] == "error", last
    assert last["error"].startswith(reason), last
    # Each worker tried once and said why once: no retry loop, no "not ready" for it.
    refused = [e for e in events if e["event"] == "store_setup_refused"]
    assert 1 <= len(refused) <= 2 and refused[0]["message"] == last["error"], events
    assert not [e for e in events if "not ready" in str(e.get("event"))], events
    # ops QA: each worker's lifespan traceback came before those lines; the refusal says why.
    assert not [e for e in events if "Traceback" in str(e.get("event"))], events


def test_make_run_stops_at_once_when_the_store_refuses_the_api_tables() -> None:
    events = failed_make_run(STORE_MAX_MEMORY="384")
    refusals = [e for e in events if e.get("event") == "api_failed_to_start"]
    assert len(refusals) == 1, events  # not started again
    assert "STORE_MAX_MEMORY=384 bytes" in refusals[0]["error"]
    last = events[-1]
    assert last["event"] == "run_stopped" and last["program"] == "api", last


def test_a_store_that_refuses_the_api_secret_stops_the_api_at_once(sock_dir: Path) -> None:
    """QA: a missing or wrong STORE_SECRET was waited for as a store still starting
    (STORE_WAIT_SECONDS of refused handshakes), then exit 1, restarted for ever; now one
    line naming the variable and exit 2, a setting to mend."""
    code, events = start_api(sock_dir, STORE_SECRET="a-secret-the-api-was-not-given-0123")
    assert code == 2, events
    refused = [e for e in events if e["event"] == "invalid_settings"]
    assert refused and refused[0]["errors"].startswith("STORE_SECRET: "), events
    assert not any(e["event"] == "store_not_ready" for e in events)
