"""Contract of lua/order.lua through Engine.record_order and Engine.cancel_order, and of
caps and fences counting a channel's sales (lib.lua sold_by)."""

from __future__ import annotations

import asyncio

import pytest
from helpers import outbox_events

from engine import Engine, Policy, PolicyKind
from engine.errors import HoldNotFoundError, UnknownChannelError, UnknownSkuError, ValidationError

MINUTE_MS = 60_000


async def test_an_order_within_ats_is_committed_from_the_channels_locations(shop: Engine) -> None:
    await shop.receive("A", "wh1", 2)
    await shop.receive("A", "wh2", 5)
    sale = await shop.record_order("web", "1001", "1", "A", 4, actor="shopify")
    assert (sale.state, sale.shortfall, sale.unfilled) == ("confirmed", 0, 0)
    assert [(line.location, line.qty) for line in sale.lines] == [("wh1", 2), ("wh2", 2)]
    stock = await shop.stock("A")
    committed = {loc.location: loc.committed for loc in stock.locations}
    assert committed == {"store": 0, "wh1": 2, "wh2": 2}
    assert stock.ats["web"] == 3


async def test_an_order_beyond_ats_is_never_refused_and_records_a_channel_oversell(
    shop: Engine, any_client: object
) -> None:
    await shop.receive("A", "wh1", 10)
    await shop.set_policy("A", "amazon", Policy(PolicyKind.CAP, 3))
    assert (await shop.ats("amazon", ["A"]))["A"] == 3
    sale = await shop.record_order("amazon", "114-1", "OI-1", "A", 5)
    assert (sale.shortfall, sale.unfilled) == (2, 0)
    assert sum(line.qty for line in sale.lines) == 5  # the buyer paid: all 5 are committed
    events = [e for e in await outbox_events(any_client) if e.get("type") == "oversell"]
    assert len(events) == 1
    oversell = events[0]
    assert (oversell["sku"], oversell["channel"], oversell["ats"]) == ("A", "amazon", 3)
    assert (oversell["shortfall"], oversell["unfilled"], oversell["reference"]) == (2, 0, "114-1")
    assert (await shop.ats("amazon", ["A"]))["A"] == 0


async def test_units_no_location_has_are_unfilled_and_never_committed(shop: Engine) -> None:
    await shop.receive("A", "wh1", 3)
    hold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    sale = await shop.record_order("amazon", "114-2", "1", "A", 4)
    assert (sale.shortfall, sale.unfilled) == (3, 3)
    assert [(line.location, line.qty) for line in sale.lines] == [("wh1", 1)]
    wh1 = (await shop.stock("A")).locations[1]
    assert (wh1.on_hand, wh1.committed, wh1.held) == (3, 1, 2)  # committed + held <= on_hand
    await shop.confirm(hold.id)  # the checkout's hold was never at risk


async def test_recording_the_same_line_again_returns_the_first_outcome(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    first = await shop.record_order("web", "1002", "7", "A", 2)
    again = await asyncio.gather(
        *(shop.record_order("web", "1002", "7", "A", 2) for _ in range(20))
    )
    assert all(sale == first for sale in again)
    assert (await shop.stock("A")).locations[1].committed == 2


async def test_cancel_returns_the_units_to_sale_once(shop: Engine, any_client: object) -> None:
    await shop.receive("A", "wh1", 5)
    await shop.record_order("web", "1003", "1", "A", 3)
    cancelled = await shop.cancel_order("web", "1003", "1", "A")
    assert cancelled.state == "cancelled"
    assert await shop.cancel_order("web", "1003", "1", "A") == cancelled
    assert (await shop.stock("A")).locations[1].committed == 0
    cancels = [e for e in await outbox_events(any_client) if e.get("kind") == "cancel"]
    assert [(c["qty"], c["channel"], c["reference"]) for c in cancels] == [(3, "web", "1003")]


async def test_bad_order_input_is_refused_before_anything_changes(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    with pytest.raises(HoldNotFoundError):
        await shop.cancel_order("web", "never", "1", "A")
    with pytest.raises(UnknownSkuError):
        await shop.record_order("web", "1004", "1", "NOPE", 1)
    with pytest.raises(UnknownChannelError):
        await shop.record_order("ebay", "1004", "1", "A", 1)
    for qty in (0, -1):
        with pytest.raises(ValidationError):
            await shop.record_order("web", "1004", "1", "A", qty)
    with pytest.raises(ValidationError):
        await shop.record_order("web", "", "1", "A", 1)
    assert (await shop.stock("A")).locations[1].committed == 0


async def test_a_fence_is_used_up_by_its_channels_sales_and_others_never_touch_it(
    shop: Engine,
) -> None:
    await shop.receive("A", "wh1", 10)
    await shop.set_policy("A", "amazon", Policy(PolicyKind.FENCE, 4))
    assert await shop.ats("web", ["A"]) == {"A": 6}
    await shop.record_order("web", "w1", "1", "A", 6)  # web sells its whole share
    assert (await shop.ats("amazon", ["A"]))["A"] == 4  # amazon's fence is intact
    hold = await shop.hold("amazon", {"A": 3}, ttl_ms=MINUTE_MS)
    await shop.confirm(hold.id)
    assert (await shop.ats("amazon", ["A"]))["A"] == 1
    assert (await shop.ats("web", ["A"]))["A"] == 0
    await shop.cancel_order("web", "w1", "1", "A")
    assert await shop.ats("web", ["A"]) == {"A": 6}  # 7 free, 1 still fenced for amazon


async def test_setting_a_cap_again_starts_its_count_afresh(shop: Engine) -> None:
    await shop.receive("A", "wh1", 10)
    await shop.set_policy("A", "amazon", Policy(PolicyKind.CAP, 3))
    await shop.record_order("amazon", "a1", "1", "A", 3)
    assert (await shop.ats("amazon", ["A"]))["A"] == 0
    await asyncio.sleep(0.002)  # a new since_ms
    await shop.set_policy("A", "amazon", Policy(PolicyKind.CAP, 3))
    assert (await shop.ats("amazon", ["A"]))["A"] == 3


async def test_a_line_no_location_can_fill_at_all_is_recorded_with_no_units(shop: Engine) -> None:
    await shop.receive("A", "wh1", 1)
    await shop.record_order("web", "1005", "1", "A", 1)
    empty = await shop.record_order("web", "1006", "1", "A", 2)
    assert (empty.lines, empty.shortfall, empty.unfilled) == ((), 2, 2)
    assert await shop.record_order("web", "1006", "1", "A", 2) == empty
    assert (await shop.stock("A")).locations[1].committed == 1
