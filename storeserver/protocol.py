"""Sans-IO codec for the store's wire protocol: bytes in, messages out. No sockets, no asyncio.

Frame format
------------
Every frame is a 4-byte unsigned big-endian length N followed by N bytes of msgpack. N is at
most ``max_frame_size`` (default 16 MiB); a larger announced length is a protocol error, raised
as soon as the header arrives, so a hostile peer cannot make us buffer it.

Messages (each a msgpack array)
-------------------------------
- ``["HELLO", version, payload]``: the first frame each way. The client's payload is its auth
  secret (a string, or nil); the server's payload is a map of server facts. A wrong version or
  secret closes the connection.
- ``[0, request_id, command, args]``: a request. ``request_id`` is an unsigned int chosen by the
  client; it is echoed back, so one connection can carry many requests in flight.
- ``[1, request_id, result]``: a successful reply.
- ``[2, request_id, code, message, details]``: a failed reply; ``code`` is a
  ``storeserver.errors`` code.

Values are msgpack's types plus ``decimal.Decimal`` as extension type 1 (its canonical string in
ASCII); only finite decimals are accepted. Map keys must be strings.

Anything that does not decode to one of these shapes raises ``ProtocolError``; callers close the
connection it came from, and only that one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import msgpack

from .errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME_SIZE = 16 * 1024 * 1024
HELLO = "HELLO"

_HEADER = struct.Struct(">I")
_DECIMAL_EXT = 1
_REQUEST, _RESULT, _ERROR = 0, 1, 2


@dataclass(slots=True, frozen=True)
class Hello:
    version: int
    payload: Any


@dataclass(slots=True, frozen=True)
class Request:
    request_id: int
    command: str
    args: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Result:
    request_id: int
    value: Any


@dataclass(slots=True, frozen=True)
class Error:
    request_id: int
    code: str
    message: str
    details: dict[str, Any]


Message = Hello | Request | Result | Error


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ProtocolError("only finite decimals can be encoded")
        return msgpack.ExtType(_DECIMAL_EXT, str(obj).encode("ascii"))
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _DECIMAL_EXT:
        raise ProtocolError(f"unknown extension type {code}")
    try:
        value = Decimal(data.decode("ascii"))
    except (UnicodeDecodeError, InvalidOperation) as exc:
        raise ProtocolError("malformed decimal") from exc
    if not value.is_finite():
        raise ProtocolError("non-finite decimal")
    return value


def _pack(obj: list[Any]) -> bytes:
    try:
        body = msgpack.packb(obj, default=_default, use_bin_type=True)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from exc
    return _HEADER.pack(len(body)) + body


def encode(message: Message) -> bytes:
    """One complete frame (header and body) for ``message``."""
    if isinstance(message, Request):
        return _pack([_REQUEST, message.request_id, message.command, message.args])
    if isinstance(message, Result):
        return _pack([_RESULT, message.request_id, message.value])
    if isinstance(message, Error):
        return _pack(
            [_ERROR, message.request_id, message.code, message.message, message.details]
        )
    if isinstance(message, Hello):
        return _pack([HELLO, message.version, message.payload])
    raise TypeError(f"not a message: {message!r}")


def _is_request_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**63


def _to_message(obj: Any) -> Message:
    if not isinstance(obj, list) or not obj:
        raise ProtocolError("a message must be a non-empty array")
    kind = obj[0]
    if kind == _REQUEST and len(obj) == 4:
        _, rid, command, args = obj
        if _is_request_id(rid) and isinstance(command, str) and isinstance(args, dict):
            return Request(rid, command, args)
    elif kind == _RESULT and len(obj) == 3:
        if _is_request_id(obj[1]):
            return Result(obj[1], obj[2])
    elif kind == _ERROR and len(obj) == 5:
        _, rid, code, message, details = obj
        if (
            _is_request_id(rid)
            and isinstance(code, str)
            and isinstance(message, str)
            and isinstance(details, dict)
        ):
            return Error(rid, code, message, details)
    elif kind == HELLO and len(obj) == 3:
        if type(obj[1]) is int:
            return Hello(obj[1], obj[2])
    raise ProtocolError("malformed message")


def decode_body(body: bytes | memoryview) -> Message:
    """Decode one frame's body (without its length header)."""
    try:
        obj = msgpack.unpackb(body, ext_hook=_ext_hook, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}") from exc
    return _to_message(obj)


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get back the complete messages.

    Bytes of an incomplete frame stay buffered until the rest arrives. After a
    ``ProtocolError`` the stream cannot be resynchronised: discard the decoder and the
    connection.
    """

    __slots__ = ("_buffer", "_max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._max_frame_size = max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        size = len(buffer)
        pos = 0
        view = memoryview(buffer)
        try:
            while size - pos >= 4:
                (length,) = _HEADER.unpack_from(buffer, pos)
                if length > self._max_frame_size:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self._max_frame_size}"
                    )
                end = pos + 4 + length
                if end > size:
                    break
                messages.append(decode_body(view[pos + 4 : end]))
                pos = end
        finally:
            view.release()
        if pos:
            del buffer[:pos]
        return messages
