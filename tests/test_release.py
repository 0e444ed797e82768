"""Contract of lua/release.lua through Engine.release."""

from __future__ import annotations

import pytest
from helpers import outbox_events

from engine import Engine, HoldState
from engine.errors import HoldNotActiveError, HoldNotFoundError

MINUTE_MS = 60_000


async def test_release_returns_units_at_once_and_emits_an_event(
    shop: Engine, any_client: object
) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 4}, ttl_ms=MINUTE_MS)
    released = await shop.release(hold.id)
    assert released.state is HoldState.RELEASED
    assert (await shop.stock("A")).ats["web"] == 5
    events = [e["event"] for e in await outbox_events(any_client) if e["type"] == "hold"]
    assert events == ["placed", "released"]


async def test_release_twice_changes_nothing_more(shop: Engine, any_client: object) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 4}, ttl_ms=MINUTE_MS)
    first = await shop.release(hold.id)
    assert await shop.release(hold.id) == first
    await shop.hold("web", {"A": 5}, ttl_ms=MINUTE_MS)
    assert (await shop.stock("A")).ats["web"] == 0, "a second release freed units twice"
    released = [e for e in await outbox_events(any_client) if e.get("event") == "released"]
    assert len(released) == 1


async def test_release_of_a_multi_part_hold_frees_every_part(shop: Engine) -> None:
    for sku in ("A", "B", "C"):
        await shop.receive(sku, "wh2", 3)
    hold = await shop.hold("web", {"A": 1, "B": 2, "C": 3}, ttl_ms=MINUTE_MS)
    released = await shop.release(hold.id)
    assert released.state is HoldState.RELEASED
    assert sorted(line.sku for line in released.lines) == ["A", "B", "C"]
    for sku in ("A", "B", "C"):
        assert (await shop.stock(sku)).ats["web"] == 3


async def test_release_refuses_confirmed_and_unknown_holds(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    hold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await shop.confirm(hold.id)
    with pytest.raises(HoldNotActiveError) as error:
        await shop.release(hold.id)
    assert error.value.state == "confirmed"
    assert (await shop.stock("A")).locations[1].committed == 2
    with pytest.raises(HoldNotFoundError):
        await shop.release("no-such-hold")
