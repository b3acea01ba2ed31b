"""Settings of the store process, from ``STORE_*`` environment variables (and CLI overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .protocol import MAX_FRAME_SIZE


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STORE_", extra="ignore")

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
    handshake_timeout: PositiveFloat = 10.0
    max_tables: PositiveInt = 1000
    data_dir: Path | None = None
    fsync: Literal["always", "everysec", "no"] = "everysec"  # any case
    # Compact the log into a new snapshot once it grows past this many bytes.
    log_rewrite_bytes: PositiveInt = 64 * 1024 * 1024
    max_memory: int = Field(default=0, ge=0)  # bytes; 0 = no limit
    # Any case (compose passes the API's LOG_LEVEL, which is usually lower case).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Log commands slower than this (milliseconds).
    slow_ms: float = Field(default=50.0, ge=0)  # 0: log every command
    # Default and ceiling of max_rows for update_where / delete_where.
    max_bulk_rows: PositiveInt = 10_000
    # Audit log bounds: entries kept, and their age in seconds (0 = no age bound).
    audit_max_entries: PositiveInt = 100_000
    audit_max_age: float = Field(default=30 * 24 * 3600.0, ge=0)
    # Seconds a scan cursor may go unread before it is freed (a slow client of a streamed
    # export pauses the worker's reads: past this its download is cut off). While it lasts
    # the cursor holds its table's id list (8 bytes a row; every cursor's together are capped).
    scan_idle: float = Field(default=300.0, gt=0, le=24 * 3600)

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
        if self.tcp:
            host, _, port = self.tcp.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("STORE_TCP must look like host:port")
        return self


def settings_errors(exc: ValidationError) -> str:
    """One line naming each bad setting and why (never its value: it may be a secret)."""
    named = ((".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors())
    return "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in named)
