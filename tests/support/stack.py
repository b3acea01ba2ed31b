"""Start the real stack for tests: one store process and gunicorn with N uvicorn workers.

    with running_stack(workers=2) as stack:
        httpx.get(stack.url("/api/v1/ready"))

Children write their output to files in the stack's directory (a pipe nobody reads would
block them once full); ``stack.logs()`` returns it for failure messages. The test-only setting
EXPOSE_WORKER_PID=1 makes every response carry X-Worker-PID, so tests can prove which worker
answered. Stopping sends SIGTERM, waits, then kills.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin password for tests"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack:
    workdir: Path
    port: int
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "store.sock"

    def url(self, path: str) -> str:
        return self.base_url + path

    def logs(self) -> str:
        parts = []
        for name in self.processes:
            log = self.workdir / f"{name}.log"
            text = log.read_text("utf-8", "replace") if log.exists() else ""
            parts.append(f"--- {name} ---\n{text[-4000:]}")
        return "\n".join(parts)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.processes[name] = proc
        return proc

    def restart_store(self, extra_env: dict[str, str] | None = None) -> None:
        """Stop the store (if running) and start a new, empty one on the same socket."""
        old = self.processes.get("store")
        if old is not None and old.poll() is None:
            old.terminate()
            old.wait(10)
        saved = self.env
        self.env = {**saved, **(extra_env or {})}
        try:
            self.spawn("store", [sys.executable, "-m", "storeserver"])
        finally:
            self.env = saved

    def stop(self, timeout: float = 15.0) -> None:
        """Stop gunicorn first (its workers drain), then the store."""
        for name in ("api", "store"):
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def worker_pids(stack: Stack) -> set[int]:
    """The gunicorn master's current worker processes (from /proc)."""
    master = stack.processes["api"].pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def wait_until_ready(stack: Stack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in stack.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{stack.logs()}")
        try:
            if httpx.get(stack.url("/api/v1/ready"), timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the stack was not ready within {timeout:g}s\n{stack.logs()}")


def start_stack(
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
    *,
    app: str | None = None,
) -> Stack:
    """Start store + gunicorn on a free port and wait for /api/v1/ready.

    ``app`` replaces the config's ``api.main:create_app()`` (a test app built on it).
    """
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    workdir = Path(tempfile.mkdtemp(prefix="memdb-"))
    port = free_port()
    env = {
        **os.environ,
        "ENV": "development",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "STORE_SOCKET": str(workdir / "store.sock"),
        "EXPOSE_WORKER_PID": "1",
        "BCRYPT_ROUNDS": "4",
        "LOG_LEVEL": "warning",
        "STORE_LOG_LEVEL": "WARNING",
        # Fresh per stack (the workdir is new), as the entrypoint's wipe makes it in production.
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
        # Security (tests/support/auth.py): the admin the workers ensure at start, and limits
        # high enough for a whole test session from one IP (the rate-limit tests lower them).
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "RATE_LIMIT": "1000000/minute",
        "AUTH_RATE_LIMIT": "1000000/minute",
        **(extra_env or {}),
    }
    stack = Stack(workdir, port, env)
    try:
        stack.spawn("store", [sys.executable, "-m", "storeserver"])
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy/gunicorn.conf.py")]
        stack.spawn("api", gunicorn + ([app] if app else []))
        wait_until_ready(stack, ready_timeout)
    except BaseException:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return stack


@contextmanager
def running_stack(
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
    *,
    app: str | None = None,
) -> Iterator[Stack]:
    stack = start_stack(workers, extra_env, ready_timeout, app=app)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(stack.workdir, ignore_errors=True)
