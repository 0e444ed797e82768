"""Contract of lua/transfer.lua through Engine.transfer."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import outbox_events

from engine import Engine
from engine.errors import InsufficientStockError
from engine.models import LocationStock

MINUTE_MS = 60_000


async def moves(client: Any) -> list[dict[str, Any]]:
    events = await outbox_events(client)
    return [e for e in events if e["type"] == "move" and e["kind"] == "transfer"]


@pytest.fixture
async def stocked(shop: Engine) -> Engine:
    """A: 6 on hand at wh1, 2 of them held for web, so 4 available there."""
    await shop.receive("A", "wh1", 6)
    await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    return shop


async def test_transfer_moves_available_units_and_returns_the_destination(
    stocked: Engine,
) -> None:
    result = await stocked.transfer("A", "wh1", "store", 3)
    assert result == LocationStock("store", on_hand=3, committed=0, held=0, available=3)
    stock = await stocked.stock("A")
    assert [(s.location, s.on_hand, s.committed, s.held, s.available) for s in stock.locations] == [
        ("store", 3, 0, 0, 3),
        ("wh1", 3, 0, 2, 1),
        ("wh2", 0, 0, 0, 0),
    ]
    assert stock.ats == {"amazon": 1, "pos": 3, "web": 1}


async def test_transfer_appends_an_out_and_an_in_move(stocked: Engine, any_client: Any) -> None:
    await stocked.transfer(
        "A", "wh1", "wh2", 4, reason="rebalance", actor="ops", reference="T-9", op_id="trf-1"
    )
    common = {
        "sku": "A",
        "qty": 4,
        "committed_delta": 0,
        "reason": "rebalance",
        "actor": "ops",
        "reference": "T-9",
    }
    expected = [
        {**common, "id": "trf-1:1", "location": "wh1", "on_hand_delta": -4},
        {**common, "id": "trf-1:2", "location": "wh2", "on_hand_delta": 4},
    ]
    found = await moves(any_client)
    assert [{k: m.get(k) for k in expected[0]} for m in found] == expected
    assert (await stocked.stock("A")).ats["web"] == 4, "a transfer within web's locations"


async def test_transfer_more_than_available_at_the_source_is_refused(
    stocked: Engine, any_client: Any
) -> None:
    before = await stocked.stock("A")
    with pytest.raises(InsufficientStockError) as error:
        await stocked.transfer("A", "wh1", "wh2", 5)
    assert (error.value.sku, error.value.requested, error.value.available) == ("A", 5, 4)
    with pytest.raises(InsufficientStockError) as error:
        await stocked.transfer("A", "wh2", "wh1", 1)
    assert error.value.available == 0
    assert await stocked.stock("A") == before
    assert await moves(any_client) == []


async def test_committed_units_cannot_be_transferred(shop: Engine) -> None:
    await shop.receive("A", "wh1", 3)
    h = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await shop.confirm(h.id, reference="order-1")
    with pytest.raises(InsufficientStockError) as error:
        await shop.transfer("A", "wh1", "wh2", 2)
    assert error.value.available == 1
    assert await shop.transfer("A", "wh1", "wh2", 1) == LocationStock("wh2", 1, 0, 0, 1)
    assert (await shop.stock("A")).locations[1] == LocationStock("wh1", 2, 2, 0, 0)
