"""The container's commands, run as local processes: deploy/entrypoint.sh with the Dockerfile's
and docker-compose.yml's environment (read from those files), container paths mapped to a
temporary directory and the published port to a free one. Then the probes, the healthchecks
compose and the image would run, /metrics, and the JSON logs of every process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.logs import json_lines
from tests.support.metrics import value
from tests.support.stack import ROOT, Stack, free_port, wait_until_ready

pytestmark = pytest.mark.integration

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# What an operator puts in .env (see .env.example).
GIVEN = {
    "JWT_SECRET": secrets.token_urlsafe(48),
    "ADMIN_EMAIL": "ops@example.com",
    "ADMIN_PASSWORD": secrets.token_urlsafe(24),
}
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(text: str, given: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` against ``given``."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name in given:
            return given[name]
        if operator == "?":
            raise AssertionError(f"compose requires {name}: {argument}")
        return argument if operator == "-" else ""

    return VARIABLE.sub(substitute, text)


def image_env() -> dict[str, str]:
    """The ENV instructions of the Dockerfile's last (runtime) stage."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, val = token.partition("=")
                env[key] = val
    return env


def image_healthcheck() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("HEALTHCHECK"))
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return command


class Container:
    """Container paths and the published port, mapped to this machine."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.paths = {
            "/run/memdb": root / "run",
            "/var/lib/memdb": root / "data",
            "/tmp/prometheus": root / "prometheus",
            "/opt/venv/bin": Path(sys.executable).parent,
        }
        for path in self.paths.values():
            path.mkdir(exist_ok=True)

    def map(self, text: str) -> str:
        for inside, outside in self.paths.items():
            text = text.replace(inside, str(outside))
        text = text.replace("/app/", f"{ROOT}/")  # the image's WORKDIR: this checkout
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def env(self, service: str, given: dict[str, str] = GIVEN) -> dict[str, str]:
        env = {"HOME": str(self.paths["/run/memdb"].parent)}
        env.update({key: self.map(val) for key, val in image_env().items()})
        env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
        for key, raw in COMPOSE["services"][service]["environment"].items():
            env[key] = self.map(interpolate(str(raw), given))
        env["PORT"] = str(self.port)
        return env

    def healthcheck(self, service: str) -> list[str]:
        test = COMPOSE["services"][service]["healthcheck"]["test"]
        assert test[0] == "CMD"
        return [self.map(part) for part in test[1:]]

    def command(self, service: str) -> list[str]:
        return [str(ENTRYPOINT), *COMPOSE["services"][service]["command"]]


def passes(argv: list[str], env: dict[str, str], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=10)
        if check.returncode == 0:
            return True
        time.sleep(0.2)
    return False


def seed_stale_metrics(directory: Path, env: dict[str, str]) -> None:
    """A previous run's counter file: the entrypoint must wipe it."""
    code = (
        "from prometheus_client import Counter; "
        "Counter('http_requests_total', '', ['method', 'handler', 'status'])"
        ".labels('GET', '/stale', '200').inc(1000)"
    )
    subprocess.run(["python", "-c", code], env=env, cwd=ROOT, check=True, timeout=30)
    assert list(directory.glob("counter_*.db"))


@pytest.fixture(scope="module")
def deployed() -> Iterator[tuple[Stack, Container]]:
    workdir = Path(tempfile.mkdtemp(prefix="memdb-"))
    container = Container(workdir, free_port())
    stack = Stack(workdir, container.port, container.env("store"))
    try:
        stack.spawn("store", container.command("store"))
        assert passes(container.healthcheck("store"), stack.env), stack.logs()
        stack.env = container.env("api")
        seed_stale_metrics(container.paths["/tmp/prometheus"], stack.env)
        stack.spawn("api", container.command("api"))
        wait_until_ready(stack, 30.0)
        yield stack, container
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_compose_and_image_healthchecks_pass(deployed: tuple[Stack, Container]) -> None:
    stack, container = deployed
    assert passes(container.healthcheck("api"), stack.env, timeout=5), stack.logs()
    assert passes([container.map(part) for part in image_healthcheck()], stack.env, timeout=5)


def test_probes(deployed: tuple[Stack, Container]) -> None:
    stack, _ = deployed
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as client:
        health = client.get("/api/v1/health")
        ready = client.get("/api/v1/ready")
    assert health.status_code == 200 and health.json()["data"] == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["data"]["ready"] is True
    assert "x-worker-pid" not in health.headers  # production refuses the test setting


def test_metrics_start_clean_and_include_the_store(deployed: tuple[Stack, Container]) -> None:
    stack, _ = deployed
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as client:
        for _ in range(3):
            client.get("/api/v1/health")
        response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert value(text, "http_requests_total", handler="/api/v1/health") >= 3
    assert value(text, "http_requests_total", handler="/stale") == 0  # wiped at start
    assert value(text, "memdb_store_up") == 1
    assert value(text, "memdb_store_persistence_enabled") == 1  # STORE_DATA_DIR from compose
    assert value(text, "memdb_store_memory_limit_bytes") == 402653184  # compose's default


def test_data_survives_a_restart_of_the_store_service(deployed: tuple[Stack, Container]) -> None:
    """Register, log in, write; restart the store as compose would (SIGTERM, then the same
    entrypoint command); the data comes back from its volume, the same token still works and
    the API processes were not restarted."""
    stack, container = deployed
    api_pid = stack.processes["api"].pid
    with httpx.Client(base_url=stack.base_url, timeout=10.0) as client:
        account = {
            "email": "restart-check@example.com",
            "full_name": "Ops",
            "password": "a long passphrase",
        }
        assert client.post("/api/v1/users", json=account).status_code == 201
        form = {"username": account["email"], "password": account["password"]}
        token = client.post("/api/v1/auth/token", data=form).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        me = client.get("/api/v1/users/me").json()["data"]
        order = {
            "user_id": me["id"],
            "product_name": "Kettle",
            "quantity": 2,
            "total_price": "39.98",
        }
        created = client.post("/api/v1/orders", json=order)
        assert created.status_code == 201, created.text
        order_id = created.json()["data"]["id"]

        store = stack.processes["store"]
        store.send_signal(signal.SIGTERM)
        assert store.wait(30) == 0
        api_env, stack.env = stack.env, container.env("store")
        try:
            stack.spawn("store", container.command("store"))
        finally:
            stack.env = api_env
        assert passes(container.healthcheck("store"), stack.env), stack.logs()
        assert passes(container.healthcheck("api"), stack.env), stack.logs()

        again = client.get(f"/api/v1/orders/{order_id}")
        assert again.status_code == 200, again.text
        assert again.json()["data"]["total_price"] == "39.98"
        assert client.get("/api/v1/users/me").json()["data"]["email"] == account["email"]
    assert stack.processes["api"].pid == api_pid
    assert list(container.paths["/var/lib/memdb"].glob("snapshot.mdb"))  # written at SIGTERM


def test_every_process_logs_json_lines(deployed: tuple[Stack, Container]) -> None:
    stack, _ = deployed
    api = json_lines(stack.workdir / "api.log")
    store = json_lines(stack.workdir / "store.log")
    assert {record["process"] for record in api} == {"api"}
    assert {record["process"] for record in store} == {"store"}
    assert len({record["pid"] for record in api}) >= 3  # the master and two workers
    for record in api:
        assert {"timestamp", "level", "event"} <= record.keys(), record
    assert any(record["logger"] == "gunicorn.error" for record in api)
    assert any(record["logger"] == "uvicorn.error" for record in api)
    assert any(record["event"] == "access" for record in api)


def test_sigterm_stops_both_cleanly(deployed: tuple[Stack, Container]) -> None:
    """Last: compose stop sends SIGTERM to each entrypoint's process (exec'd: gunicorn, store)."""
    stack, _ = deployed
    for name in ("api", "store"):
        process = stack.processes[name]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, stack.logs()
    api = json_lines(stack.workdir / "api.log")
    assert any("Shutting down" in record["event"] for record in api), api[-5:]
    store = json_lines(stack.workdir / "store.log")
    assert store[-1]["event"] == "store_stopped", store[-5:]


def test_settings_load_with_only_the_required_secret(deployed: tuple[Stack, Container]) -> None:
    """.env with JWT_SECRET alone (the other lines of .env.example are commented out): compose
    then passes empty strings, e.g. ADMIN_EMAIL=''."""
    _, container = deployed
    env = container.env("api", {"JWT_SECRET": GIVEN["JWT_SECRET"]})
    assert env["ADMIN_EMAIL"] == ""
    code = "import runpy; runpy.run_path('deploy/gunicorn.conf.py')"
    check = subprocess.run(
        ["python", "-c", code], env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stderr.decode()[-2000:]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # gunicorn reads WEB_CONCURRENCY itself, before its config file's settings check.
        ("WEB_CONCURRENCY", "-1"),
        ("WEB_CONCURRENCY", "two"),
        ("STORE_SOCKET", "tcp://localhost"),
    ],
)
def test_the_api_refuses_a_bad_setting_with_one_json_line_and_exit_2(
    tmp_path: Path, name: str, value: str
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), name: value}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run(
        [str(ENTRYPOINT), "api"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    event = json.loads(lines[0])
    # named as the operator set it (WEB_CONCURRENCY), not as the Python field
    assert event["event"] == "invalid_settings" and event["errors"].startswith(f"{name}:")


def test_the_image_code_is_not_the_service_users_to_change() -> None:
    """QA: the code was COPY --chown'd to the user the service runs as, so a compromised
    process could rewrite what runs after its next restart. (container-check builds and runs
    the image: that the code still runs this way is checked there.)"""
    runtime = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").split("\nFROM ")[-1]
    lines = runtime.splitlines()
    copies = [line for line in lines if line.startswith("COPY ") and "--from=" not in line]
    assert {line.split()[-1] for line in copies} == {"./storeserver", "./api", "./deploy"}
    assert not any("--chown" in line for line in copies), copies
    user = next(i for i, line in enumerate(lines) if line.startswith("USER "))
    chmod = next(i for i, line in enumerate(lines) if "chmod -R a+rX,go-w /app" in line)
    assert max(lines.index(line) for line in copies) < chmod < user
