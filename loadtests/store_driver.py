"""A low-overhead load driver for the store, run by ``bench_store`` as a child process.

It keeps ``--conns`` connections open (raw asyncio Protocol on uvloop). Every request frame is
encoded once, up front, with ``storeserver.protocol.encode``; in the hot loop a reply is counted
from its 4-byte length prefix only, and its first body byte tells a result (a 3-array, 0x93)
from an error (a 5-array, 0x95). No msgpack is decoded while measuring.

Each connection keeps ``depth`` requests in flight: it starts with ``depth`` frames and sends one
more for each reply, until its share of ``ops`` is answered. ``depth=1`` is the not-pipelined
case (send, wait for the reply, send the next).

Talks to its parent with one JSON object per line: after connecting it prints
``{"ready": true}``; then reads ``{"kind", "depth", "ops"}`` on stdin, runs it and prints
``{"ops", "errors", "start", "end", "cpu"}`` (``start``/``end`` from the system-wide
monotonic clock, ``cpu`` its own CPU seconds). An empty line or EOF ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import struct
import sys
import time
from decimal import Decimal
from typing import Any

from storeserver.protocol import PROTOCOL_VERSION, Hello, Request, encode

_LENGTH = struct.Struct(">I")
_ERROR_ARRAY = 0x95  # [2, rid, code, message, details]
_PRODUCTS = ["Widget", "Gadget", "Sprocket", "Gizmo", "Doohickey", "Thingamajig", "Whatsit"]
_STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled"]

GET_IDS = 100_000
FK_USERS = 1_000


def preload_id(i: int) -> str:
    return f"o{i:07d}"


def fk_user_id(i: int) -> str:
    return f"u{i:05d}"


def order_record(rng: random.Random, user_id: str) -> dict[str, Any]:
    quantity = rng.randint(1, 9)
    cents = rng.randint(199, 49_999)
    return {
        "user_id": user_id,
        "product_name": f"{rng.choice(_PRODUCTS)} {rng.randint(1, 500)}",
        "quantity": quantity,
        "total_price": Decimal(cents * quantity) / 100,
        "status": rng.choice(_STATUSES),
    }


def _frame(command: str, args: dict[str, Any]) -> bytes:
    # The request id is never looked at: the driver counts replies, it does not match them.
    return encode(Request(1, command, args))


def build_pools(args: argparse.Namespace) -> dict[str, list[bytes]]:
    rng = random.Random(args.seed)
    ids = [preload_id(i) for i in range(args.get_ids)]
    rng.shuffle(ids)
    mine = range(args.index, args.get_ids, args.drivers)
    return {
        "get": [_frame("get", {"table": args.get_table, "id": i}) for i in ids],
        "insert": [
            _frame("insert", {"table": args.insert_table, "record": order_record(rng, "u1")})
            for _ in range(1024)
        ],
        "insert_fk": [
            _frame(
                "insert",
                {
                    "table": args.fk_table,
                    "record": order_record(rng, fk_user_id(rng.randrange(FK_USERS))),
                },
            )
            for _ in range(1024)
        ],
        "preload": [
            _frame(
                "insert",
                {
                    "table": args.get_table,
                    "record": {"id": preload_id(i), **order_record(rng, "u1")},
                },
            )
            for i in mine
        ],
    }


class Run:
    """One measured run over all connections."""

    def __init__(self, pool: list[bytes], depth: int, done: asyncio.Future[None]) -> None:
        self.pool = pool
        self.depth = depth
        self.done = done
        self.open = 0
        self.errors = 0


class DriverConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.greeted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.position = 0  # where this connection reads the frame pool
        self.run: Run | None = None
        self.to_send = 0
        self.to_receive = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport  # type: ignore[assignment]
        transport.write(encode(Hello(PROTOCOL_VERSION, None)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.greeted.done():
            self.greeted.set_exception(ConnectionError("store closed the connection"))
        if self.run is not None and not self.run.done.done():
            self.run.done.set_exception(ConnectionError("store closed the connection"))

    def start(self, run: Run, ops: int, position: int) -> None:
        self.run = run
        self.position = position
        self.to_send = ops
        self.to_receive = ops
        if ops:
            run.open += 1
            self.send(min(run.depth, ops))

    def send(self, count: int) -> None:
        pool = self.run.pool  # type: ignore[union-attr]
        pos = self.position % len(pool)
        self.to_send -= count
        if count == 1:
            self.transport.write(pool[pos])  # type: ignore[union-attr]
        else:
            chunk = pool[pos : pos + count]
            while len(chunk) < count:
                chunk += pool[: count - len(chunk)]
            self.transport.write(b"".join(chunk))  # type: ignore[union-attr]
        self.position = pos + count

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        size = len(buf)
        pos = 0
        replies = errors = 0
        while size - pos >= 4:
            end = pos + 4 + _LENGTH.unpack_from(buf, pos)[0]
            if end > size:
                break
            if buf[pos + 4] == _ERROR_ARRAY:
                errors += 1
            replies += 1
            pos = end
        self.buffer = buf[pos:] if pos < size else b""
        if not replies:
            return
        if not self.greeted.done():
            self.greeted.set_result(errors == 0)
            replies -= 1
            if not replies:
                return
        run = self.run
        assert run is not None
        run.errors += errors
        self.to_receive -= replies
        more = min(replies, self.to_send)
        if more:
            self.send(more)
        elif self.to_receive <= 0:
            run.open -= 1
            if run.open == 0:
                run.done.set_result(None)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pools = build_pools(args)
    conns: list[DriverConnection] = []
    for _ in range(args.conns):
        _, conn = await loop.create_unix_connection(DriverConnection, args.socket)
        conns.append(conn)
    if not all(await asyncio.gather(*(c.greeted for c in conns))):
        raise SystemExit("the store refused the handshake")
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            break
        cmd = json.loads(line)
        run = Run(pools[cmd["kind"]], int(cmd["depth"]), loop.create_future())
        ops = int(cmd["ops"])
        share, extra = divmod(ops, len(conns))
        cpu0 = _cpu()
        start = time.monotonic()
        position = 0  # consecutive windows of the pool: a preload inserts each id once
        for k, conn in enumerate(conns):
            conn.start(run, share + (k < extra), position)
            position += share + (k < extra)
        if run.open:
            await run.done
        end = time.monotonic()
        cpu = _cpu() - cpu0
        result = {"ops": ops, "errors": run.errors, "start": start, "end": end, "cpu": cpu}
        print(json.dumps(result), flush=True)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.store_driver")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--conns", type=int, default=25)
    parser.add_argument("--index", type=int, default=0, help="this driver's number")
    parser.add_argument("--drivers", type=int, default=1, help="how many drivers run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--get-ids", type=int, default=GET_IDS)
    parser.add_argument("--get-table", default="bench_get")
    parser.add_argument("--insert-table", default="bench_insert")
    parser.add_argument("--fk-table", default="bench_orders")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(drive(args))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent cleans up
        sys.exit(130)


if __name__ == "__main__":
    main()
