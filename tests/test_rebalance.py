"""The dynamic-allocation rebalancer: velocity math, then caps and fences moved on a real
engine from sales the writer put in a real ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

import msgspec
import pytest
from helpers import setup_shop

from engine import Engine, Policy, PolicyKind
from engine.channels.rebalance import (
    Bounds,
    Change,
    RebalanceConfig,
    Rebalancer,
    Velocity,
    split,
)
from engine.errors import ValidationError
from engine.models import SkuSettings
from engine.store import Store
from engine.writer import Writer

H_S = 600.0  # half-life
TAU_S = H_S / math.log(2)
T0 = 1_700_000_000_000

# -- velocity ------------------------------------------------------------------------------


def test_a_sale_halves_each_half_life() -> None:
    v = Velocity(H_S)
    v.observe("A", "web", 10, T0)
    assert v.rate("A", "web", T0) == pytest.approx(10 / TAU_S)
    assert v.rate("A", "web", T0 + 600_000) == pytest.approx(5 / TAU_S)
    assert v.rate("A", "web", T0 + 1_200_000) == pytest.approx(2.5 / TAU_S)
    assert v.rate("A", "pos", T0) == 0.0
    assert v.rate("B", "web", T0) == 0.0


def test_irregular_timing_is_exact_whatever_the_arrival_order() -> None:
    rng = random.Random(7)
    at, sales = T0, []
    for _ in range(200):
        at += rng.choice([0, 0, 5, 700, 30_000, 400_000])  # ties, bursts and long gaps
        sales.append((rng.randint(1, 5), at))
    now = at + 1234
    expected = sum(u * math.exp(-(now - t) / 1000 / TAU_S) for u, t in sales) / TAU_S
    for order in (sales, sales[::-1], rng.sample(sales, len(sales))):
        v = Velocity(H_S)
        for units, t in order:
            v.observe("A", "web", units, t)
        assert v.rate("A", "web", now) == pytest.approx(expected, rel=1e-9)


def test_steady_sales_read_as_their_rate() -> None:
    v = Velocity(H_S)
    at = T0
    for i in range(6000):  # 2 units every 1 s or 3 s: 1 unit/s, for 14 half-lives
        at += 1000 if i % 2 else 3000
        v.observe("A", "web", 2, at)
    assert v.rate("A", "web", at) == pytest.approx(1.0, rel=0.01)


def test_cancels_take_sales_back_and_rates_never_go_negative() -> None:
    v = Velocity(H_S)
    v.observe("A", "web", 10, T0)
    v.observe("A", "web", -4, T0)
    assert v.rate("A", "web", T0) == pytest.approx(6 / TAU_S)
    v.observe("A", "web", -6, T0)
    assert v.rate("A", "web", T0) == pytest.approx(0.0, abs=1e-12)
    v.observe("A", "pos", 3, T0)
    v.observe("A", "pos", -3, T0 + 600_000)  # cancelled later: the sale had decayed
    assert v.rate("A", "pos", T0 + 600_000) == 0.0


# -- split ---------------------------------------------------------------------------------


def test_split_is_proportional_within_bounds_and_whole() -> None:
    assert split(100, {"a": 3.0, "b": 1.0}, {"a": (0, 100), "b": (0, 100)}) == {"a": 75, "b": 25}
    assert split(100, {"a": 3.0, "b": 1.0}, {"a": (0, 60), "b": (0, 100)}) == {"a": 60, "b": 40}
    assert split(100, {"a": 3.0, "b": 1.0}, {"a": (0, 100), "b": (30, 100)}) == {"a": 70, "b": 30}
    assert split(10, {"a": 1.0, "b": 1.0}, {"a": (8, 9), "b": (8, 9)}) == {"a": 8, "b": 8}
    assert split(30, {"a": 1.0, "b": 1.0}, {"a": (8, 9), "b": (8, 9)}) == {"a": 9, "b": 9}
    rng = random.Random(3)
    for _ in range(300):
        names = [f"c{i}" for i in range(rng.randint(1, 5))]
        weights = {c: rng.random() + 1e-6 for c in names}
        bounds = {}
        for c in names:
            low = rng.randint(0, 20)
            bounds[c] = (low, low + rng.randint(0, 50))
        total = rng.randint(0, 200)
        got = split(total, weights, bounds)
        assert all(bounds[c][0] <= got[c] <= bounds[c][1] for c in names)
        if sum(b[0] for b in bounds.values()) <= total <= sum(b[1] for b in bounds.values()):
            assert sum(got.values()) == total


def test_config_refuses_bounds_that_cannot_hold() -> None:
    with pytest.raises(ValidationError):
        RebalanceConfig(channels={"web": Bounds(floor=5, ceiling=4)})
    with pytest.raises(ValidationError):
        RebalanceConfig(channels={"web": Bounds()}, min_change=0)
    raw = b'{"channels": {"web": {"floor": 2, "ceiling": 40}}, "half_life_s": 900}'
    config = msgspec.json.decode(raw, type=RebalanceConfig)
    assert config.channels["web"] == Bounds(2, 40) and config.half_life_s == 900


# -- the rebalancer on a real engine and ledger -------------------------------------------


async def shop_with_sales(
    client: Any, store: Store, web: int = 8, amazon: int = 1, cancel_web: bool = False
) -> Engine:
    """100 units of A at wh1; web and amazon each fenced at 10, and their orders in the ledger."""
    engine = Engine(client)
    await setup_shop(engine)
    await engine.receive("A", "wh1", 100)
    for channel in ("web", "amazon"):
        await engine.set_policy("A", channel, Policy(PolicyKind.FENCE, 10))
    for channel, n in (("web", web), ("amazon", amazon)):
        for i in range(n):
            await engine.record_order(channel, f"{channel}-{i}", "1", "A", 1)
            if cancel_web and channel == "web":
                await engine.cancel_order(channel, f"{channel}-{i}", "1", "A")
    await drain(client, store)
    return engine


async def drain(client: Any, store: Store) -> None:
    writer = Writer(client, store)
    await writer.setup()
    await writer.drain()


def config(**channels: Bounds) -> RebalanceConfig:
    return RebalanceConfig(channels=channels, half_life_s=H_S)


async def policies(engine: Engine, sku: str = "A") -> dict[str, Policy]:
    return dict((await engine.stock(sku)).settings.policies)


async def test_the_faster_channel_gets_more_of_the_fence_and_the_ledger_records_it(
    client: Any, store: Store
) -> None:
    engine = await shop_with_sales(client, store, web=8, amazon=1)
    changes = await Rebalancer(engine, store, config(web=Bounds(), amazon=Bounds())).run_once()
    # 91 units free: web sold 8 (+1 prior), amazon 1 (+1 prior), so 91 * 9/11 and 91 * 2/11
    assert {(c.channel, c.kind, c.old_qty, c.new_qty) for c in changes} == {
        ("web", PolicyKind.FENCE, 10, 74),
        ("amazon", PolicyKind.FENCE, 10, 17),
    }
    assert all(isinstance(c, Change) and c.sku == "A" for c in changes)
    rates = {c.channel: c.velocity for c in changes}
    assert rates["web"] == pytest.approx(8 / TAU_S, rel=1e-2)
    assert rates["amazon"] == pytest.approx(1 / TAU_S, rel=1e-2)
    level = await engine.stock("A")
    assert {c: p.qty for c, p in level.settings.policies.items()} == {"web": 74, "amazon": 17}
    assert level.ats == {"web": 74, "amazon": 17, "pos": 0}
    await drain(client, store)
    (row,) = [r for r in await store.latest_sku_settings() if r.sku == "A"]
    assert msgspec.json.decode(row.settings, type=SkuSettings) == level.settings


async def test_cancelled_orders_do_not_count_as_velocity(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store, web=8, amazon=2, cancel_web=True)
    rebalancer = Rebalancer(engine, store, config(web=Bounds(), amazon=Bounds()))
    await rebalancer.run_once()
    qty = {c: p.qty for c, p in (await policies(engine)).items()}
    assert qty["amazon"] > 2 * qty["web"]  # 98 free: 3/4 to amazon, 1/4 to web (its prior)
    assert qty["amazon"] + qty["web"] == 98


async def test_floor_and_ceiling_hold(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store)
    await Rebalancer(engine, store, config(web=Bounds(), amazon=Bounds(floor=30))).run_once()
    assert {c: p.qty for c, p in (await policies(engine)).items()} == {"web": 61, "amazon": 30}
    capped = config(web=Bounds(ceiling=50), amazon=Bounds(floor=30))
    await Rebalancer(engine, store, capped).run_once()
    assert {c: p.qty for c, p in (await policies(engine)).items()} == {"web": 50, "amazon": 41}


async def test_fences_never_sum_above_the_free_units(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store)
    # pos keeps a fence of 20 it does not manage: 91 - 20 = 71 left for floors of 50 + 50
    await engine.set_policy("A", "pos", Policy(PolicyKind.FENCE, 20))
    floors = config(web=Bounds(floor=50), amazon=Bounds(floor=50))
    await Rebalancer(engine, store, floors).run_once()
    qty = {c: p.qty for c, p in (await policies(engine)).items()}
    assert qty["pos"] == 20
    assert qty["web"] + qty["amazon"] == 71
    assert qty["web"] > qty["amazon"]
    level = await engine.stock("A")
    assert sum(level.ats.values()) <= sum(loc.available for loc in level.locations)


async def test_caps_stay_caps_and_buffers_are_kept(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store)
    await engine.set_policy("A", "web", Policy(PolicyKind.CAP, 10, buffer=2))
    changes = await Rebalancer(engine, store, config(web=Bounds(), amazon=Bounds())).run_once()
    assert {c.channel: c.kind for c in changes} == {"web": "cap", "amazon": "fence"}
    found = await policies(engine)
    assert (found["web"].kind, found["web"].buffer) == (PolicyKind.CAP, 2)
    assert found["amazon"].kind == PolicyKind.FENCE
    assert found["web"].qty == 74  # web's share, as when it was a fence
    assert (await engine.stock("A")).ats["web"] == 72


async def test_no_write_below_min_change(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store)
    before = (await engine.stock("A")).settings
    lazy = RebalanceConfig(channels={"web": Bounds(), "amazon": Bounds()}, min_change=100)
    assert await Rebalancer(engine, store, lazy).run_once() == []
    assert (await engine.stock("A")).settings == before  # since_ms too: nothing was set
    rebalancer = Rebalancer(engine, store, config(web=Bounds(), amazon=Bounds()))
    assert len(await rebalancer.run_once()) == 2
    settled = (await engine.stock("A")).settings
    now = time.time_ns() // 1_000_000
    rate = rebalancer.velocity.rate("A", "web", now)
    assert await rebalancer.run_once() == []  # same sales, read once: the targets stand
    assert (await engine.stock("A")).settings == settled
    assert rebalancer.velocity.rate("A", "web", now) == pytest.approx(rate)  # not read twice


async def test_a_spent_fence_is_refilled_even_at_the_same_qty(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store, web=8, amazon=0)
    assert (await engine.stock("A")).ats["web"] == 2  # 8 of its 10 sold
    changes = await Rebalancer(engine, store, config(web=Bounds(ceiling=10))).run_once()
    assert [(c.channel, c.old_qty, c.new_qty) for c in changes] == [("web", 10, 10)]
    assert (await engine.stock("A")).ats["web"] == 10


async def test_unmanaged_skus_and_channels_are_left_alone(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store)
    await engine.receive("B", "wh1", 10)
    await engine.receive("A", "store", 30)  # only pos sells from the store
    before = {sku: (await engine.stock(sku)).settings for sku in ("B", "C")}
    changes = await Rebalancer(engine, store, config(web=Bounds())).run_once()
    # B and C have pool policies; of A, web takes the 91 free at wh1 less amazon's 9 unused
    assert [(c.sku, c.channel, c.new_qty) for c in changes] == [("A", "web", 82)]
    assert {sku: (await engine.stock(sku)).settings for sku in ("B", "C")} == before
    assert (await policies(engine))["amazon"].qty == 10
    only_b = RebalanceConfig(channels={"web": Bounds()}, skus=("B", "nope"))
    assert await Rebalancer(engine, store, only_b).run_once() == []


async def test_run_rebalances_every_interval_until_stopped(client: Any, store: Store) -> None:
    engine = await shop_with_sales(client, store)
    fast = RebalanceConfig(channels={"web": Bounds(), "amazon": Bounds()}, interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(Rebalancer(engine, store, fast).run(stop))
    for _ in range(200):
        if (await policies(engine))["web"].qty != 10:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert (await policies(engine))["web"].qty == 74
