"""Kill test: the writer is SIGKILLed at random points under load; the ledger still ends with
every move exactly once and agrees with Redis."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from typing import Any

import pytest
from helpers import setup_shop

from engine import Engine, keys
from engine.errors import StockguardError
from engine.store import Store
from engine.writer import Writer

pytestmark = pytest.mark.slow
SKUS = [f"K{i}" for i in range(24)]  # every partition
OPERATIONS = 10_000


class Producer:
    """Mixed operations through the engine, counting the moves they commit."""

    def __init__(self, engine: Engine, seed: int) -> None:
        self.engine = engine
        self.rng = random.Random(seed)
        self.moves = 0

    async def one(self) -> None:
        rng, engine = self.rng, self.engine
        sku = rng.choice(SKUS)
        kind = rng.choices(["receive", "hold", "adjust", "transfer"], [3, 6, 1, 1])[0]
        try:
            if kind == "receive":
                await engine.receive(sku, "wh1", rng.randint(1, 5))
                self.moves += 1
            elif kind == "adjust":
                await engine.adjust(sku, "wh1", -1, reason="damaged")
                self.moves += 1
            elif kind == "transfer":
                await engine.transfer(sku, "wh1", "wh2", 1)
                self.moves += 2
            else:
                await self._hold(sku)
        except StockguardError:
            pass  # refused, as stock allows: no move

    async def _hold(self, sku: str) -> None:
        other = self.rng.choice(SKUS)
        hold = await self.engine.hold("web", {sku: 1, other: 1}, ttl_ms=60_000)
        if self.rng.random() < 0.7:
            confirmed = await self.engine.confirm(hold.id, reference=f"o-{hold.id}")
            self.moves += len(confirmed.lines)
            line = confirmed.lines[0]
            if self.rng.random() < 0.5:
                await self.engine.ship(line.sku, line.location, line.qty)
                self.moves += 1
        else:
            await self.engine.release(hold.id)


async def _start_writer(
    redis_url: str, ledger_url: str, *, ready: bool = False
) -> asyncio.subprocess.Process:
    """A `stockguard writer`; with ready, once it has said so (its SIGTERM handler is set
    by then, so a SIGTERM stops it cleanly instead of killing it)."""
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.cli",
        "--redis-url",
        redis_url,
        "writer",
        env={**os.environ, "DATABASE_URL": ledger_url},
        stdout=asyncio.subprocess.PIPE if ready else asyncio.subprocess.DEVNULL,
    )
    if ready:
        assert writer.stdout is not None
        line = await asyncio.wait_for(writer.stdout.readline(), 30)
        assert line.startswith(b"writer: outbox -> "), line
    return writer


async def test_killed_writers_lose_and_duplicate_nothing(
    client: Any, redis_url: str, store: Store
) -> None:
    engine = Engine(client)
    await setup_shop(engine, tuple(SKUS))
    producer = Producer(engine, seed=11)

    async def produce() -> None:
        for _ in range(OPERATIONS // 20):
            await asyncio.gather(*(producer.one() for _ in range(20)))

    async def kill_and_restart(stop: asyncio.Event) -> int:
        kills, rng = 0, random.Random(5)
        while not stop.is_set() or kills < 5:
            writer = await _start_writer(redis_url, store.url)
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            writer.send_signal(signal.SIGKILL)
            await writer.wait()
            kills += 1
        return kills

    done = asyncio.Event()
    killer = asyncio.create_task(kill_and_restart(done))
    await produce()
    done.set()
    kills = await killer
    assert kills >= 5

    final = await _start_writer(redis_url, store.url, ready=True)
    try:
        watcher = Writer(client, store)
        for _ in range(600):
            if (await watcher.lag()).pending == 0:
                break
            await asyncio.sleep(0.05)
        assert (await watcher.lag()).pending == 0
    finally:
        final.send_signal(signal.SIGTERM)
        assert await final.wait() == 0

    assert await store.count("moves") == producer.moves
    await _assert_ledger_matches_redis(client, store)


async def _assert_ledger_matches_redis(client: Any, store: Store) -> None:
    from engine.reconcile import reconcile

    assert await reconcile(client, store) == []
    stock: dict[str, str] = {}
    for p in range(keys.PARTITIONS):
        stock.update(await client.hgetall(keys.partition_keys(p)[2]))
    assert any(field.endswith(":committed") and int(v) > 0 for field, v in stock.items())
