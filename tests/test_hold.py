"""Contract of lua/hold.lua through Engine.hold."""

from __future__ import annotations

import asyncio

import pytest
from helpers import outbox_events

from engine import Engine, Hold, HoldState, keys
from engine.errors import (
    IdempotencyConflictError,
    InsufficientStockError,
    UnknownChannelError,
    UnknownSkuError,
    ValidationError,
)
from engine.ids import new_id

MINUTE_MS = 60_000


async def test_hold_takes_units_from_locations_in_priority_order(shop: Engine) -> None:
    await shop.receive("A", "wh1", 3)
    await shop.receive("A", "wh2", 5)
    hold = await shop.hold("web", {"A": 5}, ttl_ms=MINUTE_MS, customer="c-1")
    assert hold.state is HoldState.HELD
    assert [(line.location, line.qty) for line in hold.lines] == [("wh1", 3), ("wh2", 2)]
    assert hold.customer == "c-1"
    stock = await shop.stock("A")
    assert [(s.location, s.held, s.available) for s in stock.locations] == [
        ("store", 0, 0),
        ("wh1", 3, 0),
        ("wh2", 2, 3),
    ]
    assert stock.ats["web"] == 3


async def test_insufficient_stock_holds_nothing_and_says_what_is_available(shop: Engine) -> None:
    await shop.receive("A", "wh1", 4)
    with pytest.raises(InsufficientStockError) as error:
        await shop.hold("web", {"A": 5}, ttl_ms=MINUTE_MS)
    assert (error.value.sku, error.value.requested, error.value.available) == ("A", 5, 4)
    assert (await shop.stock("A")).ats["web"] == 4


async def test_multi_line_hold_is_all_or_nothing_across_partitions(shop: Engine) -> None:
    skus = ["A", "B", "C"]
    assert len({keys.partition_of(s) for s in skus}) > 1, "the lines must span partitions"
    for sku in skus:
        await shop.receive(sku, "wh1", 2)
    with pytest.raises(InsufficientStockError) as error:
        await shop.hold("web", {"A": 1, "B": 1, "C": 3}, ttl_ms=MINUTE_MS)
    assert error.value.sku == "C"
    for sku in skus:
        assert (await shop.stock(sku)).ats["web"] == 2, f"{sku} was left held"
    hold = await shop.hold("web", {"A": 2, "B": 2, "C": 2}, ttl_ms=MINUTE_MS)
    assert sorted((line.sku, line.qty) for line in hold.lines) == [("A", 2), ("B", 2), ("C", 2)]
    assert (await shop.get_hold(hold.id)).lines == hold.lines


async def test_replay_returns_the_first_outcome(shop: Engine) -> None:
    await shop.receive("A", "wh1", 3)
    first = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id="order-1")
    again = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id="order-1")
    assert again == first
    assert (await shop.stock("A")).ats["web"] == 1, "the replay held more units"


async def test_replay_of_a_refused_hold_is_refused_the_same_way(shop: Engine) -> None:
    await shop.receive("A", "wh1", 1)
    for _ in range(2):
        with pytest.raises(InsufficientStockError) as error:
            await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id="order-2")
        assert error.value.available == 1
    await shop.receive("A", "wh1", 5)
    with pytest.raises(InsufficientStockError):
        await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id="order-2")


async def test_same_id_with_other_payload_is_a_conflict(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    await shop.hold("web", {"A": 1}, ttl_ms=MINUTE_MS, hold_id="order-3")
    with pytest.raises(IdempotencyConflictError):
        await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id="order-3")
    assert (await shop.stock("A")).ats["web"] == 4


async def test_unknown_names_are_clear_errors_and_change_nothing(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    with pytest.raises(UnknownSkuError) as sku_error:
        await shop.hold("web", {"A": 1, "NOPE": 1}, ttl_ms=MINUTE_MS)
    assert sku_error.value.sku == "NOPE"
    with pytest.raises(UnknownChannelError):
        await shop.hold("ebay", {"A": 1}, ttl_ms=MINUTE_MS)
    assert (await shop.stock("A")).ats["web"] == 5


@pytest.mark.parametrize(
    ("lines", "ttl_ms"),
    [
        ({"A": 0}, MINUTE_MS),
        ({"A": -1}, MINUTE_MS),
        ({"A": 10**12}, MINUTE_MS),
        ({"A": 1.5}, MINUTE_MS),
        ({"A": True}, MINUTE_MS),
        ({"A": "1"}, MINUTE_MS),
        ({}, MINUTE_MS),
        ({"bad:sku": 1}, MINUTE_MS),
        ({"A": 1}, 0),
        ({"A": 1}, "60000"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    shop: Engine, lines: dict[str, object], ttl_ms: object
) -> None:
    await shop.receive("A", "wh1", 5)
    with pytest.raises(ValidationError):
        await shop.hold("web", lines, ttl_ms=ttl_ms)  # type: ignore[arg-type]
    assert (await shop.stock("A")).ats["web"] == 5


async def test_hold_appends_its_event_to_the_outbox_in_the_same_call(
    shop: Engine, any_client: object
) -> None:
    await shop.receive("A", "wh1", 5)
    await shop.receive("B", "wh1", 5)
    hold = await shop.hold("web", {"A": 2, "B": 1}, ttl_ms=MINUTE_MS)
    placed = [e for e in await outbox_events(any_client) if e.get("event") == "placed"]
    assert {e["hold"]["id"] for e in placed} == {hold.id}
    held = sorted((sku, qty) for e in placed for sku, _, qty in e["hold"]["lines"] or [])
    assert held == [("A", 2), ("B", 1)]


async def test_concurrent_duplicates_in_one_batch_hold_once(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    holds = await asyncio.gather(
        *(shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id="dup-1") for _ in range(10))
    )
    assert len({h.id for h in holds}) == 1
    assert len({h.expires_at_ms for h in holds}) == 1
    assert (await shop.stock("A")).ats["web"] == 3


@pytest.mark.parametrize("lines", [[("A",)], ["A"], 5, [("A", 1, 2)], None])
async def test_malformed_lines_are_a_validation_error(shop: Engine, lines: object) -> None:
    with pytest.raises(ValidationError):
        await shop.hold("web", lines, ttl_ms=MINUTE_MS)  # type: ignore[arg-type]


async def test_repeated_skus_add_up_and_their_sum_is_checked(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", [("A", 2), ("A", 1)], ttl_ms=MINUTE_MS)
    assert [(line.sku, line.qty) for line in hold.lines] == [("A", 3)]
    with pytest.raises(ValidationError):
        await shop.hold("web", [("A", 10**9), ("A", 1)], ttl_ms=MINUTE_MS)


async def test_one_batch_replays_holds_placed_before_it_and_within_it(shop: Engine) -> None:
    # Gathered in one tick, the holds below share one script call, which reads every hold
    # id and SKU of the batch up front: a replay must still see the record it replays.
    await shop.receive("A", "wh1", 10)
    home = keys.partition_of("A")
    earlier_id, new = new_id(home, "earlier"), new_id(home, "new")
    earlier = await shop.hold("web", {"A": 1}, ttl_ms=MINUTE_MS, hold_id=earlier_id)
    replay, first, again, refused, unknown = await asyncio.gather(
        shop.hold("web", {"A": 1}, ttl_ms=MINUTE_MS, hold_id=earlier_id),
        shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id=new),
        shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS, hold_id=new),
        shop.hold("web", {"A": 8}, ttl_ms=MINUTE_MS),
        shop.hold("web", {"NOPE": 1}, ttl_ms=MINUTE_MS),
        return_exceptions=True,
    )
    assert replay == earlier
    assert isinstance(first, Hold) and first.id == new and again == first
    assert isinstance(refused, InsufficientStockError) and refused.available == 7
    assert isinstance(unknown, UnknownSkuError)
    assert {s.location: s.held for s in (await shop.stock("A")).locations}["wh1"] == 3
