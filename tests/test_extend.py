"""Contract of lua/extend.lua through Engine.extend."""

from __future__ import annotations

import asyncio

import pytest

from engine import Engine, HoldState
from engine.errors import HoldNotActiveError, ShortfallError

MINUTE_MS = 60_000


async def test_extend_pushes_expiry_out_and_never_shortens(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 1}, ttl_ms=MINUTE_MS)
    longer = await shop.extend(hold.id, 10 * MINUTE_MS)
    assert longer.expires_at_ms >= hold.expires_at_ms + 9 * MINUTE_MS
    shorter = await shop.extend(hold.id, 1_000)
    assert shorter.expires_at_ms == longer.expires_at_ms


async def test_extend_replay_returns_the_first_outcome(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 1}, ttl_ms=1_000)
    first = await shop.extend(hold.id, MINUTE_MS, op_id="pay-1")
    await asyncio.sleep(0.02)
    assert await shop.extend(hold.id, MINUTE_MS, op_id="pay-1") == first
    assert (await shop.extend(hold.id, MINUTE_MS, op_id="pay-2")).expires_at_ms > (
        first.expires_at_ms
    )


async def test_extend_revives_an_expired_hold_if_stock_allows(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 3}, ttl_ms=30)
    await asyncio.sleep(0.1)
    assert (await shop.stock("A")).ats["web"] == 5
    revived = await shop.extend(hold.id, MINUTE_MS)
    assert revived.state is HoldState.HELD
    assert (await shop.stock("A")).ats["web"] == 2


async def test_extend_of_an_expired_hold_without_stock_is_a_shortfall(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    for sku in ("C",):
        await shop.receive(sku, "wh1", 5)
    hold = await shop.hold("web", {"A": 3, "C": 1}, ttl_ms=30)
    await asyncio.sleep(0.1)
    await shop.hold("amazon", {"A": 4}, ttl_ms=MINUTE_MS)
    with pytest.raises(ShortfallError) as error:
        await shop.extend(hold.id, MINUTE_MS)
    assert error.value.missing == {"A": 2}
    assert (await shop.stock("A")).locations[1].held == 4
    assert (await shop.stock("C")).locations[1].held == 0, "a revived part was left held"


async def test_extend_refuses_finished_holds(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    for finish in (shop.confirm, shop.release):
        hold = await shop.hold("web", {"A": 1}, ttl_ms=MINUTE_MS)
        await finish(hold.id)
        with pytest.raises(HoldNotActiveError):
            await shop.extend(hold.id, MINUTE_MS)
