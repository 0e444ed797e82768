"""The channels end to end, over real HTTP on loopback: the five platform simulators, the
API's webhook endpoint, the inbox, the channel worker and the engine.

Orders taken on a simulator's storefront reach the engine as committed sales, whatever
way the platform tells (signed webhooks, a re-fetch, Amazon's queue), and every change of
ATS reaches every simulator.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.auth import Role, create_key
from engine import Engine, Policy, PolicyKind
from engine.channels import inbound
from engine.channels.sim.base import free_port, serving
from engine.channels.simulate import CHANNELS, SimulatedChannel, plan, running
from engine.channels.worker import ChannelWorker, connectors
from engine.config import Settings

SKUS = ["A", "B"]


@dataclass
class Stack:
    engine: Engine
    worker: ChannelWorker
    url: str
    channels: dict[str, SimulatedChannel]
    key: str = ""  # a read-only API key

    async def committed(self, sku: str) -> int:
        return sum(loc.committed for loc in (await self.engine.stock(sku)).locations)

    async def converged(self, sku: str) -> dict[str, int]:
        """Waits until every simulator holds the channel's ATS of the SKU; returns them."""
        ats: dict[str, int] = {}

        async def every_platform_has_it() -> bool:
            nonlocal ats
            ats = {name: (await self.engine.ats(name, [sku]))[sku] for name in self.channels}
            held = {name: c.simulator.quantities.get(sku) for name, c in self.channels.items()}
            return held == ats

        await eventually(every_platform_has_it)
        return ats


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {check.__qualname__}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def stack(client: Any, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    engine = Engine(client)
    await engine.define_location("wh1")
    for name in CHANNELS:
        await engine.define_channel(name, ["wh1"])
    for sku in SKUS:
        await engine.define_sku(sku)
    port = free_port()
    planned = plan(SKUS, f"http://127.0.0.1:{port}", options={"poll_interval_s": 0})
    settings = Settings(redis_url=redis_url, database_url=f"sqlite:///{tmp_path}/ledger.db")
    async with running(planned) as sims:
        configs = [c.config for c in sims]
        app = create_app(settings, access_log=False, channels=configs)
        async with serving(app, port) as url, connectors(configs) as connected:
            key, _ = await create_key(app.state.store, "ops", Role.READ_ONLY)
            await app.state.keys.load()
            worker = ChannelWorker(engine, connected, resync_interval_s=3600)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                yield Stack(engine, worker, url, {c.name: c for c in sims}, key)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)


async def test_stock_changes_reach_every_platform(stack: Stack) -> None:
    await stack.engine.receive("A", "wh1", 10)
    assert await stack.converged("A") == dict.fromkeys(CHANNELS, 10)
    await stack.engine.adjust("A", "wh1", -4, reason="damaged")
    assert await stack.converged("A") == dict.fromkeys(CHANNELS, 6)


@pytest.mark.parametrize("channel", list(CHANNELS))
async def test_an_order_on_a_platform_is_a_committed_sale_and_reaches_the_others(
    stack: Stack, channel: str
) -> None:
    await stack.engine.receive("A", "wh1", 10)
    await stack.converged("A")
    order = stack.channels[channel].simulator.take_order("A", 3)
    assert order is not None

    async def committed() -> bool:
        return await stack.committed("A") == 3

    await eventually(committed)
    assert await stack.converged("A") == dict.fromkeys(CHANNELS, 7)
    sale = await stack.engine.record_order(channel, _order_id(stack, channel), "x", "A", 1)
    assert sale.shortfall == 0  # (a new line of the same order id: the ids line up)


def _order_id(stack: Stack, channel: str) -> str:
    """The order id the engine recorded for the platform's last storefront order."""
    sim = stack.channels[channel].simulator
    return str(sim.orders[-1].order_id)


async def test_a_duplicated_delivery_has_one_effect(stack: Stack) -> None:
    await stack.engine.receive("A", "wh1", 10)
    await stack.converged("A")
    shopify = stack.channels["shopify"].simulator
    shopify.duplicate_rate = 1.0
    shopify.take_order("A", 2)

    async def both_delivered() -> bool:
        return shopify.delivered >= 2

    await eventually(both_delivered)
    await stack.converged("A")
    assert await stack.committed("A") == 2


async def test_a_bad_signature_gets_401_and_queues_nothing(stack: Stack) -> None:
    body = b'{"id": 1, "line_items": [{"id": 2, "sku": "A", "quantity": 1}]}'
    forged = base64.b64encode(hmac.new(b"not the secret", body, hashlib.sha256).digest())
    headers = {
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Hmac-Sha256": forged.decode(),
        "X-Shopify-Shop-Domain": "stockguard-sim.myshopify.com",
        "X-Shopify-API-Version": "2026-04",
        "X-Shopify-Webhook-Id": "forged-1",
        "Content-Type": "application/json",
    }
    before = await stack.engine.client.xlen(inbound.INBOX)
    async with httpx.AsyncClient(base_url=stack.url) as http:
        refused = await http.post("/v1/webhooks/shopify", content=body, headers=headers)
        unknown = await http.post("/v1/webhooks/nowhere", content=body, headers=headers)
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert unknown.status_code == 404
    assert await stack.engine.client.xlen(inbound.INBOX) == before
    assert await stack.committed("A") == 0


async def test_a_cancelled_order_returns_its_units(stack: Stack) -> None:
    await stack.engine.receive("A", "wh1", 10)
    await stack.converged("A")
    order = stack.channels["shopify"].simulator.take_order("A", 4)
    assert order is not None

    async def sold() -> bool:
        return await stack.committed("A") == 4

    await eventually(sold)
    async with httpx.AsyncClient(base_url=stack.channels["shopify"].url) as http:
        cancelled = await http.post(f"/_sim/orders/{order.order_id}/cancel", json={})
    assert cancelled.status_code < 300

    async def returned() -> bool:
        return await stack.committed("A") == 0

    await eventually(returned)
    assert await stack.converged("A") == dict.fromkeys(CHANNELS, 10)


async def test_an_order_beyond_the_channels_ats_is_an_oversell_and_corrected_at_once(
    stack: Stack,
) -> None:
    await stack.engine.set_policy("A", "etsy", Policy(PolicyKind.CAP, 2))
    await stack.engine.receive("A", "wh1", 10)
    await stack.converged("A")
    etsy = stack.channels["etsy"].simulator
    etsy.quantities["A"] = 5  # the platform believes in more than it may sell
    etsy.take_order("A", 5)

    async def recorded() -> bool:
        return await stack.committed("A") == 5  # the buyer paid: never refused

    await eventually(recorded)
    assert stack.worker.processor.stats["oversells"] == 1
    ats = await stack.converged("A")
    assert ats["etsy"] == 0 and ats["shopify"] == 5


def _signed(secret: str, body: bytes) -> dict[str, str]:
    """The generic channel's signature header (engine/channels/webhook.py)."""
    t = str(int(time.time()))
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stockguard-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


async def test_signed_but_unreadable_or_oversized_deliveries_are_4xx_and_queue_nothing(
    stack: Stack,
) -> None:
    secret = stack.channels["web"].config.credentials["secret"]
    wrong_types = b'{"id": "d1", "type": "order.created", "occurred_at_ms": "soon", "order": 5}'
    huge = b'{"id": "d2", "pad": "' + b"x" * (2 << 20) + b'"}'
    before = await stack.engine.client.xlen(inbound.INBOX)
    async with httpx.AsyncClient(base_url=stack.url) as http:
        unreadable = await http.post(
            "/v1/webhooks/web", content=wrong_types, headers=_signed(secret, wrong_types)
        )
        oversized = await http.post("/v1/webhooks/web", content=huge, headers=_signed(secret, huge))
    assert unreadable.status_code == 400, unreadable.text
    assert oversized.status_code == 413, oversized.text
    assert await stack.engine.client.xlen(inbound.INBOX) == before


async def test_a_redelivered_webhook_is_acknowledged_as_a_duplicate(stack: Stack) -> None:
    secret = stack.channels["web"].config.credentials["secret"]
    event = {
        "id": "delivery-7", "type": "order.created", "occurred_at_ms": int(time.time() * 1000),
        "order": {"id": "W-7", "lines": [{"id": "1", "sku": "B", "qty": 1}]},
    }  # fmt: skip
    body = json.dumps(event).encode()
    await stack.engine.receive("B", "wh1", 3)
    async with httpx.AsyncClient(base_url=stack.url) as http:
        first = await http.post("/v1/webhooks/web", content=body, headers=_signed(secret, body))
        again = await http.post("/v1/webhooks/web", content=body, headers=_signed(secret, body))
    assert first.json()["accepted"] is True
    assert again.status_code == 200 and again.json()["accepted"] is False

    async def sold() -> bool:
        return await stack.committed("B") == 1

    await eventually(sold)
    await stack.converged("B")
    assert await stack.committed("B") == 1


async def test_operators_read_each_channels_sync_state(stack: Stack) -> None:
    await stack.engine.receive("A", "wh1", 6)
    await stack.converged("A")
    await stack.worker.sync.save_stats()
    auth = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=auth) as http:
        shown = (await http.get("/v1/channels/ebay/sync", params={"sku": ["A", "B"]})).json()
        unknown = await http.get("/v1/channels/nowhere/sync")
    assert shown["channel"] == "ebay" and shown["pushes"] >= 1 and shown["backlog"] == 0
    assert shown["skus"]["A"]["qty"] == 6 and shown["skus"]["A"]["at_ms"] > 0
    assert shown["skus"]["B"]["qty"] == 0  # pushed at start: nothing to sell
    assert unknown.status_code == 404
    async with httpx.AsyncClient(base_url=stack.url) as http:
        metrics = (await http.get("/metrics")).text
    assert "stockguard_channel_inbox_backlog 0.0" in metrics
    assert "stockguard_channel_inbox_dead_letters 0.0" in metrics
    assert 'stockguard_channel_sync_backlog{channel="ebay"} 0.0' in metrics
    assert 'stockguard_channel_pushes_total{channel="ebay"}' in metrics
