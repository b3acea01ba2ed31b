"""deploy/gunicorn.conf.py's hooks, run in a fresh interpreter as a worker would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from api import collector

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import gc, json, runpy
conf = runpy.run_path("deploy/gunicorn.conf.py")
from api.main import create_app
create_app()  # what the worker loads before post_worker_init
before = (gc.get_freeze_count(), gc.get_threshold())
conf["post_worker_init"](None)
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "after": gc.get_threshold()}))
"""


def test_post_worker_init_freezes_the_loaded_app_and_raises_the_young_threshold() -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    done = subprocess.run(
        [sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == [0, [700, 10, 10]]  # Python's defaults until the hook runs
    assert seen["frozen"] > 50_000  # the app's objects (~100k): out of every collection's way
    assert seen["after"] == [collector.GEN0_THRESHOLD, 10, 10]
