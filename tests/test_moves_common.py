"""Contracts every stock move shares: receive, adjust, count, ship, cancel, return_units and
transfer replay by op_id, refuse a reused op_id, unknown names and bad arguments, and a
refused call changes nothing. What is specific to one move lives in its own test file."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import outbox_events

from engine import Engine, keys
from engine.errors import (
    IdempotencyConflictError,
    UnknownLocationError,
    UnknownSkuError,
    ValidationError,
)
from engine.models import LocationStock

MINUTE_MS = 60_000
BAD_QUANTITIES: tuple[Any, ...] = (0, -1, 10**12, "1", 1.5, True)
BAD_NAMES: tuple[Any, ...] = ("bad:sku", "", 7)
BAD_LOCATIONS: tuple[Any, ...] = ("wh:1", "")
BAD_DETAILS: tuple[dict[str, Any], ...] = (
    {"op_id": ""},
    {"op_id": "-leading-dash"},
    {"reason": 5},
    {"reference": 123},
    {"actor": "x" * 501},
    {"actor": None},
)
OTHER_DETAILS: tuple[dict[str, Any], ...] = (
    {"reason": "other"},
    {"actor": "other"},
    {"reference": "other"},
)


@dataclass(frozen=True)
class Move:
    """One Engine stock method, the stock of SKU A it needs, and what it replies."""

    method: str
    kwargs: Callable[[], dict[str, Any]]  # valid arguments, given the setup below
    on_hand: dict[str, int]  # setup: units of A received per location
    replayed: LocationStock  # the reply to kwargs after the setup
    on_hand_after_replay: dict[str, int]  # after the move, one more received, and a replay
    committed: int = 0  # setup: units of A at wh1 then committed to order-1
    held: int = 0  # setup: units of A at wh1 then held for web
    moves: int = 1  # outbox moves one call appends
    quantity: str = "qty"
    locations: tuple[str, ...] = ("location",)
    bad_quantities: tuple[Any, ...] = BAD_QUANTITIES
    also_changes: tuple[dict[str, Any], ...] = ()
    also_unknown: tuple[dict[str, Any], ...] = ()
    also_bad: tuple[dict[str, Any], ...] = ()


MOVES = (
    Move(
        "receive",
        lambda: {"sku": "A", "location": "wh1", "qty": 5, "reference": "PO-1"},
        on_hand={"wh1": 2},
        replayed=LocationStock("wh1", 7, 0, 0, 7),
        on_hand_after_replay={"store": 0, "wh1": 8, "wh2": 0},
    ),
    Move(
        "adjust",
        lambda: {"sku": "A", "location": "wh1", "delta": -2, "reason": "damage"},
        on_hand={"wh1": 10, "wh2": 10},
        replayed=LocationStock("wh1", 8, 0, 0, 8),
        on_hand_after_replay={"store": 0, "wh1": 9, "wh2": 10},
        quantity="delta",
        bad_quantities=(0, 10**12, -(10**12), "1", 1.5, True),
        also_bad=({"reason": ""},),
    ),
    Move(
        "count",
        lambda: {"sku": "A", "location": "wh1", "counted": 6},
        on_hand={"wh1": 10},
        replayed=LocationStock("wh1", 6, 0, 0, 6),
        on_hand_after_replay={"store": 0, "wh1": 7, "wh2": 0},
        quantity="counted",
        bad_quantities=(-1, 10**12, "1", 1.5, True),
    ),
    Move(
        "ship",
        lambda: {"sku": "A", "location": "wh1", "qty": 1, "reference": "order-1"},
        on_hand={"wh1": 5},
        committed=3,
        replayed=LocationStock("wh1", 4, 2, 0, 2),
        on_hand_after_replay={"store": 0, "wh1": 5, "wh2": 0},
    ),
    Move(
        "cancel",
        lambda: {"sku": "A", "location": "wh1", "qty": 1, "reference": "order-1"},
        on_hand={"wh1": 5},
        committed=3,
        replayed=LocationStock("wh1", 5, 2, 0, 3),
        on_hand_after_replay={"store": 0, "wh1": 6, "wh2": 0},
    ),
    Move(
        "return_units",
        lambda: {"sku": "A", "location": "wh1", "qty": 2, "reference": "order-1"},
        on_hand={"wh1": 5},
        replayed=LocationStock("wh1", 7, 0, 0, 7),
        on_hand_after_replay={"store": 0, "wh1": 8, "wh2": 0},
        also_changes=({"damaged": True, "reason": "torn"},),
        also_unknown=({"location": "nowhere", "damaged": True, "reason": "torn"},),
    ),
    Move(
        "transfer",
        lambda: {"sku": "A", "from_location": "wh1", "to_location": "wh2", "qty": 2},
        on_hand={"wh1": 6},
        held=2,
        replayed=LocationStock("wh2", 2, 0, 0, 2),
        on_hand_after_replay={"store": 0, "wh1": 4, "wh2": 3},
        moves=2,
        locations=("from_location", "to_location"),
        also_bad=({"to_location": "wh1"},),
    ),
)


def payload_changes(move: Move) -> Iterable[dict[str, Any]]:
    """Each makes another operation of the same op_id."""
    yield {move.quantity: move.kwargs()[move.quantity] + 1}
    yield from ({field: "store"} for field in move.locations)
    yield from OTHER_DETAILS
    yield from move.also_changes


def unknown_names(move: Move) -> Iterable[dict[str, Any]]:
    yield {"sku": "NOPE"}
    yield from ({field: "nowhere"} for field in move.locations)
    yield from move.also_unknown


def bad_arguments(move: Move) -> Iterable[dict[str, Any]]:
    yield from ({move.quantity: value} for value in move.bad_quantities)
    yield from ({"sku": value} for value in BAD_NAMES)
    yield from ({field: value} for field in move.locations for value in BAD_LOCATIONS)
    yield from BAD_DETAILS
    yield from move.also_bad


def each_move(cases: Callable[[Move], Iterable[dict[str, Any]]]) -> list[Any]:
    """(move, case) parameters for every case of every move, with readable ids."""
    return [
        pytest.param(move, case, id=f"{move.method}-{label(case)}")
        for move in MOVES
        for case in cases(move)
    ]


def label(case: dict[str, Any]) -> str:
    return ",".join(f"{field}={value!r:.16}" for field, value in case.items())


async def prepare(shop: Engine, move: Move) -> None:
    for location, qty in move.on_hand.items():
        await shop.receive("A", location, qty)
    if move.committed:
        sold = await shop.hold("web", {"A": move.committed}, ttl_ms=MINUTE_MS)
        await shop.confirm(sold.id, reference="order-1")
    if move.held:
        await shop.hold("web", {"A": move.held}, ttl_ms=MINUTE_MS)


async def call(shop: Engine, move: Move, args: dict[str, Any]) -> LocationStock:
    result: LocationStock = await getattr(shop, move.method)(**args)
    return result


async def move_count(client: Any) -> int:
    return sum(e["type"] == "move" for e in await outbox_events(client))


@pytest.mark.parametrize("move", [pytest.param(m, id=m.method) for m in MOVES])
async def test_replay_returns_the_first_result_and_appends_no_move(
    shop: Engine, any_client: Any, move: Move
) -> None:
    await prepare(shop, move)
    args = move.kwargs() | {"op_id": "op-1"}
    moves_before = await move_count(any_client)
    first = await call(shop, move, args)
    assert first == move.replayed
    assert [s for s in (await shop.stock("A")).locations if s.location == first.location] == [first]
    assert await move_count(any_client) == moves_before + move.moves
    await shop.receive("A", first.location, 1)  # a reply worked out again would differ now
    before = await shop.stock("A")
    events = await outbox_events(any_client)
    again = await call(shop, move, args)
    assert again == first
    assert await shop.stock("A") == before
    assert {s.location: s.on_hand for s in before.locations} == move.on_hand_after_replay
    assert await outbox_events(any_client) == events


@pytest.mark.parametrize(("move", "change"), each_move(payload_changes))
async def test_same_op_id_with_another_payload_is_a_conflict(
    shop: Engine, any_client: Any, move: Move, change: dict[str, Any]
) -> None:
    await prepare(shop, move)
    args = move.kwargs() | {"op_id": "op-2"}
    await call(shop, move, args)
    before = await shop.stock("A")
    events = await outbox_events(any_client)
    with pytest.raises(IdempotencyConflictError) as error:
        await call(shop, move, args | change)
    assert error.value.op_id == "op-2"
    assert await shop.stock("A") == before
    assert await outbox_events(any_client) == events


@pytest.mark.parametrize(("move", "unknown"), each_move(unknown_names))
async def test_unknown_names_are_refused_and_change_nothing(
    shop: Engine, any_client: Any, move: Move, unknown: dict[str, Any]
) -> None:
    await prepare(shop, move)
    before = await shop.stock("A")
    events = await outbox_events(any_client)
    args = move.kwargs() | unknown
    error_type, field = (
        (UnknownSkuError, "sku") if "sku" in unknown else (UnknownLocationError, "location")
    )
    with pytest.raises(error_type) as error:
        await call(shop, move, args)
    name = unknown.get("sku", "nowhere")
    assert getattr(error.value, field) == name
    assert await shop.stock("A") == before
    stock_hash = keys.stock(keys.partition_of(args["sku"]))
    assert not [f for f in await any_client.hkeys(stock_hash) if name in f]
    assert await outbox_events(any_client) == events


@pytest.mark.parametrize(("move", "bad"), each_move(bad_arguments))
async def test_bad_arguments_are_refused_before_anything_is_sent(
    shop: Engine, any_client: Any, move: Move, bad: dict[str, Any]
) -> None:
    await prepare(shop, move)
    before = await shop.stock("A")
    events = await outbox_events(any_client)
    with pytest.raises(ValidationError):
        await call(shop, move, move.kwargs() | bad)
    assert await shop.stock("A") == before
    assert await outbox_events(any_client) == events
