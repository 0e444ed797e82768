"""The ATS formula of lua/lib.lua, one hand-computed row per case.

Layout: locations wh1, wh2, store; web and amazon sell from [wh1, wh2], pos from [store],
outlet from [wh2, store]. free(l) = on_hand - held; every expected ATS below is worked out
by hand from the formula (fences of other channels and the SKU buffer come off the pool,
the channel's own policy limits it, then the channel buffer comes off, never below 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import pytest

from engine import Engine, Policy, PolicyKind
from engine.errors import InsufficientStockError
from engine.models import BufferOverride

MINUTE_MS = 60_000
CHANNELS = {
    "web": ["wh1", "wh2"],
    "amazon": ["wh1", "wh2"],
    "pos": ["store"],
    "outlet": ["wh2", "store"],
}
NONE: Mapping[str, Any] = MappingProxyType({})  # an immutable empty default
# Times stop at 10**13 ms: Lua's cjson keeps 14 significant digits.
ACTIVE = BufferOverride(start_ms=0, end_ms=10**13, qty=5)
FUTURE = BufferOverride(start_ms=9 * 10**12, end_ms=10**13, qty=5)
PAST = BufferOverride(start_ms=0, end_ms=1_000, qty=5)


def pool(buffer: int = 0) -> Policy:
    return Policy(PolicyKind.POOL, 0, buffer)


def cap(qty: int, buffer: int = 0) -> Policy:
    return Policy(PolicyKind.CAP, qty, buffer)


def pct(qty: int) -> Policy:
    return Policy(PolicyKind.CAP_PCT, qty, 0)


def fence(qty: int) -> Policy:
    return Policy(PolicyKind.FENCE, qty, 0)


class Case(NamedTuple):
    id: str
    stock: dict[str, int]  # location -> units received
    expected: dict[str, int]  # channel -> ATS, after the holds
    holds: Mapping[str, int] = NONE  # channel -> units held, in this order
    defaults: Mapping[str, Policy] = NONE  # channel -> its default policy
    policies: Mapping[str, Policy] = NONE  # channel -> this SKU's own policy
    buffer: int = 0  # the SKU's buffer
    override: BufferOverride | None = None
    probe: tuple[str, ...] = ()  # channels where ATS succeeds and ATS + 1 fails


CASES = [
    Case("pooled", {"wh1": 4, "wh2": 6, "store": 3},
         {"web": 10, "amazon": 10, "pos": 3, "outlet": 9}, probe=("web", "outlet")),
    Case("pooled-holds-drain-locations-in-order", {"wh1": 4, "wh2": 6, "store": 3},
         {"web": 5, "amazon": 5, "pos": 2, "outlet": 7},
         holds={"web": 5, "pos": 1}, probe=("outlet",)),
    Case("capped-in-units", {"wh1": 10}, {"web": 3, "amazon": 10, "pos": 0, "outlet": 0},
         defaults={"web": cap(3)}, probe=("web", "amazon")),
    Case("capped-in-units-after-own-holds", {"wh1": 10},
         {"web": 1, "amazon": 8, "pos": 0, "outlet": 0},
         holds={"web": 2}, defaults={"web": cap(3)}, probe=("web",)),
    Case("capped-in-units-with-channel-buffer", {"wh1": 10},
         {"web": 2, "amazon": 10, "pos": 0, "outlet": 0}, defaults={"web": cap(3, buffer=1)}),
    Case("capped-in-percent", {"wh1": 7, "wh2": 2}, {"web": 4, "amazon": 9, "pos": 0, "outlet": 2},
         defaults={"web": pct(50)}, probe=("web",)),
    Case("capped-in-percent-after-own-holds", {"wh1": 7, "wh2": 2},
         {"web": 1, "amazon": 6, "pos": 0, "outlet": 2},
         holds={"web": 3}, defaults={"web": pct(50)}, probe=("web",)),
    Case("ring-fenced", {"wh1": 10, "store": 6}, {"web": 6, "amazon": 4, "pos": 2, "outlet": 2},
         defaults={"amazon": fence(4)}, probe=("amazon", "web")),
    Case("ring-fenced-after-the-fenced-channel-holds", {"wh1": 10, "store": 6},
         {"web": 6, "amazon": 1, "pos": 5, "outlet": 5},
         holds={"amazon": 3}, defaults={"amazon": fence(4)}, probe=("amazon", "pos")),
    Case("ring-fence-fully-held", {"wh1": 10, "store": 6},
         {"web": 6, "amazon": 0, "pos": 6, "outlet": 6},
         holds={"amazon": 4}, defaults={"amazon": fence(4)}, probe=("amazon",)),
    Case("per-channel-buffer", {"wh1": 5, "wh2": 1}, {"web": 4, "amazon": 6, "pos": 0, "outlet": 1},
         defaults={"web": pool(buffer=2)}, probe=("web",)),
    Case("per-sku-buffer", {"wh1": 5, "wh2": 1, "store": 2},
         {"web": 3, "amazon": 3, "pos": 0, "outlet": 0}, buffer=3, probe=("web", "pos")),
    Case("per-sku-policy-overrides-channel-default", {"wh1": 8},
         {"web": 8, "amazon": 4, "pos": 0, "outlet": 0},
         defaults={"web": cap(2)}, policies={"web": pool(), "amazon": cap(5, buffer=1)},
         probe=("web", "amazon")),
    Case("per-sku-fence-is-sku-wide", {"wh1": 3, "store": 5},
         {"web": 1, "amazon": 1, "pos": 2, "outlet": 3},
         policies={"pos": fence(2)}, probe=("pos", "web")),
    Case("channels-selling-from-some-locations", {"wh1": 1, "wh2": 2, "store": 4},
         {"web": 3, "amazon": 3, "pos": 1, "outlet": 3}, holds={"pos": 3}, probe=("outlet",)),
    Case("active-buffer-override", {"wh1": 8}, {"web": 3, "amazon": 3, "pos": 0, "outlet": 0},
         buffer=1, override=ACTIVE, probe=("web",)),
    Case("future-buffer-override-is-inactive", {"wh1": 8},
         {"web": 7, "amazon": 7, "pos": 0, "outlet": 0}, buffer=1, override=FUTURE,
         probe=("web",)),
    Case("past-buffer-override-is-inactive", {"wh1": 8},
         {"web": 7, "amazon": 7, "pos": 0, "outlet": 0}, buffer=1, override=PAST),
    Case("never-below-zero", {"wh1": 2}, {"web": 0, "amazon": 1, "pos": 0, "outlet": 0},
         defaults={"web": pool(buffer=1), "amazon": fence(5)}, buffer=1,
         probe=("web", "amazon")),
]  # fmt: skip


async def build(engine: Engine, case: Case, sku: str) -> None:
    """One SKU set up as the case says: settings, stock, then holds."""
    await engine.define_sku(sku, buffer=case.buffer)
    for channel, policy in case.policies.items():
        await engine.set_policy(sku, channel, policy)
    if case.override is not None:
        await engine.set_buffer_override(sku, case.override)
    for location, units in case.stock.items():
        await engine.receive(sku, location, units)
    for channel, units in case.holds.items():
        await engine.hold(channel, {sku: units}, ttl_ms=MINUTE_MS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_ats(engine: Engine, case: Case) -> None:
    for location in ("wh1", "wh2", "store"):
        await engine.define_location(location)
    for channel, locations in CHANNELS.items():
        await engine.define_channel(channel, locations, case.defaults.get(channel, Policy()))

    await build(engine, case, "SKU")
    assert (await engine.stock("SKU")).ats == case.expected
    for channel, ats in case.expected.items():
        assert await engine.ats(channel, ["SKU"]) == {"SKU": ats}, channel

    for channel in case.probe:  # a fresh SKU per probe, so probes don't interfere
        sku, ats = f"P-{channel}", case.expected[channel]
        await build(engine, case, sku)
        with pytest.raises(InsufficientStockError) as error:
            await engine.hold(channel, {sku: ats + 1}, ttl_ms=MINUTE_MS)
        assert (error.value.requested, error.value.available) == (ats + 1, ats), channel
        if ats > 0:
            hold = await engine.hold(channel, {sku: ats}, ttl_ms=MINUTE_MS)
            assert sum(line.qty for line in hold.lines) == ats
            assert (await engine.stock(sku, [channel])).ats == {channel: 0}, channel
