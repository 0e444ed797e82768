"""Contract of lua/ship.lua through Engine.ship."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import moves_of, sell

from engine import Engine
from engine.errors import InsufficientCommittedError
from engine.models import LocationStock

MINUTE_MS = 60_000


@pytest.fixture
async def sold(shop: Engine) -> Engine:
    return await sell(shop)


async def test_ship_lowers_on_hand_and_committed_together(sold: Engine) -> None:
    result = await sold.ship("A", "wh1", 2, reference="order-1")
    assert result == LocationStock("wh1", on_hand=3, committed=1, held=0, available=2)
    stock = await sold.stock("A")
    assert [(s.location, s.on_hand, s.committed, s.held, s.available) for s in stock.locations] == [
        ("store", 0, 0, 0, 0),
        ("wh1", 3, 1, 0, 2),
        ("wh2", 0, 0, 0, 0),
    ]
    assert stock.ats == {"amazon": 2, "pos": 0, "web": 2}, "shipping changed what is for sale"
    assert await sold.ship("A", "wh1", 1) == LocationStock("wh1", 2, 0, 0, 2)


async def test_ship_appends_one_ship_move(sold: Engine, any_client: Any) -> None:
    await sold.ship("A", "wh1", 2, reference="order-1", actor="dock", reason="ups", op_id="shp-1")
    await sold.ship("A", "wh1", 1, reference="order-1")
    found = await moves_of(any_client, "ship")
    expected = {
        "id": "shp-1:1",
        "sku": "A",
        "location": "wh1",
        "qty": 2,
        "on_hand_delta": -2,
        "committed_delta": -2,
        "reason": "ups",
        "actor": "dock",
        "reference": "order-1",
    }
    assert {k: found[0].get(k) for k in expected} == expected
    rest = [(m["qty"], m["on_hand_delta"], m["committed_delta"]) for m in found[1:]]
    assert rest == [(1, -1, -1)]
    assert found[0]["id"] != found[1]["id"]


async def test_shipping_more_than_committed_is_refused(sold: Engine, any_client: Any) -> None:
    before = await sold.stock("A")
    with pytest.raises(InsufficientCommittedError) as error:
        await sold.ship("A", "wh1", 4, reference="order-1")
    e = error.value
    assert (e.sku, e.location, e.requested, e.committed) == ("A", "wh1", 4, 3)
    with pytest.raises(InsufficientCommittedError) as error:
        await sold.ship("A", "wh2", 1)
    assert (error.value.location, error.value.committed) == ("wh2", 0)
    assert await sold.stock("A") == before
    assert await moves_of(any_client, "ship") == []


async def test_held_units_cannot_be_shipped(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    with pytest.raises(InsufficientCommittedError) as error:
        await shop.ship("A", "wh1", 1)
    assert error.value.committed == 0
    assert (await shop.stock("A")).locations[1] == LocationStock("wh1", 5, 0, 2, 3)
