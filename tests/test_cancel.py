"""Contract of lua/cancel.lua through Engine.cancel."""

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


async def test_cancel_returns_committed_units_to_sale(sold: Engine) -> None:
    assert (await sold.stock("A")).ats["web"] == 2
    result = await sold.cancel("A", "wh1", 2, reference="order-1")
    assert result == LocationStock("wh1", on_hand=5, committed=1, held=0, available=4)
    stock = await sold.stock("A")
    assert [(s.location, s.on_hand, s.committed, s.held, s.available) for s in stock.locations] == [
        ("store", 0, 0, 0, 0),
        ("wh1", 5, 1, 0, 4),
        ("wh2", 0, 0, 0, 0),
    ]
    assert stock.ats == {"amazon": 4, "pos": 0, "web": 4}
    assert await sold.cancel("A", "wh1", 1) == LocationStock("wh1", 5, 0, 0, 5)


async def test_cancel_appends_one_cancel_move(sold: Engine, any_client: Any) -> None:
    await sold.cancel("A", "wh1", 2, reference="order-1", actor="cs", reason="buyer", op_id="cxl-1")
    await sold.cancel("A", "wh1", 1, reference="order-1")
    found = await moves_of(any_client, "cancel")
    expected = {
        "id": "cxl-1:1",
        "sku": "A",
        "location": "wh1",
        "qty": 2,
        "on_hand_delta": 0,
        "committed_delta": -2,
        "reason": "buyer",
        "actor": "cs",
        "reference": "order-1",
    }
    assert {k: found[0].get(k) for k in expected} == expected
    rest = [(m["qty"], m["on_hand_delta"], m["committed_delta"]) for m in found[1:]]
    assert rest == [(1, 0, -1)]
    assert found[0]["id"] != found[1]["id"]


async def test_cancelling_more_than_committed_is_refused(sold: Engine, any_client: Any) -> None:
    before = await sold.stock("A")
    with pytest.raises(InsufficientCommittedError) as error:
        await sold.cancel("A", "wh1", 4, reference="order-1")
    e = error.value
    assert (e.sku, e.location, e.requested, e.committed) == ("A", "wh1", 4, 3)
    with pytest.raises(InsufficientCommittedError) as error:
        await sold.cancel("A", "store", 1)
    assert (error.value.location, error.value.committed) == ("store", 0)
    assert await sold.stock("A") == before
    assert await moves_of(any_client, "cancel") == []


async def test_shipped_units_can_no_longer_be_cancelled(sold: Engine) -> None:
    await sold.ship("A", "wh1", 3, reference="order-1")
    with pytest.raises(InsufficientCommittedError) as error:
        await sold.cancel("A", "wh1", 1, reference="order-1")
    assert error.value.committed == 0
    assert (await sold.stock("A")).locations[1] == LocationStock("wh1", 2, 0, 0, 2)
