"""`stockguard bench engine`: coalesced Engine.hold against one EVALSHA per hold, same run."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from . import keys
from .engine import Engine
from .ids import fingerprint, new_id

CALLERS = 64
HOT_SKUS = ["hot-1"]
MANY_SKUS = [f"sku-{i:05d}" for i in range(10_000)]
STOCK = 1_000_000_000
TTL_MS = 600_000


async def _setup(engine: Engine, skus: list[str]) -> None:
    await engine.client.flushdb()
    await _stock(engine, skus)


async def _stock(engine: Engine, skus: list[str]) -> None:
    """One location and one channel; each SKU with STOCK units there."""
    await engine.define_location("wh1")
    await engine.define_channel("web", ["wh1"])
    for start in range(0, len(skus), 50):
        chunk = skus[start : start + 50]
        await asyncio.gather(*(engine.define_sku(s) for s in chunk))
        await asyncio.gather(*(engine.receive(s, "wh1", STOCK) for s in chunk))


async def _naive_hold(engine: Engine, sku: str) -> None:
    """What a plain client does: one EVALSHA per hold, no coalescing."""
    hold_id = new_id()
    p = keys.partition_of(sku)
    fp = fingerprint("web", None, TTL_MS, [(sku, 1)])
    op = [hold_id, fp, "web", "", TTL_MS, str(p), [[sku, 1]]]
    reply = await engine.scripts["hold"](keys.partition_keys(p), [msgspec.json.encode([op])])
    assert reply[0][0] == 0, reply


async def _engine_hold(engine: Engine, sku: str) -> None:
    await engine.hold("web", {sku: 1}, ttl_ms=TTL_MS)


async def _run(
    engine: Engine, op: Callable[[Engine, str], Awaitable[None]], skus: list[str], seconds: float
) -> tuple[int, float]:
    """CALLERS concurrent callers for `seconds`; returns (operations done, seconds taken)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        rng = random.Random()
        while time.perf_counter() < deadline:
            await op(engine, skus[rng.randrange(len(skus))])
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return done, time.perf_counter() - start


class Rate(msgspec.Struct, frozen=True):
    """One path's throughput, and the CPU each hold cost the server and this process."""

    holds_per_s: float
    server_us: float  # valkey-server / redis-server (INFO cpu), all its threads
    client_us: float  # this process: the callers, the client library, the engine


async def _server_cpu(client: Any) -> float:
    """Seconds of CPU the server (every node, for a cluster) has used since it started."""
    info = await client.info("cpu")
    nodes = [info] if "used_cpu_user" in info else list(info.values())
    return sum(float(n["used_cpu_user"]) + float(n["used_cpu_sys"]) for n in nodes)


async def _rates(
    engine: Engine,
    paths: Mapping[str, Callable[[Engine, str], Awaitable[None]]],
    skus: list[str],
    seconds: float,
    round_s: float = 0.5,
) -> dict[str, Rate]:
    """Throughput and CPU per hold of each path, measured in alternating rounds so that a
    noisy neighbour on a shared machine weighs on every path alike. The CPU per hold
    shows which side, the server or this process, bounds a path."""
    totals = {name: [0, 0.0, 0.0, 0.0] for name in paths}  # holds, seconds, server, client
    for _ in range(max(1, round(seconds / round_s))):
        for name, op in paths.items():
            server, client = await _server_cpu(engine.client), time.process_time()
            done, taken = await _run(engine, op, skus, round_s)
            total = totals[name]
            total[0] += done
            total[1] += taken
            total[2] += await _server_cpu(engine.client) - server
            total[3] += time.process_time() - client
    return {
        name: Rate(done / taken, 1e6 * server / done, 1e6 * client / done)
        for name, (done, taken, server, client) in totals.items()
    }


async def _sql_rowlock(dsn: str, seconds: float) -> float | None:
    """The SQL shop's reserve: UPDATE ... WHERE qty >= n plus the hold row, one transaction."""
    try:
        import psycopg
    except ImportError:
        return None
    try:
        setup = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        return None
    async with setup:
        await setup.execute("DROP TABLE IF EXISTS sg_bench_stock, sg_bench_hold")
        await setup.execute("CREATE TABLE sg_bench_stock (sku text PRIMARY KEY, qty bigint)")
        await setup.execute(
            "CREATE TABLE sg_bench_hold (id bigserial PRIMARY KEY, sku text, qty int, "
            "created_at timestamptz DEFAULT now())"
        )
        await setup.execute("INSERT INTO sg_bench_stock VALUES (%s, %s)", (HOT_SKUS[0], STOCK))
        connections = [await psycopg.AsyncConnection.connect(dsn) for _ in range(CALLERS)]
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller(conn: Any) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with conn.transaction():
                    cur = await conn.execute(
                        "UPDATE sg_bench_stock SET qty = qty - %s WHERE sku = %s AND qty >= %s",
                        (1, HOT_SKUS[0], 1),
                    )
                    if cur.rowcount == 1:
                        await conn.execute(
                            "INSERT INTO sg_bench_hold (sku, qty) VALUES (%s, %s)",
                            (HOT_SKUS[0], 1),
                        )
                done += 1

        start = time.perf_counter()
        try:
            await asyncio.gather(*(caller(c) for c in connections))
        finally:
            for conn in connections:
                await conn.close()
        rate = done / (time.perf_counter() - start)
        await setup.execute("DROP TABLE sg_bench_stock, sg_bench_hold")
        return rate


async def bench_engine(
    engine: Engine, seconds: float = 5.0, *, postgres_dsn: str | None = None, out: Any = print
) -> dict[str, float]:
    """Prints throughput and CPU per hold of each path, then the ratios, last lines as the
    issue specifies."""
    results: dict[str, float] = {}
    paths = {"naive": _naive_hold, "engine": _engine_hold}
    for workload, skus in (("hot-sku", HOT_SKUS), ("10k-sku", MANY_SKUS)):
        await _setup(engine, skus)
        for path, rate in (await _rates(engine, paths, skus, seconds)).items():
            results[f"{path} {workload}"] = rate.holds_per_s
            results[f"{path} {workload} server us"] = rate.server_us
            results[f"{path} {workload} client us"] = rate.client_us
            out(
                f"{path:>12} {workload:<8} {rate.holds_per_s:>10,.0f} holds/s  ({CALLERS} callers)"
                f"  CPU per hold: server {rate.server_us:5.1f} us, client {rate.client_us:5.1f} us"
            )
    await engine.client.flushdb()
    if postgres_dsn:
        sql_rate = await _sql_rowlock(postgres_dsn, seconds)
        if sql_rate is None:
            out(f"sql-rowlock: PostgreSQL not reachable at {postgres_dsn}, skipped")
        else:
            results["sql-rowlock hot-sku"] = sql_rate
            out(f"{'sql-rowlock':>12} hot-sku  {sql_rate:>10,.0f} holds/s  ({CALLERS} connections)")
    for workload in ("hot-sku", "10k-sku"):
        ratio = results[f"engine {workload}"] / results[f"naive {workload}"]
        out(f"engine/naive {workload} ratio: {ratio:.2f}")
    if "sql-rowlock hot-sku" in results:
        ratio = results["engine hot-sku"] / results["sql-rowlock hot-sku"]
        out(f"engine/sql-rowlock hot-sku ratio: {ratio:.2f}")
    return results
