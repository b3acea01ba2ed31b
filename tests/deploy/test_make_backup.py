"""`make backup` prints what storeserver.backup prints, JSON only: not its own command line
first, as make echoes a recipe line without ``@``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.stack import ROOT

pytestmark = pytest.mark.integration


def test_make_backup_does_not_echo_its_command(tmp_path: Path) -> None:
    # No store there: the backup fails before it writes anything (in ./backups).
    socket_path = tmp_path / "no-store.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    argv = ["make", "--no-print-directory", "-o", "install", "backup"]
    done = subprocess.run(
        [*argv, f"STORE_SOCKET={socket_path}"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    (line,) = done.stdout.splitlines() + [
        line for line in done.stderr.splitlines() if not line.startswith("make: *** [")
    ]
    assert json.loads(line)["error"] == "STORE_UNAVAILABLE", line
