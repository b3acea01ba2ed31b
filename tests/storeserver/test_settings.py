"""Store settings (``STORE_*``): empty means unset, bounds, the socket and TCP address forms,
and how a refusal names the variable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from storeserver.__main__ import EXIT_REFUSED_TO_START, load_settings, parse_args
from storeserver.client import StoreClient
from storeserver.server import StoreServer
from storeserver.settings import StoreSettings, settings_errors


def refused(**env: str) -> ValidationError:
    """Why the settings refuse these variables' values (the test fails if they accept them)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ValidationError) as error:
            StoreSettings()
    return error.value


@pytest.mark.parametrize(
    "name", ["STORE_DATA_DIR", "STORE_MAX_MEMORY", "STORE_FSYNC", "STORE_TCP", "STORE_SOCKET"]
)
def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """STORE_DATA_DIR= used to be Path(""): persistence on, in the working directory."""
    monkeypatch.setenv(name, "")
    assert StoreSettings() == StoreSettings.model_construct()
    assert StoreSettings().data_dir is None


@pytest.mark.parametrize("port", ["99999", "65536", "0"])
def test_a_tcp_port_out_of_range_is_refused(port: str) -> None:
    """99999 was taken, and asyncio listened on 34463 (99999 mod 65536)."""
    errors = str(refused(STORE_TCP=f"127.0.0.1:{port}", STORE_SECRET="s3cret-for-the-test"))
    assert "STORE_TCP" in errors and "1 to 65535" in errors


def test_a_tcp_port_in_range_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORE_TCP", "127.0.0.1:65535")
    monkeypatch.setenv("STORE_SECRET", "s3cret-for-the-test")
    assert StoreSettings().tcp == "127.0.0.1:65535"


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("[::1]:18732", ("::1", 18732)),  # QA: "Name or service not known" at start
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("tcp://10.0.0.5:7000", ("10.0.0.5", 7000)),
    ],
)
def test_store_tcp_is_read_as_the_client_reads_an_address(
    value: str, address: tuple[str, int]
) -> None:
    settings = StoreSettings(tcp=value, secret="s3cret-for-the-test")
    assert settings.tcp_address == address


@pytest.mark.parametrize("value", ["[]:7000", ":7000", "store.sock", "/run/x:7000", "h:p"])
def test_a_store_tcp_that_is_not_host_and_port_is_refused(value: str) -> None:
    errors = settings_errors(refused(STORE_TCP=value, STORE_SECRET="s3cret-for-the-test"))
    assert "STORE_TCP must look like host:port" in errors
    assert value not in errors


async def test_the_store_listens_on_a_bracketed_ipv6_address(sock_dir) -> None:
    ipv6 = socket.socket(socket.AF_INET6)
    try:
        ipv6.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = ipv6.getsockname()[1]
    ipv6.close()
    secret = "s3cret-for-the-test"
    server = StoreServer(
        StoreSettings(socket=sock_dir / "v6.sock", tcp=f"[::1]:{port}", secret=secret)
    )
    client = StoreClient(f"tcp://[::1]:{port}", secret=secret)
    try:
        await server.start()
        assert (await client.call("ping"))["pong"]
    finally:
        await client.close()
        await server.shutdown()


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("unix:/tmp/memdb/store.sock", "/tmp/memdb/store.sock"),
        ("unix:///tmp/memdb/store.sock", "/tmp/memdb/store.sock"),
        ("/tmp/memdb/store.sock", "/tmp/memdb/store.sock"),
        ("run/store.sock", "run/store.sock"),
    ],
)
def test_the_socket_takes_the_unix_forms_the_api_reads(
    monkeypatch: pytest.MonkeyPatch, value: str, path: str
) -> None:
    """unix:/path used to be a relative path: ./unix:/tmp/... under the working directory."""
    monkeypatch.setenv("STORE_SOCKET", value)
    assert StoreSettings().socket == Path(path)
    assert load_settings(parse_args(["--socket", value])).socket == Path(path)


@pytest.mark.parametrize("value", ["tcp://127.0.0.1:7000", "127.0.0.1:7000"])
def test_a_tcp_address_as_the_socket_is_refused_pointing_to_store_tcp(value: str) -> None:
    (error,) = refused(STORE_SOCKET=value).errors()
    assert error["loc"] == ("socket",) and "STORE_TCP=host:port" in error["msg"]
    # QA: --socket made a Path of it first: the store listened at ./tcp:/127.0.0.1:7000.
    with pytest.raises(ValidationError) as flag:
        load_settings(parse_args(["--socket", value]))
    assert "STORE_TCP=host:port" in flag.value.errors()[0]["msg"]


def test_an_empty_socket_flag_is_unset_as_the_variable_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORE_SOCKET", raising=False)
    assert load_settings(parse_args(["--socket", ""])).socket == StoreSettings().socket


def test_a_socket_path_too_long_for_a_unix_socket_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA: "AF_UNIX path too long" at start, naming no setting."""
    long = "/tmp/" + "s" * 102 + ".sock"  # 112 bytes
    (error,) = refused(STORE_SOCKET=long).errors()
    assert error["loc"] == ("socket",) and "at most 107 bytes" in error["msg"]
    monkeypatch.setenv("STORE_SOCKET", long[:107])  # the longest that fits
    assert str(StoreSettings().socket) == long[:107]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STORE_HANDSHAKE_TIMEOUT", "inf"),
        ("STORE_HANDSHAKE_TIMEOUT", "nan"),
        ("STORE_HANDSHAKE_TIMEOUT", "3601"),
        ("STORE_SLOW_MS", "inf"),
        ("STORE_AUDIT_MAX_AGE", "inf"),
        ("STORE_AUDIT_MAX_AGE", "1e12"),
        ("STORE_SCAN_IDLE", "nan"),
        ("STORE_LOG_REWRITE_BYTES", str(10**23)),
        ("STORE_MAX_MEMORY", str(10**23)),
    ],
)
def test_absurd_times_and_sizes_are_refused(name: str, value: str) -> None:
    errors = refused(**{name: value}).errors()
    assert [error["loc"] for error in errors] == [(name.removeprefix("STORE_").lower(),)]


def test_a_refusal_names_the_variable_not_the_field() -> None:
    errors = settings_errors(refused(STORE_FSYNC="sometimes", STORE_MAX_TABLES="0"))
    assert "STORE_FSYNC: " in errors and "STORE_MAX_TABLES: " in errors
    assert "sometimes" not in errors


def test_an_unusable_data_dir_exits_with_the_cannot_start_code(tmp_path: Path) -> None:
    """Exit 1 made supervisord start it again in a loop; 3 is "starting again will not help"."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    command = [sys.executable, "-m", "storeserver", "--socket", str(tmp_path / "s.sock")]
    command += ["--data-dir", str(in_the_way / "data")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == EXIT_REFUSED_TO_START, done.stdout + done.stderr
    (line,) = (done.stdout + done.stderr).splitlines()
    assert json.loads(line)["event"] == "store_failed_to_start"


def test_a_short_secret_is_refused_with_store_tcp_only() -> None:
    """STORE_SECRET=x guarded a TCP port: the secret is all that does, and each wrong guess
    costs a connection. On the Unix socket alone (owner-only) any secret may be used."""
    errors = str(refused(STORE_TCP="127.0.0.1:7000", STORE_SECRET="x" * 15))
    assert "STORE_SECRET" in errors and "at least 16" in errors
    assert StoreSettings(tcp="127.0.0.1:7000", secret="x" * 16).secret == "x" * 16
    assert StoreSettings(secret="x").secret == "x"
    # Blank is no secret (QA: 20 spaces passed the length check).
    errors = str(refused(STORE_TCP="127.0.0.1:7000", STORE_SECRET=" " * 20))
    assert "STORE_TCP requires STORE_SECRET" in errors


def test_nan_is_refused_as_not_a_number() -> None:
    """It was refused, but as "should be less than or equal to 3600"."""
    (error,) = refused(STORE_HANDSHAKE_TIMEOUT="nan").errors()
    assert error["loc"] == ("handshake_timeout",) and error["type"] == "finite_number"


@pytest.mark.parametrize(
    ("name", "ceiling"),
    [
        ("STORE_MAX_TABLES", 1_000_000),
        ("STORE_MAX_BULK_ROWS", 10_000_000),
        ("STORE_AUDIT_MAX_ENTRIES", 10_000_000),
    ],
)
def test_counts_past_their_ceiling_are_refused(name: str, ceiling: int) -> None:
    """ops QA: STORE_MAX_TABLES=99999999999999999999999 started (past 64 bits, a value the
    store cannot even send)."""
    for value in (str(ceiling + 1), "99999999999999999999999"):
        (error,) = refused(**{name: value}).errors()
        assert error["loc"] == (name.removeprefix("STORE_").lower(),), error
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(name, str(ceiling))
        assert getattr(StoreSettings(), name.removeprefix("STORE_").lower()) == ceiling


def store_start(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "storeserver", "--socket", str(tmp_path / "s.sock"), *args]
    environ = {**os.environ, **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=environ)


def test_an_empty_data_dir_flag_persists_nothing_and_a_blank_one_is_refused(
    tmp_path: Path,
) -> None:
    """``--data-dir "$UNSET"`` was Path("") = "." (persistence in the working directory), and
    STORE_DATA_DIR=" " persisted into a directory named " "."""
    assert load_settings(parse_args(["--data-dir", ""])).data_dir is None
    assert "STORE_DATA_DIR" in settings_errors(refused(STORE_DATA_DIR=" "))
    with pytest.raises(ValidationError):
        load_settings(parse_args(["--data-dir", "  "]))


def test_a_relative_data_dir_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    """backup QA: the store answered ``data/snapshot.mdb``, and a backup run from another
    directory copied that directory's ``data/``, another instance's, and exited 0."""
    monkeypatch.chdir(tmp_path)
    assert load_settings(parse_args(["--data-dir", "data"])).data_dir == tmp_path / "data"
    monkeypatch.setenv("STORE_DATA_DIR", "./x/../data")
    assert StoreSettings().data_dir == tmp_path / "x" / ".." / "data"  # symlinks left as named


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (("--data-dir", "/proc/memdb-data"), "STORE_DATA_DIR"),
        (("--tcp", "999.1.1.1:7000"), "STORE_TCP"),
    ],
)
def test_a_start_refused_by_the_os_names_the_setting(
    tmp_path: Path, args: tuple[str, str], setting: str
) -> None:
    done = store_start(tmp_path, *args, STORE_SECRET="s" * 32)
    assert done.returncode == EXIT_REFUSED_TO_START, done.stdout + done.stderr
    (line,) = (done.stdout + done.stderr).splitlines()
    assert json.loads(line)["event"] == "store_failed_to_start"
    assert json.loads(line)["error"].startswith(f"{setting} "), line
