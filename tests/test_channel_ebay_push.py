"""The eBay connector's pushes against the eBay simulator, over real HTTP on loopback:
batches, revisions, limits, faults."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from ebay_rig import (
    TOKEN,
    Rig,
    make_connector,
    rig,
    started,
)

from engine.channels.base import (
    Listing,
    Push,
)
from engine.channels.ebay import iso_ms, to_iso


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[Rig]:
    async with started() as shared:
        yield shared


# -- outbound ---------------------------------------------------------------------------------


async def test_pushes_go_in_batches_of_25(servers: Rig) -> None:
    async with rig(servers, limits=False) as r:
        pushes = [Push(f"SKU-{i}", i) for i in range(60)]
        results = await r.conn.push(pushes)
        assert [result.sku for result in results] == [p.sku for p in pushes]
        assert all(result.ok for result in results)
        assert r.sim.batch_sizes == [25, 25, 10]
        assert r.sim.quantities == {p.sku: p.quantity for p in pushes}
        stale, other, latest = await r.conn.push(
            [Push("SKU-0", 9), Push("SKU-1", 9), Push("SKU-0", 8)]
        )
        assert stale == latest and latest.ok and other.ok  # superseded in the same call
        assert r.sim.batch_sizes[-1] == 2 and r.sim.revisions["5000000000"] == 2
        assert r.sim.quantities["SKU-0"] == 8


async def test_one_sku_per_call_reading(servers: Rig) -> None:
    async with rig(servers, sim_options={"one_sku_per_call": True}) as r:
        results = await r.conn.push([Push("SKU-0", 1), Push("SKU-1", 2)])
        assert [(x.ok, x.retry) for x in results] == [(False, False)] * 2
        assert r.sim.calls == 1 and r.sim.updates == 0
        r.conn.one_sku_per_call = True
        assert all(x.ok for x in await r.conn.push([Push("SKU-0", 1), Push("SKU-1", 2)]))
        assert r.sim.batch_sizes == [1, 1]


async def test_per_item_results(servers: Rig) -> None:
    async with rig(servers) as r:
        r.conn.by_sku["SKU-1"] = Listing("SKU-1", {"sku": "SKU-1", "offer_id": "404"})
        pushes = [Push("SKU-0", 3), Push("SKU-1", 3), Push("SKU-X", 3), Push("SKU-2", -1)]
        ok, unknown_offer, no_listing, negative = await r.conn.push(pushes)
        assert ok.ok and negative.ok and r.sim.quantities == {"SKU-0": 3, "SKU-2": 0}
        assert (unknown_offer.ok, unknown_offer.retry) == (False, False)
        assert unknown_offer.error.startswith("404")
        assert (no_listing.ok, no_listing.retry) == (False, False)
        assert r.sim.batch_sizes == [3]


async def test_convergence_after_many_pushes(servers: Rig) -> None:
    rng = random.Random(6)
    async with rig(servers, conn_options={"rate_per_s": None}, limits=False) as r:
        last: dict[str, int] = {}
        for _ in range(20):
            size = rng.randrange(1, 30)
            pushes = [Push(f"SKU-{rng.randrange(8)}", rng.randrange(50)) for _ in range(size)]
            results = await r.conn.push(pushes)
            assert all(result.ok for result in results)
            last.update((p.sku, p.quantity) for p in pushes)
        assert r.sim.quantities == last
        assert all(r.sim.item_qty[sku] == qty for sku, qty in last.items())


async def test_revision_budget_keeps_a_reserve_for_selling_out(servers: Rig) -> None:
    budget = {"revisions_per_day": 5}
    async with rig(
        servers, sim_options=budget, conn_options={**budget, "revision_reserve": 2}
    ) as r:
        for qty in (10, 9, 8):
            assert (await r.conn.push([Push("SKU-0", qty)]))[0].ok
        calls = r.sim.calls
        held, other = await r.conn.push([Push("SKU-0", 7), Push("SKU-1", 7)])
        assert (held.ok, held.retry, held.error) == (False, True, "daily revision limit")
        assert other.ok and r.sim.batch_sizes[-1] == 1 and r.sim.calls == calls + 1
        for _ in range(2):
            assert (await r.conn.push([Push("SKU-0", 0)]))[0].ok
        calls = r.sim.calls
        [spent] = await r.conn.push([Push("SKU-0", 0)])
        assert (spent.ok, spent.retry, spent.error) == (False, True, "daily revision limit")
        assert r.sim.calls == calls
        assert r.sim.revisions["5000000000"] == 5 and r.sim.quantities["SKU-0"] == 0


async def test_the_platform_refusing_a_revision_marks_the_offer_spent(servers: Rig) -> None:
    platform_budget, our_budget = {"revisions_per_day": 2}, {"revision_reserve": 0}
    async with rig(servers, sim_options=platform_budget, conn_options=our_budget) as r:
        for qty in (3, 2):
            assert (await r.conn.push([Push("SKU-0", qty)]))[0].ok
        [refused] = await r.conn.push([Push("SKU-0", 1)])
        assert (refused.ok, refused.retry, refused.error) == (False, True, "daily revision limit")
        calls = r.sim.calls
        [held] = await r.conn.push([Push("SKU-0", 0)])
        assert held.retry and r.sim.calls == calls
        assert r.sim.quantities["SKU-0"] == 2


async def test_the_connector_paces_itself_under_the_limit(servers: Rig) -> None:
    limits = {"rate_per_s": 100, "burst": 5, "one_sku_per_call": True}
    async with rig(servers, sim_options=limits, conn_options=limits) as r:
        results = [
            result
            for batch in range(4)
            for result in await r.conn.push([Push(f"SKU-{batch * 10 + i}", i) for i in range(10)])
        ]
        assert all(result.ok for result in results)
        assert r.sim.calls == 40 and r.sim.throttled == 0


async def test_a_429_retry_after_is_honoured(servers: Rig) -> None:
    sim = {"rate_per_s": 10, "burst": 1, "one_sku_per_call": True}
    conn = {"rate_per_s": 1000, "one_sku_per_call": True, "retry_cap_s": 1.0}
    async with rig(servers, sim_options=sim, conn_options=conn) as r:
        started = time.monotonic()
        results = await r.conn.push([Push(f"SKU-{i}", i) for i in range(8)])
        assert all(result.ok for result in results)
        assert 0 < r.sim.throttled <= 16
        assert time.monotonic() - started >= 0.6  # 8 calls at 10/s with a burst of 1


async def test_limits_off_lifts_the_sim_limit(servers: Rig) -> None:
    async with rig(servers, sim_options={"rate_per_s": 1, "burst": 1}, limits=False) as r:
        r.conn.limiter.rate = None
        for i in range(10):
            assert (await r.conn.push([Push("SKU-0", i)]))[0].ok
        assert r.sim.throttled == 0


async def test_the_daily_quota_answers_429_until_midnight(servers: Rig) -> None:
    async with rig(
        servers, sim_options={"daily_quota": 2}, conn_options={"retry_attempts": 2}
    ) as r:
        for qty in (1, 2):
            assert (await r.conn.push([Push("SKU-0", qty)]))[0].ok
        [late] = await r.conn.push([Push("SKU-0", 3)])
        assert (late.ok, late.retry) == (False, True)
        assert r.sim.throttled == 2 and r.sim.quantities["SKU-0"] == 2
        response = await r.http.get(
            f"{r.base}/sell/fulfillment/v1/order", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 429
        assert 0 < int(response.headers["retry-after"]) <= 25 * 3600


async def test_server_errors_are_retried(servers: Rig) -> None:
    async with rig(servers, conn_options={"retry_attempts": 10}) as r:
        await r.control("/_sim/faults", {"error_rate": 1.0})
        [failed] = await r.conn.push([Push("SKU-0", 4)])
        assert (failed.ok, failed.retry) == (False, True) and r.sim.calls == 10
        random.seed(11)
        await r.control("/_sim/faults", {"error_rate": 0.5})
        calls = r.sim.calls
        results = await r.conn.push([Push(f"SKU-{i}", i) for i in range(5)])
        assert all(result.ok for result in results)
        assert r.sim.calls > calls + 1  # one call, retried until it went through
        assert r.sim.quantities == {f"SKU-{i}": i for i in range(5)}


async def test_timeouts_are_retried_then_given_up(servers: Rig) -> None:
    async with rig(servers) as r, httpx.AsyncClient(timeout=0.1) as impatient:
        conn = make_connector(r.base, impatient, retry_attempts=2)
        await r.control("/_sim/faults", {"timeout_rate": 1.0, "timeout_s": 0.3})
        [result] = await conn.push([Push("SKU-0", 4)])
        assert (result.ok, result.retry) == (False, True) and r.sim.calls == 2
        await r.control("/_sim/faults", {})
        assert (await conn.push([Push("SKU-0", 4)]))[0].ok


async def test_client_errors_are_not_retried(servers: Rig) -> None:
    async with rig(servers) as r:
        bad = make_connector(r.base, r.http, token="expired")
        [result] = await bad.push([Push("SKU-0", 4)])
        assert (result.ok, result.retry) == (False, False) and "401" in result.error
        assert r.sim.calls == 1 and r.sim.updates == 0


def test_timestamps_round_trip() -> None:
    assert to_iso(iso_ms("2021-03-19T20:43:59.462Z")) == "2021-03-19T20:43:59.462Z"
    assert iso_ms("1970-01-01T00:00:01.001Z") == 1001
