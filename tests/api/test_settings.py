"""API settings: bounds on times and sizes, empty means unset, and how a refusal names the
variable (``invalid_settings``)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.jobs.runner import result_dir
from api.settings import Settings, job_result_dir_error
from storeserver.settings import settings_errors


def refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> ValidationError:
    """Why the settings refuse this variable's value (the test fails if they accept it)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as error:
        Settings()
    return error.value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRACEFUL_TIMEOUT", "100000000000"),
        ("STORE_TIMEOUT", "inf"),
        ("STORE_TIMEOUT", "nan"),
        ("STORE_LONG_TIMEOUT", "inf"),
        ("SNAPSHOT_TIMEOUT", "1e9"),
        ("STORE_WAIT_SECONDS", "inf"),
        ("STORE_RETRY_AFTER", str(10**23)),
        ("JOB_HEARTBEAT_SECONDS", "inf"),
        ("JOB_STALE_SECONDS", "inf"),
        ("JOB_RETENTION_SECONDS", str(10**23)),
        ("MAX_BODY_BYTES", str(10**23)),
        ("IMPORT_MAX_BYTES", str(10**23)),
        ("GZIP_MIN_BYTES", str(10**23)),
        ("JOB_ASYNC_BYTES", str(10**23)),
        ("JOB_RESULT_MAX_BYTES", str(10**23)),
        # ops QA: started (5000 workers would take the machine's memory)
        ("WEB_CONCURRENCY", "5000"),
        ("JOB_ASYNC_ROWS", str(10**23)),
        # config QA: bcrypt takes 31, minutes to days a login (16: ~6.5 s)
        ("BCRYPT_ROUNDS", "17"),
    ],
)
def test_absurd_times_and_sizes_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    errors = refused(monkeypatch, name, value).errors()
    assert [error["loc"] for error in errors] == [(name.lower(),)]


@pytest.mark.parametrize("name", ["STORE_TIMEOUT", "STORE_WAIT_SECONDS", "JOB_STALE_SECONDS"])
def test_nan_and_infinities_are_refused_as_not_finite(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """STORE_TIMEOUT=nan was refused as "should be less than or equal to 3600"."""
    for value in ("nan", "inf", "-inf"):
        (error,) = refused(monkeypatch, name, value).errors()
        assert error["type"] == "finite_number", (name, value, error)


def test_the_upper_bounds_themselves_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "GRACEFUL_TIMEOUT": "3600",
        "STORE_TIMEOUT": "3600",
        "STORE_RETRY_AFTER": "3600",
        "JOB_STALE_SECONDS": "86400",
        "MAX_BODY_BYTES": str(1 << 30),
        "WEB_CONCURRENCY": "256",
        "JOB_ASYNC_ROWS": str(10**12),
    }.items():
        monkeypatch.setenv(name, value)
    assert Settings().max_body_bytes == 1 << 30


@pytest.mark.parametrize("name", ["ENV", "WEB_CONCURRENCY", "STORE_SOCKET", "MAX_BODY_BYTES"])
def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "")
    assert Settings() == Settings.model_construct()


@pytest.mark.parametrize("name", ["JWT_SECRET", "STORE_SECRET", "JOB_RESULT_DIR", "CONTROL_SOCKET"])
def test_a_blank_variable_means_unset_too(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """QA: JWT_SECRET=" " (a stray space in an .env line) signed tokens with a one-space key
    in development, so anyone could mint an admin's; JOB_RESULT_DIR=" " made a directory
    named " ", CONTROL_SOCKET=" " broke gunicorn's control socket."""
    monkeypatch.setenv(name, "   ")
    assert Settings() == Settings.model_construct()
    monkeypatch.setenv(name, " a value of its own ")  # not blank: kept as it is
    kept = getattr(Settings(), name.lower())
    assert getattr(kept, "get_secret_value", lambda: kept)() == " a value of its own "


@pytest.mark.parametrize(
    ("name", "value"), [("WEB_CONCURRENCY", "two"), ("ENV", "staging"), ("RATE_LIMIT", "lots")]
)
def test_a_refusal_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """``web_concurrency: ...`` named a Python field; the operator set WEB_CONCURRENCY."""
    errors = settings_errors(refused(monkeypatch, name, value))
    assert errors.startswith(f"{name}: ") and value not in errors


def test_the_job_result_directory_is_made_as_the_runner_makes_it(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "jobs"
    assert job_result_dir_error(Settings(job_result_dir=str(directory))) is None
    assert directory.is_dir() and stat.S_IMODE(directory.stat().st_mode) == 0o700
    # unset: beside a Unix STORE_SOCKET, where the runner writes too
    beside = Settings(store_socket=str(tmp_path / "run" / "store.sock"))
    assert job_result_dir_error(beside) is None
    assert result_dir(beside) == tmp_path / "run" / "jobs" and result_dir(beside).is_dir()


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("a-file/jobs", "JOB_RESULT_DIR: cannot create the directory: Not a directory"),
        ("a-file", "JOB_RESULT_DIR: not a directory"),
    ],
)
def test_a_job_result_directory_that_cannot_be_made_is_refused(
    tmp_path: Path, where: str, error: str
) -> None:
    (tmp_path / "a-file").touch()
    assert job_result_dir_error(Settings(job_result_dir=str(tmp_path / where))) == error


def test_the_unset_job_result_directory_says_where_it_would_be(tmp_path: Path) -> None:
    (tmp_path / "run").touch()  # a file where the socket's directory should be
    settings = Settings(store_socket=str(tmp_path / "run" / "store.sock"))
    assert job_result_dir_error(settings) == (
        "JOB_RESULT_DIR (unset: jobs/ beside STORE_SOCKET, or memdb-jobs in the temp directory):"
        " cannot create the directory: Not a directory"
    )


def test_admin_password_is_judged_as_it_will_be_hashed_normalized() -> None:
    """The password the workers hash is NFKC-normalized (api.auth.passwordtext): the
    development default in fullwidth letters is that default, and a password that only passes
    72 bytes once normalized (U+FDFA is 3 bytes, 33 after NFKC) would fail ensure_admin."""
    secret = "k3Y-9vQz_Lw2Rt8Xb5Nm1Hp4Jc7Fd0Sg6Ae-Uo3Iy"  # no run, no repeat
    fullwidth = "".join(
        chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in "dev-only-admin-password"
    )
    with pytest.raises(ValueError, match="development default"):
        Settings(env="production", jwt_secret=secret, admin_email="root@example.com",
                 admin_password=fullwidth)  # fmt: skip
    with pytest.raises(ValueError, match="72 UTF-8 bytes once normalized"):
        Settings(admin_email="root@example.com", admin_password="\ufdfa" * 8)


def test_a_lookalike_admin_email_is_refused_as_a_registration_would_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ensure_admin registers ADMIN_EMAIL through UserCreate: a Cyrillic U+0430 in it failed every
    worker at start; the settings say so first, naming the variable."""
    monkeypatch.setenv("ADMIN_PASSWORD", "a long admin password")
    error = refused(monkeypatch, "ADMIN_EMAIL", "\u0430dmin@example.com")
    assert "mixes letters of several scripts" in str(error)
    monkeypatch.setenv("ADMIN_EMAIL", "admin@example.com")
    assert Settings().admin_email == "admin@example.com"


@pytest.mark.parametrize("value", ["5 per 0 seconds", "3/0 minutes", "1 per 00 hours"])
def test_a_rate_limit_window_of_zero_is_refused(monkeypatch: pytest.MonkeyPatch, value: str):
    """``limits`` reads it as one unit: 5 per 0 seconds was enforced as 5 per second."""
    assert "at least 1 unit" in str(refused(monkeypatch, "RATE_LIMIT", value))
    assert "at least 1 unit" in str(refused(monkeypatch, "AUTH_RATE_LIMIT", value))


def test_a_metrics_token_a_scraper_cannot_send_is_refused(monkeypatch: pytest.MonkeyPatch):
    """Header bytes are compared as Latin-1: a non-ASCII token never matched a UTF-8 one."""
    for token in ("scrape-tökén-0123456789", "two words"):
        assert "ASCII" in str(refused(monkeypatch, "METRICS_TOKEN", token))
    monkeypatch.setenv("METRICS_TOKEN", "  scrape-0123456789  ")
    token = Settings().metrics_token
    assert token is not None and token.get_secret_value() == "scrape-0123456789"


def test_a_control_socket_path_gunicorn_would_clobber_or_not_bind_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """gunicorn removes whatever is at the path before it binds: a file there was deleted."""
    precious = tmp_path / "important.conf"
    precious.write_text("keep me")
    assert "not a socket" in str(refused(monkeypatch, "CONTROL_SOCKET", str(precious)))
    assert precious.read_text() == "keep me"
    assert "not a socket" in str(refused(monkeypatch, "CONTROL_SOCKET", str(tmp_path)))
    under_a_file = str(precious / "run" / "ctl.sock")
    assert "is a file" in str(refused(monkeypatch, "CONTROL_SOCKET", under_a_file))
    missing = str(tmp_path / "run" / "memdb" / "ctl.sock")  # gunicorn makes the directories
    monkeypatch.setenv("CONTROL_SOCKET", missing)
    assert Settings().control_socket == missing
    long = str(tmp_path / ("x" * 120))
    assert "at most 107 bytes" in str(refused(monkeypatch, "CONTROL_SOCKET", long))
    monkeypatch.setenv("CONTROL_SOCKET", str(tmp_path / "ctl.sock"))
    assert Settings().control_socket == str(tmp_path / "ctl.sock")


def test_a_store_socket_path_too_long_for_a_unix_socket_is_refused(monkeypatch: pytest.MonkeyPatch):
    """QA: the workers waited out STORE_WAIT_SECONDS for a socket no store can make, then
    exited 1 (a failure supervisord restarts), naming no setting."""
    long = "/tmp/" + "s" * 120 + ".sock"
    for value in (long, f"unix:{long}"):
        assert "at most 107 bytes" in str(refused(monkeypatch, "STORE_SOCKET", value))
    monkeypatch.setenv("STORE_SOCKET", "tcp://" + "h" * 200 + ":7000")  # not a path: no limit
    assert Settings().store_socket.startswith("tcp://")
