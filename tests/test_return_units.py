"""Contract of lua/return_units.lua through Engine.return_units."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import outbox_events

from engine import Engine
from engine.errors import ValidationError
from engine.models import LocationStock


async def moves(client: Any) -> list[dict[str, Any]]:
    events = await outbox_events(client)
    return [e for e in events if e["type"] == "move" and e["kind"].startswith("return_")]


async def test_restock_puts_units_back_on_hand_and_on_sale(shop: Engine) -> None:
    await shop.receive("A", "wh1", 2)
    result = await shop.return_units("A", "wh1", 3, reference="order-1")
    assert result == LocationStock("wh1", on_hand=5, committed=0, held=0, available=5)
    stock = await shop.stock("A")
    assert [(s.location, s.on_hand, s.available) for s in stock.locations] == [
        ("store", 0, 0),
        ("wh1", 5, 5),
        ("wh2", 0, 0),
    ]
    assert stock.ats == {"amazon": 5, "pos": 0, "web": 5}


async def test_restock_appends_a_return_restock_move(shop: Engine, any_client: Any) -> None:
    await shop.return_units(
        "A", "store", 2, reason="unwanted", actor="desk", reference="order-1", op_id="ret-1"
    )
    expected = {
        "id": "ret-1:1",
        "kind": "return_restock",
        "sku": "A",
        "location": "store",
        "qty": 2,
        "on_hand_delta": 2,
        "committed_delta": 0,
        "reason": "unwanted",
        "actor": "desk",
        "reference": "order-1",
    }
    assert [{k: m.get(k) for k in expected} for m in await moves(any_client)] == [expected]
    assert (await shop.stock("A")).ats["pos"] == 2


async def test_damaged_return_writes_off_without_changing_stock(
    shop: Engine, any_client: Any
) -> None:
    await shop.receive("A", "wh1", 2)
    before = await shop.stock("A")
    result = await shop.return_units(
        "A", "wh1", 3, damaged=True, reason="crushed box", reference="order-1", op_id="ret-2"
    )
    assert result == LocationStock("wh1", 2, 0, 0, 2)
    assert await shop.stock("A") == before
    expected = {
        "id": "ret-2:1",
        "kind": "return_damaged",
        "sku": "A",
        "location": "wh1",
        "qty": 3,
        "on_hand_delta": 0,
        "committed_delta": 0,
        "reason": "crushed box",
        "actor": "",
        "reference": "order-1",
    }
    assert [{k: m.get(k) for k in expected} for m in await moves(any_client)] == [expected]


async def test_damaged_return_without_a_reason_is_refused(shop: Engine, any_client: Any) -> None:
    with pytest.raises(ValidationError) as error:
        await shop.return_units("A", "wh1", 1, damaged=True)
    assert error.value.field == "reason"
    assert await moves(any_client) == []


async def test_each_return_gets_a_unique_move_id(shop: Engine, any_client: Any) -> None:
    await shop.return_units("A", "wh1", 1)
    await shop.return_units("A", "wh1", 1)
    await shop.return_units("A", "wh1", 1, damaged=True, reason="torn")
    found = await moves(any_client)
    assert [m["kind"] for m in found] == ["return_restock", "return_restock", "return_damaged"]
    assert len({m["id"] for m in found}) == 3
    assert (await shop.stock("A")).locations[1].on_hand == 2
