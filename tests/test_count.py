"""Contract of lua/count.lua through Engine.count."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import moves_of

from engine import Engine, HoldState
from engine.errors import CountBelowReservedError
from engine.models import LocationStock

MINUTE_MS = 60_000


async def test_count_sets_on_hand_both_ways(shop: Engine) -> None:
    await shop.receive("A", "wh1", 10)
    assert await shop.count("A", "wh1", 7) == LocationStock("wh1", 7, 0, 0, 7)
    assert await shop.count("A", "wh1", 12) == LocationStock("wh1", 12, 0, 0, 12)
    assert await shop.count("A", "wh1", 0) == LocationStock("wh1", 0, 0, 0, 0)
    assert await shop.count("A", "store", 4) == LocationStock("store", 4, 0, 0, 4)
    stock = await shop.stock("A")
    assert [(s.location, s.on_hand, s.available) for s in stock.locations] == [
        ("store", 4, 4),
        ("wh1", 0, 0),
        ("wh2", 0, 0),
    ]
    assert stock.ats == {"amazon": 0, "pos": 4, "web": 0}


async def test_count_keeps_live_holds_and_committed_units(shop: Engine, any_client: Any) -> None:
    await shop.receive("A", "wh1", 10)
    sold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await shop.confirm(sold.id, reference="order-1")
    live = await shop.hold("web", {"A": 3}, ttl_ms=MINUTE_MS)
    result = await shop.count("A", "wh1", 8, reason="cycle count", actor="ops", op_id="cnt-1")
    assert result == LocationStock("wh1", on_hand=8, committed=2, held=3, available=3)
    assert (await shop.get_hold(live.id)).state is HoldState.HELD
    stock = await shop.stock("A")
    assert stock.locations[1] == result
    assert stock.ats == {"amazon": 3, "pos": 0, "web": 3}
    expected = {
        "id": "cnt-1:1",
        "sku": "A",
        "location": "wh1",
        "qty": 8,
        "on_hand_delta": -2,
        "committed_delta": 0,
        "reason": "cycle count",
        "actor": "ops",
        "reference": "",
    }
    assert [{k: m.get(k) for k in expected} for m in await moves_of(any_client, "count")] == [
        expected
    ]
    await shop.release(live.id)
    assert (await shop.stock("A")).ats["web"] == 6


async def test_count_to_exactly_committed_plus_held(shop: Engine) -> None:
    await shop.receive("A", "wh1", 10)
    sold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await shop.confirm(sold.id, reference="order-1")
    await shop.hold("web", {"A": 3}, ttl_ms=MINUTE_MS)
    assert await shop.count("A", "wh1", 5) == LocationStock("wh1", 5, 2, 3, 0)


async def test_count_below_committed_plus_held_is_refused(shop: Engine, any_client: Any) -> None:
    await shop.receive("A", "wh1", 10)
    sold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await shop.confirm(sold.id, reference="order-1")
    await shop.hold("web", {"A": 3}, ttl_ms=MINUTE_MS)
    before = await shop.stock("A")
    with pytest.raises(CountBelowReservedError) as error:
        await shop.count("A", "wh1", 4)
    e = error.value
    assert (e.sku, e.location, e.counted, e.reserved) == ("A", "wh1", 4, 5)
    assert await shop.stock("A") == before
    assert await moves_of(any_client, "count") == []


async def test_each_count_appends_a_move_with_a_unique_id(shop: Engine, any_client: Any) -> None:
    await shop.receive("A", "wh1", 3)
    await shop.count("A", "wh1", 5)
    await shop.count("A", "wh1", 5)
    found = await moves_of(any_client, "count")
    assert [(m["qty"], m["on_hand_delta"]) for m in found] == [(5, 2), (5, 0)]
    assert len({m["id"] for m in found}) == 2
