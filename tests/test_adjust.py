"""Contract of lua/adjust.lua through Engine.adjust."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import outbox_events

from engine import Engine
from engine.errors import InsufficientStockError
from engine.models import LocationStock

MINUTE_MS = 60_000


async def moves(client: Any, kind: str = "adjust") -> list[dict[str, Any]]:
    return [e for e in await outbox_events(client) if e["type"] == "move" and e["kind"] == kind]


async def reserve(shop: Engine, committed: int, held: int) -> None:
    """Commit then hold units of A at wh1 (web takes wh1 first)."""
    h = await shop.hold("web", {"A": committed}, ttl_ms=MINUTE_MS)
    await shop.confirm(h.id, reference="order-1")
    await shop.hold("web", {"A": held}, ttl_ms=MINUTE_MS)


async def test_adjust_changes_on_hand_both_ways(shop: Engine) -> None:
    await shop.receive("A", "wh1", 10)
    assert await shop.adjust("A", "wh1", -3, reason="damage") == LocationStock("wh1", 7, 0, 0, 7)
    assert await shop.adjust("A", "wh1", 2, reason="found") == LocationStock("wh1", 9, 0, 0, 9)
    stock = await shop.stock("A")
    assert [(s.location, s.on_hand, s.available) for s in stock.locations] == [
        ("store", 0, 0),
        ("wh1", 9, 9),
        ("wh2", 0, 0),
    ]
    assert stock.ats == {"amazon": 9, "pos": 0, "web": 9}


async def test_adjust_down_to_exactly_committed_plus_held(shop: Engine) -> None:
    await shop.receive("A", "wh1", 10)
    await reserve(shop, committed=2, held=3)
    result = await shop.adjust("A", "wh1", -5, reason="shrinkage")
    assert result == LocationStock("wh1", on_hand=5, committed=2, held=3, available=0)
    assert (await shop.stock("A")).ats == {"amazon": 0, "pos": 0, "web": 0}


async def test_adjust_below_committed_plus_held_is_refused(shop: Engine, any_client: Any) -> None:
    await shop.receive("A", "wh1", 10)
    await reserve(shop, committed=2, held=3)
    before = await shop.stock("A")
    with pytest.raises(InsufficientStockError) as error:
        await shop.adjust("A", "wh1", -6, reason="shrinkage")
    assert (error.value.sku, error.value.requested, error.value.available) == ("A", 6, 5)
    assert await shop.stock("A") == before
    assert await moves(any_client) == []


async def test_adjust_appends_one_adjust_move(shop: Engine, any_client: Any) -> None:
    await shop.receive("A", "wh1", 10)
    await shop.adjust("A", "wh1", -4, reason="damage", actor="ops", reference="R1", op_id="adj-1")
    await shop.adjust("A", "wh1", 1, reason="found")
    found = await moves(any_client)
    expected = {
        "id": "adj-1:1",
        "sku": "A",
        "location": "wh1",
        "qty": 4,
        "on_hand_delta": -4,
        "committed_delta": 0,
        "reason": "damage",
        "actor": "ops",
        "reference": "R1",
    }
    assert {k: found[0].get(k) for k in expected} == expected
    assert (found[1]["qty"], found[1]["on_hand_delta"], found[1]["reason"]) == (1, 1, "found")
    assert len(found) == 2
    assert found[0]["id"] != found[1]["id"]
