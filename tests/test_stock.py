"""Contract of lua/stock.lua and lua/ats.lua through Engine.stock and Engine.ats."""

from __future__ import annotations

import asyncio

import pytest

from engine import Engine, HoldState, Policy, PolicyKind, keys
from engine.errors import UnknownChannelError, UnknownSkuError, ValidationError
from engine.models import LocationStock, SkuSettings

MINUTE_MS = 60_000


async def test_stock_lists_every_location_sorted_by_name(shop: Engine) -> None:
    await shop.define_location("annex")
    await shop.receive("A", "wh2", 5)
    await shop.receive("A", "annex", 1)
    await shop.receive("A", "store", 4)
    sold = await shop.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    await shop.confirm(sold.id, reference="order-1")
    await shop.hold("pos", {"A": 3}, ttl_ms=MINUTE_MS)
    stock = await shop.stock("A")
    assert stock.sku == "A"
    assert stock.locations == (
        LocationStock("annex", on_hand=1, committed=0, held=0, available=1),
        LocationStock("store", on_hand=4, committed=0, held=3, available=1),
        LocationStock("wh1", on_hand=0, committed=0, held=0, available=0),
        LocationStock("wh2", on_hand=5, committed=2, held=0, available=3),
    )
    assert stock.ats == {"amazon": 3, "pos": 1, "web": 3}
    assert stock.settings == SkuSettings()


async def test_stock_reports_only_the_channels_asked_for(shop: Engine) -> None:
    await shop.receive("A", "store", 2)
    await shop.set_policy("A", "web", Policy(PolicyKind.POOL, buffer=1))
    await shop.receive("A", "wh1", 3)
    stock = await shop.stock("A", ["pos", "web"])
    assert stock.ats == {"pos": 2, "web": 2}
    assert stock.settings.policies == {"web": Policy(PolicyKind.POOL, buffer=1)}


async def test_stock_refuses_unknown_names(shop: Engine) -> None:
    with pytest.raises(UnknownSkuError) as sku_error:
        await shop.stock("NOPE")
    assert sku_error.value.sku == "NOPE"
    with pytest.raises(UnknownChannelError) as channel_error:
        await shop.stock("A", ["web", "ebay"])
    assert channel_error.value.channel == "ebay"
    with pytest.raises(ValidationError):
        await shop.stock("bad:sku")


async def test_ats_reads_many_skus_across_partitions(shop: Engine) -> None:
    assert len({keys.partition_of(s) for s in ("A", "B", "C")}) == 3
    await shop.receive("A", "wh1", 4)
    await shop.receive("B", "wh2", 2)
    await shop.receive("C", "store", 9)
    await shop.hold("web", {"A": 1, "B": 2}, ttl_ms=MINUTE_MS)
    assert await shop.ats("web", ["A", "B", "C"]) == {"A": 3, "B": 0, "C": 0}
    assert await shop.ats("pos", ["C", "A"]) == {"C": 9, "A": 0}


async def test_ats_leaves_unknown_skus_out(shop: Engine) -> None:
    await shop.receive("A", "wh1", 4)
    assert await shop.ats("amazon", ["NOPE", "A", "ZZZ"]) == {"A": 4}
    assert await shop.ats("amazon", ["NOPE"]) == {}


async def test_ats_refuses_unknown_channels_and_bad_names(shop: Engine) -> None:
    with pytest.raises(UnknownChannelError) as error:
        await shop.ats("ebay", ["A", "B"])
    assert error.value.channel == "ebay"
    with pytest.raises(ValidationError):
        await shop.ats("web", ["A", "bad:sku"])
    with pytest.raises(ValidationError):
        await shop.ats("bad:channel", ["A"])


async def test_an_expired_hold_stops_counting_without_a_sweeper(shop: Engine) -> None:
    await shop.receive("A", "wh1", 5)
    await shop.receive("B", "wh1", 5)
    short = await shop.hold("web", {"A": 2}, ttl_ms=50)
    await shop.hold("web", {"B": 3}, ttl_ms=50)
    await shop.hold("amazon", {"B": 1}, ttl_ms=MINUTE_MS)  # stays live
    assert (await shop.stock("A")).ats["web"] == 3
    await asyncio.sleep(0.2)
    stock = await shop.stock("A")
    assert stock.locations[1] == LocationStock("wh1", 5, 0, 0, 5)
    assert stock.ats == {"amazon": 5, "pos": 0, "web": 5}
    assert await shop.ats("web", ["B"]) == {"B": 4}
    assert (await shop.get_hold(short.id)).state is HoldState.EXPIRED


async def test_ats_for_an_unknown_channel_is_refused_even_with_no_skus(shop: Engine) -> None:
    with pytest.raises(UnknownChannelError):
        await shop.ats("ebay", [])
    assert await shop.ats("web", []) == {}
