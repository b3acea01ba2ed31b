"""Large-table figures, driving ``storeserver.engine.Engine`` directly in a fresh process.

100,000 users and 1,000,000 orders (``orders.user_id`` → ``users.id`` with a hash index and a
foreign key, as ``create_table`` declares them). Every insert goes through the wire codec first
(``encode`` then ``decode_body``), so the stored values are the objects the server would hold:
fresh strings and Decimals from msgpack, not literals shared between records.

Measures, in µs of engine time (``Engine.execute`` only, as wall time and as this thread's CPU
time; the table uses CPU time, which preemption on a shared machine does not inflate): one
user's orders through the ``user_id`` index, and the first page (limit 20) of the default sort
ascending and descending, 1000 times each.
Measures RSS per order record: (RSS after the orders - RSS before) / orders, after
``gc.collect()``. That delta holds the record dicts and their values, the table's id → record
map, the ``user_id`` hash index, and allocator slack. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from decimal import Decimal
from typing import Any

from storeserver.engine import Engine
from storeserver.memory import read_rss
from storeserver.protocol import Request, Result, decode_body, encode

from .store_driver import order_record

QUERIES = 1000


def through_wire(command: str, args: dict[str, Any]) -> Request:
    request = decode_body(encode(Request(1, command, args))[4:])
    assert isinstance(request, Request)
    return request


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered),
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_us": ordered[-1],
        "n": len(ordered),
    }


def timed(engine: Engine, requests: list[Request]) -> tuple[dict[str, Any], Any]:
    """Engine µs per request (wall and this thread's CPU), and µs to encode each reply."""
    wall_us, cpu_us, encode_us = [], [], []
    clock, cpu = time.perf_counter, time.thread_time
    result = None
    for req in requests:
        c0 = cpu()
        t0 = clock()
        result = engine.execute(req.command, req.args)
        t1 = clock()
        c1 = cpu()
        encode(Result(1, result))
        t2 = clock()
        wall_us.append((t1 - t0) * 1e6)
        cpu_us.append((c1 - c0) * 1e6)
        encode_us.append((t2 - t1) * 1e6)
    stats = {**percentiles(wall_us), "cpu": percentiles(cpu_us), "encode": percentiles(encode_us)}
    return stats, result


SHARED_REFS = 10
"""An object referenced this many times is shared (interned strings, cached values): 0 bytes."""


def deep_size(value: Any, seen: set[int]) -> int:
    """Bytes of ``value`` and what it holds, counting each object once and shared ones never."""
    if id(value) in seen or value is None or type(value) is bool:
        return 0
    if sys.getrefcount(value) > SHARED_REFS:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if type(value) is dict:
        size += sum(deep_size(v, seen) for v in value.values())
    elif type(value) is list:
        size += sum(deep_size(v, seen) for v in value)
    return size


def record_breakdown(record: dict[str, Any]) -> dict[str, int]:
    """``sys.getsizeof`` of one stored record's dict and each of its values (keys are shared)."""
    seen: set[int] = set()
    out = {"dict": sys.getsizeof(record)}
    seen.add(id(record))
    for key, value in record.items():
        out[key] = deep_size(value, seen)
    out["total"] = sum(out.values())
    return out


def build(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    engine = Engine(journal=False)  # as the server without persistence (or after each drain)
    out: dict[str, Any] = {"users_wanted": args.users, "orders_wanted": args.orders}
    rss_start = read_rss()
    engine.execute(
        "create_table",
        {
            "table": "users",
            "indexes": [{"field": "email", "unique": True, "casefold": True}],
            "hidden": ["password_hash"],
        },
    )
    t0 = time.perf_counter()
    user_ids: list[str] = []
    for i in range(args.users):
        record = {
            "email": f"user{i}@example.com",
            "full_name": f"User Number {i}",
            "role": "user",
            "is_active": True,
            "password_hash": "$2b$12$" + f"{i:053d}",
        }
        req = through_wire("insert", {"table": "users", "record": record})
        user_ids.append(engine.execute(req.command, req.args)["id"])
    out["users_build_s"] = time.perf_counter() - t0
    gc.collect()
    rss_before = read_rss()
    out["rss_users_bytes"] = rss_before - rss_start

    engine.execute(
        "create_table",
        {
            "table": "orders",
            "indexes": [{"field": "user_id"}],
            "foreign_keys": [{"field": "user_id", "table": "users"}],
        },
    )
    t0 = time.perf_counter()
    engine_s = 0.0
    built = 0
    clock, cpu = time.perf_counter, time.thread_time
    cpu0 = cpu()
    for built in range(1, args.orders + 1):
        record = order_record(rng, user_ids[rng.randrange(len(user_ids))])
        req = through_wire("insert", {"table": "orders", "record": record})
        t1 = clock()
        engine.execute(req.command, req.args)
        engine_s += clock() - t1
        if built % 50_000 == 0 and clock() - t0 > args.budget_s:
            break
    out["orders_built"] = built
    out["orders_build_s"] = time.perf_counter() - t0
    out["orders_build_cpu_s"] = cpu() - cpu0
    out["engine_insert_us"] = engine_s / built * 1e6
    out["build_cut_short"] = built < args.orders
    gc.collect()
    rss_after = read_rss()
    out["rss_total_bytes"] = rss_after
    out["rss_orders_bytes"] = rss_after - rss_before
    out["rss_per_order_bytes"] = (rss_after - rss_before) / built

    sample = engine.execute("find", {"table": "orders", "limit": 1})["items"][0]
    out["sample_order"] = {k: str(v) for k, v in sample.items()}
    out["order_breakdown_bytes"] = record_breakdown(sample)

    # One user's orders through the user_id index.
    picks = [user_ids[rng.randrange(len(user_ids))] for _ in range(QUERIES)]
    requests = [
        through_wire("find", {"table": "orders", "where": [["user_id", "eq", uid]]})
        for uid in picks
    ]
    out["by_user"], result = timed(engine, requests)
    out["by_user"]["mean_hits"] = statistics.mean(
        engine.execute("count", {"table": "orders", "where": [["user_id", "eq", u]]})
        for u in picks[:100]
    )
    # First page of the default order (creation order), ascending and descending.
    for name, sort in (("page_asc", None), ("page_desc", [["created_at", "desc"]])):
        page_args: dict[str, Any] = {"table": "orders", "limit": 20}
        if sort:
            page_args["sort"] = sort
        out[name], result = timed(engine, [through_wire("find", page_args)] * QUERIES)
        out[name]["args"] = page_args
        out[name]["items"] = len(result["items"])
    out["decimal_check"] = isinstance(sample["total_price"], Decimal)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.large_table")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--budget-s", type=float, default=150.0, help="stop building orders after")
    args = parser.parse_args(argv)
    print(json.dumps(build(args)), flush=True)


if __name__ == "__main__":
    main()
