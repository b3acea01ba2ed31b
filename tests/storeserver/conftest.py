from __future__ import annotations

import shutil

import pytest

from storeserver.client import StoreClient
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings
from tests.support.store import StoreProcess, short_tmp_dir


@pytest.fixture
def sock_dir():
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(sock_dir):
    """A store server running in this test's event loop on a real Unix socket."""
    srv = StoreServer(StoreSettings(socket=sock_dir / "s.sock"))
    await srv.start()
    yield srv
    await srv.shutdown()


@pytest.fixture
async def client(server):
    c = StoreClient(f"unix:{server.settings.socket}", timeout=2.0)
    await c.connect()
    yield c
    await c.close()


@pytest.fixture
def store_process(sock_dir):
    """A real ``python -m storeserver`` subprocess."""
    procs: list[StoreProcess] = []

    def start(**env: str) -> StoreProcess:
        proc = StoreProcess(sock_dir / "p.sock", env=env).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
        proc.close()


def pytest_asyncio_loop_factories(config, item):
    """Run these tests on uvloop, the loop the store and the workers use in production."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
