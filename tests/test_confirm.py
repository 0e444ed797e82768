"""Contract of lua/confirm.lua through Engine.confirm, including late and multi-part confirms."""

from __future__ import annotations

import asyncio

import pytest
from helpers import outbox_events

from engine import Engine, HoldState, keys
from engine.errors import (
    HoldNotActiveError,
    HoldNotFoundError,
    IdempotencyConflictError,
    ShortfallError,
)

MINUTE_MS = 60_000


async def expired_hold(shop: Engine, lines: dict[str, int]) -> str:
    hold = await shop.hold("web", lines, ttl_ms=30)
    await asyncio.sleep(0.1)
    return hold.id


async def test_confirm_moves_held_units_to_committed(shop: Engine, any_client: object) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 3}, ttl_ms=MINUTE_MS)
    confirmed = await shop.confirm(hold.id, reference="order-9", actor="checkout")
    assert confirmed.state is HoldState.CONFIRMED
    assert confirmed.reference == "order-9"
    wh1 = (await shop.stock("A")).locations[1]
    assert (wh1.on_hand, wh1.committed, wh1.held, wh1.available) == (5, 3, 0, 2)
    sales = [e for e in await outbox_events(any_client) if e.get("kind") == "sale"]
    assert [(m["sku"], m["qty"], m["committed_delta"], m["reference"]) for m in sales] == [
        ("A", 3, 3, "order-9")
    ]
    assert sales[0]["channel"] == "web" and sales[0]["actor"] == "checkout"


async def test_confirm_replay_is_idempotent_and_other_reference_conflicts(
    shop: Engine, any_client: object
) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    first = await shop.confirm(hold.id, reference="order-1")
    assert await shop.confirm(hold.id, reference="order-1") == first
    with pytest.raises(IdempotencyConflictError):
        await shop.confirm(hold.id, reference="order-2")
    assert (await shop.stock("A")).locations[1].committed == 2
    assert len([e for e in await outbox_events(any_client) if e.get("kind") == "sale"]) == 1


async def test_confirm_refuses_released_and_unknown_holds(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await shop.release(hold.id)
    with pytest.raises(HoldNotActiveError) as error:
        await shop.confirm(hold.id)
    assert error.value.state == "released"
    with pytest.raises(HoldNotFoundError):
        await shop.confirm("no-such-hold")
    assert (await shop.stock("A")).locations[1].committed == 0


async def test_late_confirm_succeeds_while_stock_allows(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold_id = await expired_hold(shop, {"A": 4})
    assert (await shop.stock("A")).ats["web"] == 5, "an expired hold must not count"
    confirmed = await shop.confirm(hold_id)
    assert confirmed.state is HoldState.CONFIRMED
    assert (await shop.stock("A")).locations[1].committed == 4


async def test_late_confirm_fails_with_a_shortfall_naming_the_sku(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold_id = await expired_hold(shop, {"A": 4})
    await shop.hold("amazon", {"A": 3}, ttl_ms=MINUTE_MS)
    with pytest.raises(ShortfallError) as error:
        await shop.confirm(hold_id)
    assert error.value.missing == {"A": 2}
    wh1 = (await shop.stock("A")).locations[1]
    assert (wh1.committed, wh1.held) == (0, 3)


async def test_multi_part_confirm_commits_every_line(shop: Engine, any_client: object) -> None:
    assert keys.partition_of("A") != keys.partition_of("C")
    for sku in ("A", "C"):
        await shop.receive(sku, "wh1", 5)
    hold = await shop.hold("web", {"A": 2, "C": 3}, ttl_ms=MINUTE_MS)
    confirmed = await shop.confirm(hold.id, reference="order-7")
    assert confirmed.state is HoldState.CONFIRMED
    assert {line.sku: line.qty for line in confirmed.lines} == {"A": 2, "C": 3}
    for sku, qty in (("A", 2), ("C", 3)):
        wh1 = (await shop.stock(sku)).locations[1]
        assert (wh1.committed, wh1.held) == (qty, 0)
    assert await shop.confirm(hold.id, reference="order-7") == confirmed
    sales = [e for e in await outbox_events(any_client) if e.get("kind") == "sale"]
    assert len({m["id"] for m in sales}) == len(sales) == 2, "move ids must be unique"


async def test_multi_part_late_confirm_shortfall_commits_nothing(shop: Engine) -> None:
    for sku in ("A", "C"):
        await shop.receive(sku, "wh1", 5)
    hold_id = await expired_hold(shop, {"A": 2, "C": 3})
    await shop.hold("amazon", {"C": 4}, ttl_ms=MINUTE_MS)
    with pytest.raises(ShortfallError) as error:
        await shop.confirm(hold_id)
    assert error.value.missing == {"C": 2}
    a, c = [(await shop.stock(sku)).locations[1] for sku in ("A", "C")]
    assert (a.committed, a.held) == (0, 0), "no part may stay committed or held"
    assert (c.committed, c.held) == (0, 4)
