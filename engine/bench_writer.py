"""`stockguard bench writer`: the writer's persisted moves/s against a raw insert of the same rows.

One run pre-fills every partition's outbox with real moves (concurrent Engine.receive
calls, so the entries are exactly what the coalescing engine writes), then, for SQLite
and for PostgreSQL when reachable, measures in alternating rounds, each into an empty
store of its own:

- writer: a Writer draining the whole outbox (setup, then step until it returns 0):
  Redis reads, parsing, one transaction per pass, acknowledgements;
- store-write: the same rows, already parsed, through a second Store's `write`, one call
  per writer pass (the store's own path without Redis; shown to split the gap);
- raw-insert, the ceiling: the same rows, already parsed and turned into parameter
  tuples, inserted straight through the driver (sqlite3 / psycopg) with the store's SQL
  and connection settings, in exactly the writer's batches (the rows each writer pass
  wrote), one transaction per batch.

The ceiling is the raw insert, not `Store.write`: a fresh Store would charge the ceiling
with the store's row-to-tuple conversion and its worker-thread hop, which are costs of
getting moves into the database that a better writer/store could remove, so they belong
on the measured side. Only the database's own work is left in the ceiling.

Then the lag: a running Writer (SQLite) while a producer issues receives at a sustained
5,000 moves/s, sampling `Writer.lag().oldest_age_ms` every 50 ms.

The ratio lines come last: `writer/raw-insert sqlite ratio: X.XX`, then the postgres one.
The caller guarantees a scratch Redis database: it is flushed before and after.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from . import keys
from .engine import Engine
from .ledger import MoveRow, Rows, rows
from .store import Store, insert_sql
from .writer import GROUP, Writer

CALLERS = 256
SKUS = [f"wb-{i:04d}" for i in range(400)]
LOCATION = "wh1"
CHANNEL = "web"
SAMPLE_S = 0.05
TICK_S = 0.01

Out = Callable[[str], Any]
Batches = list[list[MoveRow]]
# A measured path: (client, empty open store, its file or schema, the writer's batches) -> s
Measure = Callable[[Any, Store, str, Batches], Awaitable[float]]


# -- the outbox ---------------------------------------------------------------------------


async def _catalog(engine: Engine) -> None:
    """A scratch database with one location, one channel, the SKUs, and an empty outbox."""
    await engine.client.flushdb()
    await engine.define_location(LOCATION)
    await engine.define_channel(CHANNEL, [LOCATION])
    for start in range(0, len(SKUS), 50):
        await asyncio.gather(*(engine.define_sku(s) for s in SKUS[start : start + 50]))
    for p in range(keys.PARTITIONS):  # only moves in the outbox: drop catalog and SKU events
        await engine.client.xtrim(keys.outbox(p), maxlen=0, approximate=False)


async def _prefill(engine: Engine, moves: int) -> None:
    issued = 0

    async def caller(first: int) -> None:
        nonlocal issued
        i = first
        while issued < moves:
            issued += 1
            await engine.receive(SKUS[i % len(SKUS)], LOCATION, 1)
            i += CALLERS

    await asyncio.gather(*(caller(i) for i in range(CALLERS)))


async def _entries(client: Any) -> list[list[tuple[str, dict[str, str]]]]:
    return [list(await client.xrange(keys.outbox(p))) for p in range(keys.PARTITIONS)]


def _writer_batches(entries: list[list[tuple[str, dict[str, str]]]], batch: int) -> Batches:
    """The rows of each writer pass: `batch` entries of every partition, in partition order
    (what Writer.step takes when nothing else reads the group)."""
    out: Batches = []
    for start in range(0, max(map(len, entries)), batch):
        ledger = Rows()
        for p, partition in enumerate(entries):
            ledger.extend(rows(p, partition[start : start + batch]))
        if len(ledger) != len(ledger.moves):
            raise RuntimeError("the pre-filled outbox holds events other than moves")
        out.append(ledger.moves)
    return out


async def _reset_group(client: Any) -> None:
    for p in range(keys.PARTITIONS):
        await client.xgroup_destroy(keys.outbox(p), GROUP)


# -- the stores ---------------------------------------------------------------------------


class _Target:
    """Empty stores of one kind, each created for one measurement and removed afterwards."""

    def __init__(self, kind: str, sqlite_dir: Path, dsn: str | None, admin: Any = None) -> None:
        self.kind, self.sqlite_dir, self.dsn, self.admin = kind, sqlite_dir, dsn, admin
        self._made: list[str] = []

    async def new(self, name: str) -> tuple[Store, str]:
        """An open, migrated, empty store, and its location (file path or schema)."""
        if self.kind == "sqlite":
            path = self.sqlite_dir / f"bench-writer-{name}-{uuid.uuid4().hex[:8]}.db"
            self._made.append(str(path))
            store = Store.from_url(f"sqlite:///{path}")
        else:
            assert self.dsn is not None
            schema = f"sg_bench_{uuid.uuid4().hex[:12]}"
            await self.admin.execute(f"CREATE SCHEMA {schema}")
            self._made.append(schema)
            sep = "&" if "?" in self.dsn else "?"
            store = Store.from_url(f"{self.dsn}{sep}options={quote(f'-csearch_path={schema}')}")
        await store.open()
        return store, self._made[-1]

    async def cleanup(self) -> None:
        for made in self._made:
            if self.kind == "sqlite":
                for suffix in ("", "-wal", "-shm"):
                    Path(made + suffix).unlink(missing_ok=True)
            else:
                await self.admin.execute(f"DROP SCHEMA IF EXISTS {made} CASCADE")
        self._made.clear()


async def _postgres_admin(dsn: str | None, out: Out) -> Any:
    if not dsn:
        return None
    try:
        import psycopg
    except ImportError:
        out("postgres: psycopg not installed (pip install 'stockguard[postgres]'), skipped")
        return None
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        out(f"postgres: not reachable at {dsn}, skipped")
        return None


# -- the three paths: each returns the seconds it took ----------------------------------------


def _writer(client: Any, store: Store) -> Writer:
    return Writer(client, store, consumer="bench-writer")  # the default batch: as deployed


async def _writer_path(client: Any, store: Store, _: str, __: Batches) -> float:
    await _reset_group(client)
    writer = _writer(client, store)
    start = time.perf_counter()
    await writer.setup()
    while await writer.step():
        pass
    return time.perf_counter() - start


async def _store_write_path(_: Any, store: Store, __: str, batches: Batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        await store.write(Rows(moves=batch))
    return time.perf_counter() - start


def _raw_sqlite(path: str, params: list[list[tuple[Any, ...]]]) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        sql = insert_sql("moves", MoveRow, "?")
        start = time.perf_counter()
        for values in params:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(sql, values)
            db.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        db.close()


async def _raw_postgres(dsn: str, params: list[list[tuple[Any, ...]]]) -> float:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
        sql = insert_sql("moves", MoveRow, "%s")
        start = time.perf_counter()
        for values in params:
            async with db.transaction(), db.cursor() as cursor:
                await cursor.executemany(sql, values)
        return time.perf_counter() - start


def _raw_path(params: list[list[tuple[Any, ...]]]) -> Measure:
    async def raw(_: Any, store: Store, where: str, __: Batches) -> float:
        # The store only created the schema; the driver does the inserts on its own connection.
        if store.url.startswith("sqlite"):
            return await asyncio.to_thread(_raw_sqlite, where, params)
        return await _raw_postgres(store.url, params)

    return raw


async def _measure(
    client: Any, target: _Target, paths: dict[str, Measure], batches: Batches, rounds: int
) -> dict[str, float]:
    """moves/s of each path, in alternating rounds, each into its own empty store; and the
    rows each store held afterwards (`<path> rows`, the last round's)."""
    expected = sum(map(len, batches))
    taken = dict.fromkeys(paths, 0.0)
    counts: dict[str, float] = {}
    for _ in range(rounds):
        for name, path in paths.items():
            store, where = await target.new(name)
            try:
                taken[name] += await path(client, store, where, batches)
                written = await store.count("moves")
            finally:
                await store.close()
            if written != expected:
                raise RuntimeError(f"{target.kind} {name}: {written} moves of {expected}")
            counts[f"{name} rows"] = written
        await target.cleanup()
    return {name: expected * rounds / seconds for name, seconds in taken.items()} | counts


# -- the lag ------------------------------------------------------------------------------


def _percentile(samples: list[int], q: float) -> int:
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


async def _produce(engine: Engine, rate: int, seconds: float) -> tuple[int, float]:
    """Open-loop receives at `rate`/s in bursts every TICK_S; returns (issued, seconds)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    issued, start = 0, loop.time()
    while (elapsed := loop.time() - start) < seconds:
        for _ in range(int(elapsed * rate) + 1 - issued):
            task = asyncio.create_task(engine.receive(SKUS[issued % len(SKUS)], LOCATION, 1))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            issued += 1
        await asyncio.sleep(TICK_S)
    taken = loop.time() - start
    await asyncio.gather(*tasks)
    return issued, taken


async def _lag(
    engine: Engine, store: Store, rate: int, seconds: float
) -> tuple[list[int], int, float]:
    await _catalog(engine)
    writer = Writer(engine.client, store, consumer="bench-lag")
    await writer.setup()
    stop = asyncio.Event()
    running = asyncio.create_task(writer.run(stop, idle_ms=5))
    producing = asyncio.create_task(_produce(engine, rate, seconds))
    samples: list[int] = []
    loop = asyncio.get_running_loop()
    next_sample = loop.time()
    while not producing.done():
        samples.append((await writer.lag()).oldest_age_ms)
        next_sample += SAMPLE_S
        await asyncio.sleep(max(0.0, next_sample - loop.time()))
    issued, taken = await producing
    stop.set()
    await running
    while await writer.step():
        pass
    if (written := await store.count("moves")) != issued:
        raise RuntimeError(f"lag run: {written} moves persisted of {issued}")
    return samples, issued, taken


# -- the benchmark ------------------------------------------------------------------------


async def bench_writer(
    client: Any,
    *,
    sqlite_dir: Path,
    postgres_dsn: str | None,
    moves: int = 100_000,
    out: Out = print,
    rounds: int = 3,
    lag_rate: int = 5_000,
    lag_seconds: float = 5.0,
) -> dict[str, float]:
    """Prints moves/s of the writer and of a raw insert per store, the writer's lag at a
    sustained rate, and the ratio lines last, as the issue specifies."""
    engine = Engine(client)
    sqlite_dir.mkdir(parents=True, exist_ok=True)
    await _catalog(engine)
    start = time.perf_counter()
    await _prefill(engine, moves)
    entries = await _entries(client)
    batches = _writer_batches(entries, _writer(client, Store()).batch)
    out(
        f"outbox: {moves:,} moves in {sum(map(len, entries)):,} entries over "
        f"{keys.PARTITIONS} partitions, pre-filled in {time.perf_counter() - start:.1f} s; "
        f"{len(batches)} writer passes, {rounds} rounds"
    )
    if sum(map(len, batches)) != moves:
        raise RuntimeError(f"the outbox holds {sum(map(len, batches))} moves, not {moves}")
    params = [[msgspec.structs.astuple(r) for r in batch] for batch in batches]
    paths = {
        "writer": _writer_path,
        "store-write": _store_write_path,
        "raw-insert": _raw_path(params),
    }
    results: dict[str, float] = {}
    admin = await _postgres_admin(postgres_dsn, out)
    targets = [_Target("sqlite", sqlite_dir, None)]
    if admin is not None:
        targets.append(_Target("postgres", sqlite_dir, postgres_dsn, admin))
    try:
        for target in targets:
            try:
                rates = await _measure(client, target, paths, batches, rounds)
            finally:
                await target.cleanup()
            for name, rate in rates.items():
                results[f"{target.kind} {name}"] = rate
                if name in paths:
                    out(f"{target.kind:>8} {name:<11} {rate:>10,.0f} moves/s")
    finally:
        if admin is not None:
            await admin.close()
    results.update(await _lag_report(engine, sqlite_dir, lag_rate, lag_seconds, out))
    await client.flushdb()
    for target in targets:
        ratio = results[f"{target.kind} writer"] / results[f"{target.kind} raw-insert"]
        results[f"{target.kind} ratio"] = ratio
        out(f"writer/raw-insert {target.kind} ratio: {ratio:.2f}")
    return results


async def _lag_report(
    engine: Engine, sqlite_dir: Path, rate: int, seconds: float, out: Out
) -> dict[str, float]:
    target = _Target("sqlite", sqlite_dir, None)
    store, _ = await target.new("lag")
    try:
        samples, issued, taken = await _lag(engine, store, rate, seconds)
    finally:
        await store.close()
        await target.cleanup()
    p50, p99, worst = (_percentile(samples, q) for q in (0.5, 0.99, 1.0))
    out(
        f"writer lag at {issued / taken:,.0f} moves/s (target {rate:,}) for {taken:.1f} s, "
        f"{len(samples)} samples: p50 {p50} ms, p99 {p99} ms, max {worst} ms"
    )
    return {"lag rate": issued / taken, "lag p50 ms": p50, "lag p99 ms": p99, "lag max ms": worst}
