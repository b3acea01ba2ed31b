"""API worker settings, read once per process from the environment (names fixed in §4)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Literal

import idna
import limits
from limits.util import SINGLE_EXPR
from pydantic import (
    AfterValidator,
    EmailStr,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from api.auth.passwordtext import new_password_problem, normalize_password
from api.schemas.lookalikes import refuse_lookalike_email
from storeserver.client import check_unix_path, parse_address

MIN_SECRET_LENGTH = 32
# Fewer distinct characters than this is not random: a random 32-character hex key has ~14,
# and fewer than 6 about once in 5 billion (fewer than 9, as this was, about 3 in a million:
# `openssl rand -hex 16` was refused now and then, and so was the test's 2,000 of them).
MIN_SECRET_DISTINCT = 6
MIN_ADMIN_PASSWORD_LENGTH = 12
# Values people paste from examples: refused in production whatever their length.
WEAK_SECRET_WORDS = ("secret", "changeme", "change-me", "change_me", "password", "example")
# `make run`'s development administrator password (Makefile): never accepted in production.
DEV_ADMIN_PASSWORD = "dev-only-admin-password"
# scheme://host[:port]: a host name or a bracketed IPv6 address, no user name, path or wildcard.
_ORIGIN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>[^/\s?#@:\[\]*]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_CHARS = re.compile(r"[a-z0-9_.-]+")
ORIGIN_FORM = (
    "each origin is scheme://host[:port] with no path, user name or wildcard, e.g."
    " https://app.example.com"
)


def _browser_origin(item: str) -> str:
    """``item`` as a browser writes its ``Origin``: lowercase, without its scheme's port, an
    IDN host in its ASCII (punycode) form and an IPv6 address compressed. QA:
    ``https://bücher.example`` and ``http://[0:0:0:0:0:0:0:1]:8080`` started and matched no
    browser's header (``https://xn--bcher-kva.example``, ``http://[::1]:8080``)."""
    found = _ORIGIN.fullmatch(item.strip())
    if found is None:
        raise ValueError(ORIGIN_FORM)
    scheme, host, port = found["scheme"].lower(), _browser_host(found["host"]), found["port"]
    if port is None or int(port) == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    if not 1 <= int(port) <= 65535:
        raise ValueError("an origin's port is 1 to 65535")
    return f"{scheme}://{host}:{int(port)}"


def _browser_host(host: str) -> str:
    """A host as the URL standard serializes it, or ValueError for one no browser sends."""
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError("an origin's IPv6 address is not valid") from None
        return f"[{_ipv6_text(address)}]"
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise ValueError("an origin's host is not a valid international domain name") from None
    host = host.lower()
    if not _HOST_CHARS.fullmatch(host):
        raise ValueError(
            "an origin's host is letters, digits, '-', '_' and '.' (or an [IPv6] address)"
        )
    return host


def _ipv6_text(address: ipaddress.IPv6Address) -> str:
    """RFC 5952 / the URL standard: hex groups only (``::ffff:7f00:1``, never dotted), the
    longest run of two or more zero groups (the first of equals) as ``::``."""
    groups = [int.from_bytes(address.packed[i : i + 2]) for i in range(0, 16, 2)]
    best, best_length, start = -1, 1, None
    for index, group in enumerate([*groups, 1]):
        if group == 0 and start is None:
            start = index
        elif group != 0 and start is not None:
            if index - start > best_length:
                best, best_length = start, index - start
            start = None
    words = [f"{group:x}" for group in groups]
    if best < 0:
        return ":".join(words)
    return ":".join(words[:best]) + "::" + ":".join(words[best + best_length :])


# The store's integers are 64-bit: a rate limit's count or window past this cannot be sent to
# it, and every limited request would fail instead of the start.
MAX_RATE_NUMBER = 2**63 - 1
PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
HOUR = 3600
DAY = 24 * HOUR
GIB = 1 << 30
# Set by deploy/start_gunicorn.py for its workers: where one that cannot start because of a
# setting of the store (``api.main.StoreRefusedSetup``) leaves the reason. Not a setting.
START_REFUSAL_FILE_ENV = "MEMDB_START_REFUSAL_FILE"
# Export results hold users and orders: the workers' user alone reads them (api.jobs.runner).
JOB_RESULT_DIR_MODE = 0o700


class Settings(BaseSettings):
    """Everything an API worker (and the gunicorn config) reads from the environment."""

    # An empty variable (JWT_SECRET= in a .env file) means unset, not an empty value.
    # allow_inf_nan: STORE_TIMEOUT=nan was refused as "should be less than or equal to 3600".
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    env: Literal["development", "production"] = "development"
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # Each worker takes ~60 MB and a store connection: thousands would exhaust the machine.
    web_concurrency: Annotated[int, Field(ge=1, le=256)] = 2
    graceful_timeout: Annotated[int, Field(ge=1, le=HOUR)] = 30
    # Seconds a connection has to send a request's headers whole (api/connections.py).
    header_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # Seconds a response may wait for its client to read (api/connections.py); then closed.
    send_timeout: Annotated[float, Field(gt=0, le=HOUR)] = 60.0
    # Seconds a request body may pause between two pieces before the answer is 408.
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    control_socket: str = ""
    store_socket: str = "run/store.sock"
    # Sent in the store handshake; the store requires it when it has one (STORE_SECRET is
    # mandatory with STORE_TCP, and then checked on the Unix socket too).
    store_secret: SecretStr | None = None
    store_timeout: Annotated[float, Field(gt=0, le=HOUR)] = 5.0
    # create_index, set_schema, update_where, delete_where: chunked over big tables, and a
    # write that times out is of unknown outcome, so they get longer (``client.CHUNKED_WRITES``).
    store_long_timeout: Annotated[float, Field(gt=0, le=DAY)] = 120.0
    # A snapshot of a large store takes a while; the admin endpoint waits this long for it.
    snapshot_timeout: Annotated[float, Field(gt=0, le=DAY)] = 300.0
    store_wait_seconds: Annotated[float, Field(gt=0, le=DAY)] = 30.0
    store_retry_after: Annotated[int, Field(ge=1, le=HOUR)] = 1
    # The store's largest frame (STORE_MAX_FRAME_BYTES) is at most 1 GiB too.
    max_body_bytes: Annotated[int, Field(ge=1, le=GIB)] = 1024 * 1024
    # POST /api/v1/batch/import only (CSV upload, spooled to disk past 1 MiB): its own limit.
    import_max_bytes: Annotated[int, Field(ge=1, le=64 * GIB)] = 64 * 1024 * 1024
    cors_origins: Annotated[list[str], NoDecode] = []
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    gzip_min_bytes: Annotated[int, Field(ge=1, le=GIB)] = 1024
    dump_chunk_size: Annotated[int, Field(ge=1, le=1000)] = 500
    # PATCH/DELETE /data/{table}?<filters>: more matching rows than this → 400, nothing changed.
    max_rows_per_filter_write: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # bcrypt's cost doubles with each round: 12 ~0.4 s, 16 ~6.5 s a login; past that a login
    # outlasts any client (QA: 31, which bcrypt takes, is days), so 16 is the most taken.
    bcrypt_rounds: Annotated[int, Field(ge=4, le=16)] = 12
    expose_worker_pid: bool = False
    # --- security (api/auth, api/ratelimit.py, api/hardening.py) ---
    jwt_secret: SecretStr | None = None
    access_token_ttl: Annotated[int, Field(ge=30, le=86_400)] = 15 * 60
    refresh_token_ttl: Annotated[int, Field(ge=300, le=90 * 86_400)] = 7 * 86_400
    token_cache_size: Annotated[int, Field(ge=0, le=1_000_000)] = 4096
    rate_limit: str = "100/minute"
    auth_rate_limit: str = "10/minute"
    trusted_proxies: Annotated[list[str], NoDecode] = []
    # Checked as a registration's email is: ensure_admin would refuse a lookalike at start.
    admin_email: Annotated[EmailStr, AfterValidator(refuse_lookalike_email)] | None = None
    admin_password: SecretStr | None = None
    # When set, GET /metrics answers only `Authorization: Bearer <it>` (its series name every
    # table and its rows, and a scrape costs ~10 ms of a worker); else it is open.
    metrics_token: SecretStr | None = None
    # --- background jobs (api/jobs) ---
    # Where export results are written; empty: "jobs" beside a Unix STORE_SOCKET (run/jobs
    # under `make run`), else the system temp dir. Every worker must see the same directory.
    job_result_dir: str = ""
    job_max_concurrent: Annotated[int, Field(ge=1, le=64)] = 2
    # Jobs a worker holds at once, queued or running; past it a new one is 503 JOBS_BUSY.
    job_max_queued: Annotated[int, Field(ge=1, le=10_000)] = 32
    job_heartbeat_seconds: Annotated[float, Field(gt=0, le=HOUR)] = 2.0
    job_stale_seconds: Annotated[float, Field(gt=0, le=DAY)] = 15.0
    # Past this many rows (table or whole store) exports/snapshots/by-filter run as jobs.
    job_async_rows: Annotated[int, Field(ge=1, le=10**12)] = 100_000  # a huge value: never
    # CSV import bodies larger than this run as jobs.
    job_async_bytes: Annotated[int, Field(ge=1, le=64 * GIB)] = 8 * 1024 * 1024
    job_retention_seconds: Annotated[int, Field(ge=1, le=90 * DAY)] = 86_400
    # All finished results together: past this the oldest finished jobs are deleted early.
    job_result_max_bytes: Annotated[int, Field(ge=1, le=1024 * GIB)] = 1 << 30

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def split_origins(cls, value: object) -> object:
        """Accept a comma-separated list as well as a JSON array."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "jwt_secret", "store_secret", "job_result_dir", "control_socket", mode="before"
    )
    @classmethod
    def blank_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """Blank (a stray space in an .env line) is unset, as empty is: QA, JWT_SECRET=" "
        signed tokens with a one-space key in development (anyone could mint an admin's),
        JOB_RESULT_DIR=" " made a directory named " ", CONTROL_SOCKET=" " broke gunicorn's.
        A value that is not blank is kept as it is (a secret's spaces are its own)."""
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[str(info.field_name)].default
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def blank_token_is_unset(cls, value: object) -> object:
        """Surrounding whitespace is not part of the token (a line read from a file), and a
        blank one is unset, as an empty one is: it made ``Bearer`` with no token pass (QA)."""
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("metrics_token")
    @classmethod
    def token_a_scraper_can_send(cls, value: SecretStr | None) -> SecretStr | None:
        """Printable ASCII: a header's bytes are compared as Latin-1, so a token with other
        characters matched no scraper's UTF-8 header (401 for ever, QA)."""
        if value is not None and not PRINTABLE_ASCII.fullmatch(value.get_secret_value()):
            raise ValueError(
                "use ASCII letters, digits and punctuation only, no spaces"
                " (e.g. openssl rand -hex 32)"
            )
        return value

    @field_validator("control_socket")
    @classmethod
    def check_control_socket(cls, value: str) -> str:
        """A path gunicorn can bind its control socket at. It removes whatever is there first:
        a regular file named here was deleted (QA); a directory, a file where a directory of
        the path should be (gunicorn makes the missing ones) or a path too long for a Unix
        socket only logged "Control server error" and served without it."""
        if not value:
            return value
        path = Path(value)
        check_unix_path(value)
        if (path.exists() or path.is_symlink()) and not path.is_socket():
            raise ValueError("the path exists and is not a socket; refusing to replace it")
        existing = next((p for p in path.absolute().parents if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ValueError("a directory of the path is a file")
        return value

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def job_results_path(self) -> Path:
        """``JOB_RESULT_DIR``, else ``jobs/`` beside a Unix store socket (the run-time directory
        every worker of this host shares), else the system temp directory."""
        if self.job_result_dir:
            return Path(self.job_result_dir)
        address = self.store_socket.removeprefix("unix:")
        if "://" not in address:
            return Path(address).resolve().parent / "jobs"
        return Path(tempfile.gettempdir()) / "memdb-jobs"

    @property
    def store_secret_value(self) -> str | None:
        return self.store_secret.get_secret_value() if self.store_secret else None

    @field_validator("rate_limit", "auth_rate_limit")
    @classmethod
    def parse_rate_limit(cls, value: str) -> str:
        """``limits`` notation: ``100/minute``, ``5 per 10 seconds``: one limit, of 1 or more
        (``0/minute`` would refuse every request with a 400, not a 429), whose count and
        window fit the store's 64-bit integers."""
        try:
            items = limits.parse_many(value)
        except ValueError:  # its message quotes the value: settings errors never do
            raise ValueError(
                "not a rate limit: use limits notation, e.g. 100/minute or 5 per 10 seconds"
            ) from None
        if len(items) != 1:
            raise ValueError("one limit only, e.g. 100/minute (not several joined by ; or ,)")
        match = SINGLE_EXPR.match(value)
        if match is not None and match.group(3) is not None and int(match.group(3)) == 0:
            # ``limits`` reads a window of 0 units as 1 unit: refused, as a count of 0 is.
            raise ValueError("the window must be at least 1 unit, e.g. 5 per 10 seconds")
        if items[0].amount < 1:
            raise ValueError("the limit must allow at least 1 request")
        if items[0].amount > MAX_RATE_NUMBER or items[0].get_expiry() > MAX_RATE_NUMBER:
            raise ValueError("the count and the window in seconds must each be below 2**63")
        return value

    @field_validator("cors_origins")
    @classmethod
    def check_origins(cls, value: list[str]) -> list[str]:
        """Origins as browsers send them: ``scheme://host[:port]``, no path (or ``*``).

        Written the way a browser's ``Origin`` header is, since CORS compares them as strings:
        ``HTTPS://App.Example:443`` is kept as ``https://app.example``. What a browser never
        sends (a user name, a wildcard host, a port past 65535) is refused: it would start and
        then match no request. Other schemes pass: an app's WebView sends ``capacitor://``."""
        return [item if item == "*" else _browser_origin(item) for item in value]

    @field_validator("store_socket")
    @classmethod
    def check_store_address(cls, value: str) -> str:
        """A Unix socket path, ``unix:/path``, or ``tcp://host:port``, as the client reads it."""
        try:
            kind, where = parse_address(value)
        except ValueError:  # its message quotes the value: settings errors never do
            where = None
        if not where or (kind == "tcp" and not 1 <= where[1] <= 65535):
            raise ValueError("a store address is a socket path, unix:/path or tcp://host:port")
        if kind == "unix":
            # QA: the workers waited out STORE_WAIT_SECONDS for a socket no store can make.
            check_unix_path(where)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def check_proxies(cls, value: list[str]) -> list[str]:
        """IP addresses or CIDR networks (``10.0.0.0/8``) whose X-Forwarded-For is believed."""
        for item in value:
            try:
                ipaddress.ip_network(item)  # strict, like gunicorn: 10.0.0.0/8, not 10.0.0.1/8
            except ValueError as exc:  # its message quotes the value: settings errors never do
                problem = "has host bits set" if "host bits" in str(exc) else "is neither"
                raise ValueError(
                    f"each is an IP address or a CIDR network such as 10.0.0.0/8; one {problem}"
                ) from None
        return value

    @model_validator(mode="after")
    def refuse_unsafe_production(self) -> Settings:
        """Production refuses settings meant only for tests or development."""
        if self.env == "production":
            if self.expose_worker_pid:
                raise ValueError("EXPOSE_WORKER_PID is a test setting; unset it in production")
            if "*" in self.cors_origins:
                raise ValueError("CORS_ORIGINS='*' is refused in production; list the origins")
            if self.bcrypt_rounds < 12:
                raise ValueError("BCRYPT_ROUNDS below 12 is refused in production")
            if weak_secret(self.jwt_secret):
                problem = "must be set" if self.jwt_secret is None else "is too weak"
                raise ValueError(
                    f"JWT_SECRET {problem} in production: at least {MIN_SECRET_LENGTH} random"
                    f" characters ({MIN_SECRET_DISTINCT}+ distinct, not a run such as abcdef or"
                    " 123456, not mostly repeats, no example word), e.g. from: openssl rand -hex 32"
                )
            if self.admin_password is not None and (
                normalize_password(self.admin_password.get_secret_value()) == DEV_ADMIN_PASSWORD
            ):
                raise ValueError("ADMIN_PASSWORD is make run's development default; set your own")
            if self.admin_password is not None and (
                len(normalize_password(self.admin_password.get_secret_value()))
                < MIN_ADMIN_PASSWORD_LENGTH
            ):
                raise ValueError(
                    f"ADMIN_PASSWORD shorter than {MIN_ADMIN_PASSWORD_LENGTH} characters is"
                    " refused in production"
                )
        if (self.admin_email is None) != (self.admin_password is None):
            raise ValueError("ADMIN_EMAIL and ADMIN_PASSWORD go together: set both or neither")
        if self.admin_password is not None:
            # UserCreate's rule, which ensure_admin applies: refused here, a worker that
            # cannot create the admin never starts.
            unusable = new_password_problem(self.admin_password.get_secret_value())
            if unusable is not None:
                raise ValueError(f"ADMIN_PASSWORD: {unusable}")
        if self.refresh_token_ttl <= self.access_token_ttl:
            raise ValueError("REFRESH_TOKEN_TTL must be longer than ACCESS_TOKEN_TTL")
        if self.job_stale_seconds < 3 * self.job_heartbeat_seconds:
            raise ValueError("JOB_STALE_SECONDS must be at least 3 x JOB_HEARTBEAT_SECONDS")
        return self


def weak_secret(secret: SecretStr | None) -> bool:
    """Missing, short, few distinct characters, mostly a run (``abcdef``, ``654321``), a block
    repeated (``qwertyuio`` four times), mostly repeats (a quarter or more of its 4-character
    pieces seen before in it: a character run padded with ``12345678``, a block repeated with
    a different end), or an example word: not a signing key. Cheap checks against typed-in
    keys, not an entropy test: random text of this length repeats a piece about never."""
    if secret is None:
        return True
    text = secret.get_secret_value()
    lowered = text.lower()
    steps = sum(abs(ord(b) - ord(a)) == 1 for a, b in pairwise(text))
    pieces = [text[i : i + 4] for i in range(len(text) - 3)]
    return (
        len(text) < MIN_SECRET_LENGTH
        or len(set(text)) < MIN_SECRET_DISTINCT
        or steps * 2 > len(text)
        or (text + text).find(text, 1) < len(text)  # periodic: a shorter block repeated
        or len(pieces) * 3 > len(set(pieces)) * 4
        or any(word in lowered for word in WEAK_SECRET_WORDS)
    )


def job_result_dir_error(settings: Settings) -> str | None:
    """Why the workers could not write export results there, or None, after creating it as
    the job runner would: found before gunicorn starts (deploy/start_gunicorn.py) rather than
    by every export job, each ``failed`` with INTERNAL_ERROR while the service looks healthy."""
    name = "JOB_RESULT_DIR"
    if not settings.job_result_dir:
        name += " (unset: jobs/ beside STORE_SOCKET, or memdb-jobs in the temp directory)"
    directory = settings.job_results_path
    try:
        directory.mkdir(mode=JOB_RESULT_DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError:
        return f"{name}: not a directory"
    except OSError as exc:
        return f"{name}: cannot create the directory: {exc.strerror}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{name}: the directory is not writable by this user"
    return None


@lru_cache
def get_settings() -> Settings:
    """The process's settings, parsed once."""
    return Settings()
