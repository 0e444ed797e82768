"""Contract of lua/transfer.lua through Engine.transfer."""

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


async def test_replay_returns_the_first_result_and_changes_nothing(
    stocked: Engine, any_client: Any
) -> None:
    first = await stocked.transfer("A", "wh1", "wh2", 2, op_id="trf-2")
    await stocked.receive("A", "wh2", 1)
    again = await stocked.transfer("A", "wh1", "wh2", 2, op_id="trf-2")
    assert again == first == LocationStock("wh2", 2, 0, 0, 2)
    locations = (await stocked.stock("A")).locations
    assert [(s.location, s.on_hand) for s in locations[1:]] == [("wh1", 4), ("wh2", 3)]
    assert len(await moves(any_client)) == 2


@pytest.mark.parametrize(
    "change", [{"qty": 1}, {"to_location": "store"}, {"from_location": "store"}, {"reason": "x"}]
)
async def test_same_op_id_with_another_payload_is_a_conflict(
    stocked: Engine, any_client: Any, change: dict[str, Any]
) -> None:
    await stocked.receive("A", "wh2", 5)
    args: dict[str, Any] = {"sku": "A", "from_location": "wh1", "to_location": "wh2", "qty": 2}
    await stocked.transfer(**args, op_id="trf-3")
    before = await stocked.stock("A")
    with pytest.raises(IdempotencyConflictError) as error:
        await stocked.transfer(**(args | change), op_id="trf-3")
    assert error.value.op_id == "trf-3"
    assert await stocked.stock("A") == before
    assert len(await moves(any_client)) == 2


@pytest.mark.parametrize(
    ("sku", "source", "destination", "error_type", "name"),
    [
        ("NOPE", "wh1", "wh2", UnknownSkuError, "NOPE"),
        ("A", "nowhere", "wh2", UnknownLocationError, "nowhere"),
        ("A", "wh1", "nowhere", UnknownLocationError, "nowhere"),
    ],
)
async def test_unknown_names_are_refused_and_change_nothing(
    stocked: Engine,
    any_client: Any,
    sku: str,
    source: str,
    destination: str,
    error_type: type[Exception],
    name: str,
) -> None:
    before = await stocked.stock("A")
    with pytest.raises(error_type) as error:
        await stocked.transfer(sku, source, destination, 1)
    assert name in (getattr(error.value, "sku", None), getattr(error.value, "location", None))
    assert await stocked.stock("A") == before
    assert await moves(any_client) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"qty": 0},
        {"qty": -1},
        {"qty": 10**12},
        {"qty": "1"},
        {"qty": 1.5},
        {"qty": True},
        {"to_location": "wh1"},
        {"sku": "bad:sku"},
        {"sku": ""},
        {"from_location": "wh:1"},
        {"to_location": "wh:2"},
        {"to_location": ""},
    ],
)
async def test_bad_arguments_are_refused(
    stocked: Engine, any_client: Any, bad: dict[str, Any]
) -> None:
    before = await stocked.stock("A")
    args: dict[str, Any] = {"sku": "A", "from_location": "wh1", "to_location": "wh2", "qty": 1}
    with pytest.raises(ValidationError):
        await stocked.transfer(**(args | bad))
    assert await stocked.stock("A") == before
    assert await moves(any_client) == []
