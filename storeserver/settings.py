"""Settings of the store process, from ``STORE_*`` environment variables (and CLI overrides)."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .client import check_unix_path, parse_address
from .protocol import MAX_FRAME_SIZE

HOUR = 3600
DAY = 24 * HOUR
GIB = 1 << 30


MIN_TCP_SECRET_LENGTH = 16


class StoreSettings(BaseSettings):
    # An empty variable (STORE_DATA_DIR= in a .env file) means unset, as on the API side:
    # Path("") would be the working directory, persistence switched on where nobody asked.
    # allow_inf_nan: a nan was refused as "should be less than or equal to 3600".
    model_config = SettingsConfigDict(
        env_prefix="STORE_", extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    socket: Path = Path("run/store.sock")
    # Permission bits of the Unix socket, in octal (STORE_SOCKET_MODE=0660): owner-only unless
    # widened on purpose.
    socket_mode: int = 0o600
    # "host:port" to also listen on TCP (for API hosts on other machines); needs ``secret``.
    tcp: str | None = None
    secret: str | None = Field(default=None, repr=False)
    # At least 1 MiB: smaller would refuse the API's own requests (bodies up to MAX_BODY_BYTES).
    max_frame_bytes: int = Field(default=MAX_FRAME_SIZE, ge=1 << 20, le=1 << 30)
    # Seconds a client has from connecting to a HELLO the store accepts, else it is closed.
    handshake_timeout: float = Field(default=10.0, gt=0, le=HOUR)
    # Ceilings far past any real use: past 64 bits a value could not even be sent in ``stats``.
    max_tables: int = Field(default=1000, ge=1, le=1_000_000)
    data_dir: Path | None = None
    fsync: Literal["always", "everysec", "no"] = "everysec"  # any case
    # Compact the log into a new snapshot once it grows past this many bytes.
    log_rewrite_bytes: int = Field(default=64 * 1024 * 1024, ge=1, le=64 * GIB)
    max_memory: int = Field(default=0, ge=0, le=16 * 1024 * GIB)  # bytes; 0 = no limit
    # Bytes of encoded ``get`` replies kept for reuse (see replycache); 0 turns it off.
    reply_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0, le=64 * GIB)
    # Any case (compose passes the API's LOG_LEVEL, which is usually lower case).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Log commands slower than this (milliseconds).
    slow_ms: float = Field(default=50.0, ge=0, le=DAY * 1000)  # 0: log every command
    # Default and ceiling of max_rows for update_where / delete_where.
    max_bulk_rows: int = Field(default=10_000, ge=1, le=10_000_000)
    # Audit log bounds: entries kept, and their age in seconds (0 = no age bound).
    audit_max_entries: int = Field(default=100_000, ge=1, le=10_000_000)  # ~450 bytes each (README)
    audit_max_age: float = Field(default=30 * DAY, ge=0, le=10 * 365 * DAY)
    # Seconds a scan cursor may go unread before it is freed (a slow client of a streamed
    # export pauses the worker's reads: past this its download is cut off). While it lasts
    # the cursor holds its table's id list (8 bytes a row; every cursor's together are capped).
    scan_idle: float = Field(default=300.0, gt=0, le=DAY)

    @field_validator("socket", mode="before")
    @classmethod
    def _unix_path(cls, value: object) -> object:
        """The forms the API reads STORE_SOCKET in, so one variable serves both: a path or
        ``unix:/path``. The store listens on TCP only through STORE_TCP."""
        if not isinstance(value, str | PurePath):
            return value
        try:
            kind, where = parse_address(str(value))
        except ValueError:  # its message quotes the value: settings errors never do
            kind, where = "", None
        if kind == "tcp":
            raise ValueError(
                "the store listens on a Unix socket (a path or unix:/path); for TCP set"
                " STORE_TCP=host:port and give the API STORE_SOCKET=tcp://host:port"
            )
        if not where:
            raise ValueError("a store socket is a path or unix:/path")
        # QA: "AF_UNIX path too long" at start, naming no setting.
        return check_unix_path(where)

    @field_validator("secret", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        """A blank secret is no secret (a stray space in an .env line): 20 spaces passed the
        length check STORE_TCP makes (QA)."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, value: object) -> object:
        """Empty is unset (no persistence), as an empty STORE_DATA_DIR is, also from
        ``--data-dir ""``; blank is refused, as it is for the other settings: it persisted
        into the working directory, or into one named " " (QA)."""
        if isinstance(value, str) and not value:
            return None
        if isinstance(value, str) and not value.strip():
            raise ValueError("a blank path: leave it empty for no persistence")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path | None) -> Path | None:
        """Absolute, so the snapshot path the store answers means the same file to whoever
        reads it: a backup run from another directory copied that directory's ``data/``,
        another instance's (QA)."""
        return None if value is None else value.absolute()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("fsync", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                mode = int(value, 8)
            except ValueError:
                raise ValueError(
                    "STORE_SOCKET_MODE must be octal permission bits, e.g. 0600"
                ) from None
            if not 0 <= mode <= 0o777:
                raise ValueError("STORE_SOCKET_MODE must be between 0000 and 0777")
            return mode
        return value

    @model_validator(mode="after")
    def _tcp_needs_secret(self) -> StoreSettings:
        # A TCP listener without a secret would hand every table to anyone who can reach it.
        if self.tcp and not self.secret:
            raise ValueError("STORE_TCP requires STORE_SECRET (shared secret for the handshake)")
        if self.tcp and self.secret and len(self.secret) < MIN_TCP_SECRET_LENGTH:
            # The secret is all that guards the port: one of a few characters is guessed
            # online (each wrong guess costs a connection, nothing more).
            raise ValueError(
                f"STORE_SECRET must be at least {MIN_TCP_SECRET_LENGTH} characters with"
                " STORE_TCP (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if self.tcp:
            # int() alone would take 99999, which asyncio turns into port 34463 (mod 65536).
            address = self.tcp_address
            if address is None or not address[0] or not 1 <= address[1] <= 65535:
                raise ValueError(
                    "STORE_TCP must look like host:port ([host]:port for IPv6),"
                    " with a port of 1 to 65535"
                )
        return self

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """STORE_TCP as ``(host, port)``, read as the client reads a store address: an IPv6
        host loses its brackets (``[::1]:7000``), which the resolver would not take."""
        if not self.tcp:
            return None
        try:
            kind, target = parse_address(self.tcp)
        except ValueError:  # its message quotes the value: settings errors never do
            return None
        return target if kind == "tcp" else None


def settings_errors(exc: ValidationError) -> str:
    """One line naming each bad setting by its environment variable, and why (never its
    value: it may be a secret). Works for the API's settings too (no prefix)."""
    # pydantic titles the error with the model's name: the store's variables carry STORE_.
    prefix = "STORE_" if exc.title == StoreSettings.__name__ else ""
    named = ((f"{prefix}{e['loc'][0]}".upper() if e["loc"] else "", e["msg"]) for e in exc.errors())
    return "; ".join(f"{name}: {msg}" if name else msg for name, msg in named)
