"""Contract of lua/adjust.lua through Engine.adjust."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import outbox_events

from engine import Engine
from engine.errors import (
    IdempotencyConflictError,
    InsufficientStockError,
    UnknownLocationError,
    UnknownSkuError,
    ValidationError,
)
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


async def test_replay_returns_the_first_result_and_changes_nothing(
    shop: Engine, any_client: Any
) -> None:
    await shop.receive("A", "wh1", 10)
    first = await shop.adjust("A", "wh1", -2, reason="damage", op_id="adj-2")
    await shop.receive("A", "wh1", 1)
    again = await shop.adjust("A", "wh1", -2, reason="damage", op_id="adj-2")
    assert again == first == LocationStock("wh1", 8, 0, 0, 8)
    assert (await shop.stock("A")).locations[1].on_hand == 9
    assert len(await moves(any_client)) == 1


@pytest.mark.parametrize("change", [{"delta": -3}, {"reason": "theft"}, {"location": "wh2"}])
async def test_same_op_id_with_another_payload_is_a_conflict(
    shop: Engine, any_client: Any, change: dict[str, Any]
) -> None:
    await shop.receive("A", "wh1", 10)
    await shop.receive("A", "wh2", 10)
    args: dict[str, Any] = {"sku": "A", "location": "wh1", "delta": -2, "reason": "damage"}
    await shop.adjust(**args, op_id="adj-3")
    before = await shop.stock("A")
    with pytest.raises(IdempotencyConflictError) as error:
        await shop.adjust(**(args | change), op_id="adj-3")
    assert error.value.op_id == "adj-3"
    assert await shop.stock("A") == before
    assert len(await moves(any_client)) == 1


async def test_unknown_names_are_refused_and_change_nothing(shop: Engine, any_client: Any) -> None:
    await shop.receive("A", "wh1", 5)
    before = await shop.stock("A")
    with pytest.raises(UnknownSkuError) as sku_error:
        await shop.adjust("NOPE", "wh1", 1, reason="found")
    assert sku_error.value.sku == "NOPE"
    with pytest.raises(UnknownLocationError) as location_error:
        await shop.adjust("A", "nowhere", -1, reason="damage")
    assert location_error.value.location == "nowhere"
    assert await shop.stock("A") == before
    assert await moves(any_client) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"delta": 0},
        {"delta": 10**12},
        {"delta": -(10**12)},
        {"delta": "1"},
        {"delta": 1.5},
        {"delta": True},
        {"reason": ""},
        {"sku": "bad:sku"},
        {"sku": ""},
        {"location": "wh:1"},
        {"location": ""},
        {"actor": None},
    ],
)
async def test_bad_arguments_are_refused(
    shop: Engine, any_client: Any, bad: dict[str, Any]
) -> None:
    await shop.receive("A", "wh1", 5)
    before = await shop.stock("A")
    args: dict[str, Any] = {"sku": "A", "location": "wh1", "delta": -1, "reason": "damage"}
    with pytest.raises(ValidationError):
        await shop.adjust(**(args | bad))
    assert await shop.stock("A") == before
    assert await moves(any_client) == []
