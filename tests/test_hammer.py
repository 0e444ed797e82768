"""The promise under load: committed + held <= on_hand, and no channel beyond its allocation."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from engine import Engine, Hold, Policy, PolicyKind, keys
from engine.errors import (
    HoldNotActiveError,
    InsufficientStockError,
    ShortfallError,
    StockguardError,
)

pytestmark = pytest.mark.slow
MINUTE_MS = 60_000


async def assert_invariants(engine: Engine, sku: str, caps: dict[str, int]) -> None:
    stock = await engine.stock(sku)
    for row in stock.locations:
        assert row.committed + row.held <= row.on_hand, row
        assert row.available == row.on_hand - row.committed - row.held
    live = await engine.client.hgetall(keys.stock(keys.partition_of(sku)))
    for channel, cap in caps.items():
        assert int(live.get(f"{sku}:{channel}:channel_held", 0)) <= cap, channel


async def place_all(engine: Engine, n: int, ttl_ms: int) -> tuple[list[Hold], list[Exception]]:
    async def one(i: int) -> Hold:
        channel = "web" if i % 2 else "amazon"
        return await engine.hold(channel, {"HOT": 1}, ttl_ms=ttl_ms, customer=f"c{i}")

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    holds = [r for r in results if isinstance(r, Hold)]
    errors = [r for r in results if isinstance(r, Exception)]
    return holds, errors


async def test_1000_concurrent_holds_for_100_units(engine: Engine) -> None:
    await engine.define_location("wh1")
    await engine.define_channel("web", ["wh1"])
    await engine.define_channel("amazon", ["wh1"], Policy(PolicyKind.CAP, 80))
    await engine.define_sku("HOT")
    await engine.receive("HOT", "wh1", 100)
    caps = {"amazon": 80}

    holds, errors = await place_all(engine, 1000, MINUTE_MS)
    assert len(holds) == 100
    assert len(errors) == 900
    assert all(isinstance(e, InsufficientStockError) and e.available == 0 for e in errors)
    assert sum(h.channel == "amazon" for h in holds) <= 80
    await assert_invariants(engine, "HOT", caps)

    rng = random.Random(7)
    for hold in rng.sample(holds, 60):
        action = rng.choice(["confirm", "release", "extend"])
        if action == "confirm":
            await engine.confirm(hold.id, reference=f"order-{hold.id}")
        elif action == "release":
            await engine.release(hold.id)
        else:
            await engine.extend(hold.id, 2 * MINUTE_MS)
        await assert_invariants(engine, "HOT", caps)

    stock = (await engine.stock("HOT")).locations[0]
    free = stock.on_hand - stock.committed - stock.held
    # Long enough that none of the wave expires while the wave is still being placed (on a
    # loaded machine 500 holds can take more than 50 ms, and expired units sell again).
    second, _ = await place_all(engine, 500, 400)
    assert len(second) == free
    await assert_invariants(engine, "HOT", caps)

    await asyncio.sleep(0.45)  # the second wave expires by the server's clock
    assert (await engine.stock("HOT")).locations[0].held == stock.held
    for hold in second[:5]:
        with contextlib.suppress(ShortfallError, HoldNotActiveError):
            await engine.confirm(hold.id)
        await assert_invariants(engine, "HOT", caps)


async def test_concurrent_confirm_release_and_late_confirm_race(engine: Engine) -> None:
    await engine.define_location("wh1")
    await engine.define_channel("web", ["wh1"])
    await engine.define_sku("HOT")
    await engine.receive("HOT", "wh1", 50)
    holds, _ = await place_all_web(engine, 50, 40)
    await asyncio.sleep(0.06)
    racers, _ = await place_all_web(engine, 60, MINUTE_MS)

    async def late(hold: Hold) -> str:
        try:
            await engine.confirm(hold.id)
            return "confirmed"
        except StockguardError as error:
            return type(error).__name__

    outcomes = await asyncio.gather(*(late(h) for h in holds))
    stock = (await engine.stock("HOT")).locations[0]
    assert stock.committed + stock.held <= stock.on_hand == 50
    assert outcomes.count("confirmed") == stock.committed
    assert len(racers) + outcomes.count("confirmed") <= 50


async def place_all_web(engine: Engine, n: int, ttl_ms: int) -> tuple[list[Hold], list[Any]]:
    results = await asyncio.gather(
        *(engine.hold("web", {"HOT": 1}, ttl_ms=ttl_ms) for _ in range(n)), return_exceptions=True
    )
    holds = [r for r in results if isinstance(r, Hold)]
    return holds, [r for r in results if not isinstance(r, Hold)]
