"""Expiry: holds stop counting at expiry by the server's clock; lua/sweep.lua settles them."""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import outbox_events

from engine import Engine, HoldState, keys

MINUTE_MS = 60_000


async def test_an_expired_hold_stops_counting_without_any_sweeper(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    await shop.hold("web", {"A": 5}, ttl_ms=50)
    assert (await shop.stock("A")).ats["web"] == 0
    await asyncio.sleep(0.15)
    assert (await shop.stock("A")).ats["web"] == 5
    await shop.hold("amazon", {"A": 5}, ttl_ms=MINUTE_MS)


async def test_sweep_settles_expired_holds_and_emits_their_events(
    shop: Engine, any_client: Any
) -> None:
    await shop.receive("A", "wh1", 10)
    short = [await shop.hold("web", {"A": 1}, ttl_ms=30) for _ in range(3)]
    live = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await asyncio.sleep(0.1)
    assert await shop.sweep() == 3
    assert await shop.sweep() == 0
    for hold in short:
        assert (await shop.get_hold(hold.id)).state is HoldState.EXPIRED
    assert (await shop.get_hold(live.id)).state is HoldState.HELD
    expired = [
        e["hold"]["id"] for e in await outbox_events(any_client) if e.get("event") == "expired"
    ]
    assert sorted(expired) == sorted(h.id for h in short)


async def test_sweep_work_grows_with_expired_holds_not_with_all_holds(
    client: Any, shop: Engine
) -> None:
    await shop.receive("A", "wh1", 10_000)
    await asyncio.gather(*(shop.hold("web", {"A": 1}, ttl_ms=MINUTE_MS) for _ in range(500)))
    for _ in range(3):
        await shop.hold("web", {"A": 1}, ttl_ms=30)
    await asyncio.sleep(0.1)
    await client.config_resetstat()
    assert await shop.sweep() == 3
    stats = await client.info("commandstats")
    record_reads = stats.get("cmdstat_hget", {}).get("calls", 0)
    assert record_reads <= 3 + keys.PARTITIONS, f"sweep read {record_reads} hold records"


async def test_sweep_limit_leaves_the_rest_for_the_next_pass(shop: Engine) -> None:
    await shop.receive("A", "wh1", 10)
    for _ in range(4):
        await shop.hold("web", {"A": 1}, ttl_ms=30)
    await asyncio.sleep(0.1)
    assert await shop.sweep(limit=3) == 3
    assert await shop.sweep(limit=3) == 1


async def test_finished_holds_are_forgotten_after_their_retention(any_client: Any) -> None:
    from helpers import setup_shop

    from engine import Settings

    engine = Engine(any_client, Settings(finished_retention_ms=50))
    await setup_shop(engine)
    await engine.receive("A", "wh1", 5)
    hold = await engine.hold("web", {"A": 1}, ttl_ms=MINUTE_MS)
    await engine.release(hold.id)
    await asyncio.sleep(0.1)
    await engine.sweep()
    assert await any_client.hget(keys.holds(keys.partition_of(hold.id)), hold.id) is None


async def test_get_hold_reads_expired_past_expiry_even_before_settling(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 1}, ttl_ms=30)
    assert (await shop.get_hold(hold.id)).state is HoldState.HELD
    await asyncio.sleep(0.1)
    assert (await shop.get_hold(hold.id)).state is HoldState.EXPIRED
