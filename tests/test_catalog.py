"""Contract of lua/catalog.lua and lua/sku.lua through the Engine's catalog verbs."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from engine import Engine, Policy, PolicyKind, keys
from engine.errors import (
    UnknownChannelError,
    UnknownLocationError,
    UnknownSkuError,
    ValidationError,
)
from engine.models import BufferOverride, Catalog, Channel, SkuSettings

CAP3 = Policy(PolicyKind.CAP, qty=3, buffer=1)


def stamp(policy: Policy, like: Policy) -> Policy:
    """The policy with the since_ms the engine gave `like`."""
    return msgspec.structs.replace(policy, since_ms=like.since_ms)


async def partition_copies(client: Any) -> list[Catalog]:
    raws = [await client.get(keys.partition_keys(p)[0]) for p in range(keys.PARTITIONS)]
    return [msgspec.json.decode(raw, type=Catalog) for raw in raws]


async def test_catalog_returns_what_was_defined_with_rising_versions(engine: Engine) -> None:
    assert await engine.catalog() == Catalog()
    first = await engine.define_location("wh1")
    second = await engine.define_location("store")
    third = await engine.define_channel("web", ["store", "wh1"], CAP3)
    assert 0 < first.version < second.version < third.version
    assert third.locations.keys() == {"wh1", "store"}
    stamped = third.channels["web"].policy
    assert stamped.since_ms > 0  # the engine stamps when a cap or fence starts counting
    assert third.channels == {"web": Channel("web", ("store", "wh1"), stamp(CAP3, stamped))}
    assert await engine.catalog() == third
    replaced = await engine.define_channel("web", ["wh1"])
    assert replaced.channels["web"] == Channel("web", ("wh1",), Policy())
    assert replaced.version > third.version


async def test_every_partition_converges_to_the_same_catalog(
    engine: Engine, any_client: Any
) -> None:
    for location in ("wh1", "wh2", "store"):
        await engine.define_location(location)
    await engine.define_channel("web", ["wh1", "wh2"])
    last = await engine.define_channel("pos", ["store"], Policy(PolicyKind.FENCE, qty=2))
    assert await partition_copies(any_client) == [last] * keys.PARTITIONS


async def test_define_channel_with_an_unknown_location_changes_nothing(engine: Engine) -> None:
    before = await engine.define_location("wh1")
    with pytest.raises(UnknownLocationError) as error:
        await engine.define_channel("web", ["wh1", "nowhere"])
    assert error.value.location == "nowhere"
    assert await engine.catalog() == before


@pytest.mark.parametrize(
    "locations", [[], ["wh1", "wh1"], ["wh1", "bad:loc"], ["wh1", ""], ["wh1", 3]]
)
async def test_define_channel_refuses_bad_locations(engine: Engine, locations: list[Any]) -> None:
    before = await engine.define_location("wh1")
    with pytest.raises(ValidationError):
        await engine.define_channel("web", locations)
    assert await engine.catalog() == before


@pytest.mark.parametrize("name", ["", "bad:name", "-dash", "x" * 101, None])
async def test_bad_names_are_refused(engine: Engine, name: Any) -> None:
    await engine.define_location("wh1")
    before = await engine.catalog()
    with pytest.raises(ValidationError):
        await engine.define_location(name)
    with pytest.raises(ValidationError):
        await engine.define_channel(name, ["wh1"])
    with pytest.raises(ValidationError):
        await engine.define_sku(name)
    assert await engine.catalog() == before


async def test_sku_settings_policies_and_overrides(shop: Engine) -> None:
    assert await shop.define_sku("D", buffer=2) == SkuSettings(buffer=2)
    with_policy = await shop.set_policy("D", "web", CAP3)
    cap3 = with_policy.policies["web"]
    assert cap3 == stamp(CAP3, cap3) and cap3.since_ms > 0
    assert with_policy == SkuSettings(buffer=2, policies={"web": cap3})
    window = BufferOverride(start_ms=1_000, end_ms=2_000, qty=7)
    with_override = await shop.set_buffer_override("D", window)
    assert with_override == SkuSettings(buffer=2, override=window, policies={"web": cap3})
    redefined = await shop.define_sku("D", buffer=4)
    assert redefined == SkuSettings(buffer=4, override=window, policies={"web": cap3})
    assert await shop.set_policy("D", "web", None) == SkuSettings(buffer=4, override=window)
    assert await shop.set_buffer_override("D", None) == SkuSettings(buffer=4)
    assert (await shop.stock("D")).settings == SkuSettings(buffer=4)


async def test_set_policy_refuses_unknown_names(shop: Engine) -> None:
    with pytest.raises(UnknownSkuError) as sku_error:
        await shop.set_policy("NOPE", "web", CAP3)
    assert sku_error.value.sku == "NOPE"
    with pytest.raises(UnknownChannelError) as channel_error:
        await shop.set_policy("A", "ebay", CAP3)
    assert channel_error.value.channel == "ebay"
    with pytest.raises(UnknownSkuError):
        await shop.set_buffer_override("NOPE", BufferOverride(0, 10, 1))
    assert (await shop.stock("A")).settings == SkuSettings()


@pytest.mark.parametrize(
    "policy",
    [
        Policy(PolicyKind.CAP_PCT, qty=101),
        Policy(PolicyKind.CAP, qty=-1),
        Policy(PolicyKind.POOL, buffer=-1),
        Policy(PolicyKind.FENCE, qty=10**12),
        Policy(PolicyKind.CAP, qty="5"),  # type: ignore[arg-type]
        Policy(PolicyKind.CAP, qty=2.5),  # type: ignore[arg-type]
    ],
)
async def test_invalid_policies_are_refused(shop: Engine, policy: Policy) -> None:
    with pytest.raises(ValidationError):
        await shop.set_policy("A", "web", policy)
    with pytest.raises(ValidationError):
        await shop.define_channel("web", ["wh1"], policy)
    assert (await shop.stock("A")).settings == SkuSettings()
    assert (await shop.catalog()).channels["web"].locations == ("wh1", "wh2")


async def test_a_full_percentage_cap_is_accepted(shop: Engine) -> None:
    full = Policy(PolicyKind.CAP_PCT, qty=100)
    assert (await shop.set_policy("A", "web", full)).policies == {"web": full}


async def test_an_unknown_policy_kind_is_a_validation_error(shop: Engine) -> None:
    with pytest.raises(ValidationError):
        await shop.set_policy("A", "web", Policy(kind="bogus", qty=1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "override",
    [BufferOverride(10, 10, 1), BufferOverride(-1, 10, 1), BufferOverride(0, 10, -1)],
)
async def test_invalid_overrides_are_refused(shop: Engine, override: BufferOverride) -> None:
    with pytest.raises(ValidationError):
        await shop.set_buffer_override("A", override)
    assert (await shop.stock("A")).settings == SkuSettings()


async def test_override_times_are_limited_to_what_lua_keeps_exactly(shop: Engine) -> None:
    # Lua's cjson keeps 14 significant digits, so times stop at 10**13 ms (year 2286).
    window = BufferOverride(0, 10**13, 2)
    assert (await shop.set_buffer_override("A", window)).override == window
    assert (await shop.stock("A")).settings.override == window
    with pytest.raises(ValidationError):
        await shop.set_buffer_override("A", BufferOverride(0, 2**53 - 1, 2))
    assert (await shop.stock("A")).settings.override == window


async def test_two_concurrent_location_definitions_both_land(engine: Engine) -> None:
    await asyncio.gather(engine.define_location("L1"), engine.define_location("L2"))
    assert (await engine.catalog()).locations.keys() == {"L1", "L2"}


async def test_concurrent_location_definitions_all_land(engine: Engine, any_client: Any) -> None:
    names = {f"L{i}" for i in range(10)}
    await asyncio.gather(*(engine.define_location(n) for n in names))
    final = await engine.catalog()
    assert final.locations.keys() == names
    assert await partition_copies(any_client) == [final] * keys.PARTITIONS
