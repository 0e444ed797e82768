"""Contract of lua/receive.lua through Engine.receive."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import outbox_events

from engine import Engine, keys
from engine.errors import IdempotencyConflictError
from engine.models import LocationStock


async def moves(client: Any) -> list[dict[str, Any]]:
    return [e for e in await outbox_events(client) if e["type"] == "move"]


def subset(move: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {k: move.get(k) for k in expected}


async def test_receive_adds_on_hand_and_offers_it_for_sale(shop: Engine) -> None:
    result = await shop.receive("A", "wh2", 4)
    assert result == LocationStock("wh2", on_hand=4, committed=0, held=0, available=4)
    result = await shop.receive("A", "wh2", 3)
    assert result == LocationStock("wh2", on_hand=7, committed=0, held=0, available=7)
    stock = await shop.stock("A")
    assert [(s.location, s.on_hand, s.committed, s.held, s.available) for s in stock.locations] == [
        ("store", 0, 0, 0, 0),
        ("wh1", 0, 0, 0, 0),
        ("wh2", 7, 0, 0, 7),
    ]
    assert stock.ats == {"amazon": 7, "pos": 0, "web": 7}
    assert (await shop.stock("B")).ats["web"] == 0, "another SKU changed"


async def test_receive_appends_one_receive_move(shop: Engine, any_client: Any) -> None:
    await shop.receive("A", "wh1", 5, reason="po", actor="ops-1", reference="PO-7", op_id="rcv-1")
    await shop.receive("A", "store", 2)
    found = await moves(any_client)
    expected = {
        "kind": "receive",
        "sku": "A",
        "location": "wh1",
        "qty": 5,
        "on_hand_delta": 5,
        "committed_delta": 0,
        "reason": "po",
        "actor": "ops-1",
        "reference": "PO-7",
        "id": "rcv-1:1",
    }
    assert [subset(m, expected) for m in found if m["location"] == "wh1"] == [expected]
    assert [(m["location"], m["qty"]) for m in found] == [("wh1", 5), ("store", 2)]
    assert len({m["id"] for m in found}) == 2


async def test_op_id_reused_for_a_sku_in_another_partition_is_a_conflict(
    shop: Engine, any_client: Any
) -> None:
    assert keys.partition_of("A") != keys.partition_of("B")
    await shop.receive("A", "wh1", 5, op_id="rcv-4")
    with pytest.raises(IdempotencyConflictError):
        await shop.receive("B", "wh1", 5, op_id="rcv-4")
    assert (await shop.stock("B")).ats["web"] == 0
    assert (await shop.receive("A", "wh1", 5, op_id="rcv-4")).on_hand == 5, "replay changed"
    await shop.receive("B", "wh1", 2, op_id="rcv-5")
    with pytest.raises(IdempotencyConflictError):
        await shop.receive("A", "wh1", 2, op_id="rcv-5")
    assert (await shop.receive("B", "wh1", 2, op_id="rcv-5")).on_hand == 2
