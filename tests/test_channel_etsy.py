"""The Etsy connector against the Etsy simulator, over real HTTP on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from helpers import receiver

from engine.channels.base import (
    BadDelivery,
    ChannelConfig,
    Delivery,
    EventKind,
    Listing,
    OrderLine,
    Platform,
    Push,
    SignatureError,
)
from engine.channels.etsy import EtsyConnector
from engine.channels.sim.base import free_port, serving
from engine.channels.sim.etsy import EtsySimulator

SECRET = "whsec_" + base64.b64encode(b"etsy-test-signing-key").decode()
CREDENTIALS = {"keystring": "key-1", "access_token": "token-1", "webhook_secret": SECRET}
LISTINGS = [
    Listing("MUG-BLUE", {"listing_id": "111", "product_id": "9001"}),
    Listing("MUG-RED", {"listing_id": "111", "product_id": "9002"}),
    Listing("POSTER", {"listing_id": "222", "product_id": "9003"}),
    Listing("TEE-S", {"listing_id": "333", "product_id": "9004"}),
    Listing("TEE-M", {"listing_id": "333", "product_id": "9005"}),
    Listing("TEE-L", {"listing_id": "333", "product_id": "9006"}),
    *[Listing(f"ONE-{n}", {"listing_id": str(1000 + n)}) for n in range(20)],
]
GHOST = Listing("GHOST", {"listing_id": "999"})  # the connector knows it, the shop does not


def config(base_url: str = "http://etsy.invalid", **options: Any) -> ChannelConfig:
    credentials = {k: options.pop(k, v) for k, v in CREDENTIALS.items()}
    if "previous_webhook_secret" in options:
        credentials["previous_webhook_secret"] = options.pop("previous_webhook_secret")
    return ChannelConfig(
        channel="etsy",
        platform=Platform.ETSY,
        base_url=base_url,
        credentials=credentials,
        options={"shop_id": "12345", **options},
        listings=(*LISTINGS, GHOST),
    )


def offline(**options: Any) -> EtsyConnector:
    return EtsyConnector(config(**options), httpx.AsyncClient())


@contextlib.asynccontextmanager
async def channel(
    *, limits: bool = False, duplicate_rate: float = 0.0, hook_secret: str = SECRET, **options: Any
) -> AsyncIterator[tuple[EtsySimulator, EtsyConnector, list[Delivery]]]:
    options = {"qps": 100, **options}  # fast unless a test is about QPS
    hook_port = free_port()
    sim = EtsySimulator(
        LISTINGS,
        webhook_url=f"http://127.0.0.1:{hook_port}/hook",
        limits=limits,
        duplicate_rate=duplicate_rate,
        retry_delays_s=(0.02, 0.02),
        options={**CREDENTIALS, "shop_id": "12345", **options},
    )
    received: list[Delivery] = []
    async with serving(sim.app()) as base_url, httpx.AsyncClient() as http:
        connector = EtsyConnector(config(base_url, **options), http)
        hook = EtsyConnector(config(base_url, webhook_secret=hook_secret), http)
        async with serving(receiver(hook, received), hook_port):
            yield sim, connector, received


def sign(
    body: bytes, *, secret: str = SECRET, stamp: int | None = None, prefix: str = "v1,"
) -> dict[str, str]:
    msg_id, stamp = "msg_1", int(time.time()) if stamp is None else stamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    signature = prefix + base64.b64encode(digest).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


PAID = msgspec.json.encode({
    "event_type": "order.paid",
    "resource_url": "https://openapi.etsy.com/v3/application/shops/12345/receipts/54321",
    "shop_id": 12345,
})  # fmt: skip


def products(sim: EtsySimulator, listing_id: str) -> list[dict[str, Any]]:
    return list(sim.inventories[listing_id]["products"])


# -- inbound: verify -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["v1,", ""])
def test_verify_names_the_receipt_to_fetch(prefix: str) -> None:
    delivery = offline().verify(sign(PAID, prefix=prefix), PAID, "")
    assert delivery.delivery_id == "msg_1"
    assert delivery.fetch == ("/shops/12345/receipts/54321",)
    assert delivery.events == ()
    assert abs(delivery.occurred_ms - time.time() * 1000) < 5000


def test_verify_accepts_the_previous_secret_and_any_matching_entry() -> None:
    new = "whsec_" + base64.b64encode(b"rotated").decode()
    rotating = offline(webhook_secret=new, previous_webhook_secret=SECRET)
    assert rotating.verify(sign(PAID), PAID, "").fetch
    headers = sign(PAID, secret=new)
    headers["webhook-signature"] = f"v1,AAAA v1a,BBBB {headers['webhook-signature']}"
    assert rotating.verify(headers, PAID, "").fetch


def bad_headers() -> dict[str, dict[str, str]]:
    good = sign(PAID)
    return {
        "missing": {},
        "no-id": {**good, "webhook-id": ""},
        "other-id": {**good, "webhook-id": "msg_2"},
        "wrong-secret": sign(PAID, secret="whsec_" + base64.b64encode(b"other").decode()),
        "stale": sign(PAID, stamp=int(time.time()) - 600),
        "future": sign(PAID, stamp=int(time.time()) + 600),
        "not-a-time": {**good, "webhook-timestamp": "soon"},
        "other-version": {**good, "webhook-signature": "v2," + good["webhook-signature"][3:]},
    }


@pytest.mark.parametrize("case", sorted(bad_headers()))
def test_verify_refuses_bad_signatures(case: str) -> None:
    with pytest.raises(SignatureError):
        offline().verify(bad_headers()[case], PAID, "")


def test_verify_refuses_a_changed_body() -> None:
    with pytest.raises(SignatureError):
        offline().verify(sign(PAID), PAID.replace(b"54321", b"54322"), "")


def test_verify_tolerance_is_an_option() -> None:
    headers = sign(PAID, stamp=int(time.time()) - 600)
    assert offline(tolerance_s=900).verify(headers, PAID, "").fetch


@pytest.mark.parametrize(
    "body",
    [b"{oops", b'{"event_type": 7}', b'{"event_type": "order.paid", "resource_url": "/x"}'],
)
def test_verify_refuses_signed_but_unreadable(body: bytes) -> None:
    with pytest.raises(BadDelivery):
        offline().verify(sign(body), body, "")


def test_verify_ignores_other_events_and_other_shops() -> None:
    shipped = PAID.replace(b"order.paid", b"order.shipped")
    assert offline().verify(sign(shipped), shipped, "").fetch == ()
    other = PAID.replace(b"shops/12345", b"shops/777")
    delivery = offline().verify(sign(other), other, "")
    assert (delivery.delivery_id, delivery.fetch) == ("msg_1", ())


# -- inbound: storefront, fetch and poll -------------------------------------------------


async def test_order_paid_then_canceled_fetches_the_receipt() -> None:
    async with channel() as (sim, connector, received), httpx.AsyncClient() as http:
        assert all(r.ok for r in await connector.push([Push("MUG-RED", 5), Push("TEE-M", 2)]))
        order = sim.take_order("MUG-RED", 2)
        assert order is not None
        await sim.idle()
        (paid,) = received
        (created,) = await connector.fetch(paid.fetch[0])
        url = f"{connector.config.base_url}/_sim/orders/{order.order_id}/cancel"
        assert (await http.post(url)).is_success
        await sim.idle()
        (cancelled,) = await connector.fetch(received[1].fetch[0])
        (late,) = await connector.fetch(paid.fetch[0])  # a late order.paid sees today's state
    receipt = sim.receipts[order.order_id]
    line_id = str(receipt["transactions"][0]["transaction_id"])
    assert created.kind == EventKind.CREATED
    assert (created.order_id, created.lines) == (
        order.order_id,
        (OrderLine(line_id, "MUG-RED", 2),),
    )
    assert cancelled.kind == late.kind == EventKind.CANCELLED
    assert cancelled.lines == created.lines
    assert cancelled.occurred_ms == receipt["update_timestamp"] * 1000 >= created.occurred_ms
    assert sim.quantities["MUG-RED"] == 3
    assert products(sim, "111")[1]["offerings"][0]["quantity"] == 3


async def test_unprefixed_signatures_and_duplicates_arrive() -> None:
    async with channel(signature_prefix="", duplicate_rate=1.0) as (sim, connector, received):
        await connector.push([Push("POSTER", 3)])
        assert sim.take_order("POSTER", 1) is not None
        await sim.idle()
    assert len(received) == 2
    assert received[0].delivery_id == received[1].delivery_id
    assert sim.delivered == 2


async def test_a_webhook_with_a_bad_signature_is_refused() -> None:
    other = "whsec_" + base64.b64encode(b"not-etsy").decode()
    async with channel(hook_secret=other) as (sim, connector, received):
        await connector.push([Push("POSTER", 3)])
        assert sim.take_order("POSTER", 1) is not None
        await sim.idle()
    assert received == []
    assert (sim.delivered, sim.failed_deliveries) == (0, 3)


async def test_receipts_map_by_product_id_without_etsy_skus() -> None:
    async with channel(product_skus=False) as (sim, connector, _):
        assert (await connector.push([Push("TEE-S", 4)]))[0].ok
        order = sim.take_order("TEE-S", 1)
        assert order is not None
        (event,) = await connector.fetch(order.order_id)
    assert sim.receipts[order.order_id]["transactions"][0]["sku"] == ""
    assert [(line.sku, line.qty) for line in event.lines] == [("TEE-S", 1)]


async def test_poll_pages_through_changed_receipts() -> None:
    async with channel(page_size=2) as (sim, connector, _), httpx.AsyncClient() as http:
        await connector.push([Push("POSTER", 10)])
        orders = [sim.take_order("POSTER", 1) for _ in range(5)]
        first = orders[0]
        assert first is not None
        await http.post(f"{connector.config.base_url}/_sim/orders/{first.order_id}/cancel")
        calls = sim.calls
        events = await connector.poll(int(time.time() * 1000) - 60_000)
        assert sim.calls - calls == 3  # 2 + 2 + 1
        assert await connector.poll(int(time.time() * 1000) + 60_000) == []
    kinds = {e.order_id: e.kind for e in events}
    assert kinds == {
        o.order_id: EventKind.CANCELLED if o is first else EventKind.CREATED
        for o in orders
        if o is not None
    }


# -- outbound ---------------------------------------------------------------------------


async def test_push_is_one_get_and_put_per_listing_and_keeps_other_products() -> None:
    async with channel() as (sim, connector, _):
        assert (await connector.push([Push("TEE-L", 5)]))[0].ok
        ids_before = {p["product_id"] for p in products(sim, "333")}
        calls = sim.calls
        pushes = [Push("MUG-BLUE", 1), Push("MUG-RED", 2), Push("TEE-S", 3), Push("TEE-M", 4)]
        results = await connector.push(pushes)
        assert sim.calls - calls == 4  # GET + PUT for listings 111 and 333
        assert [r.sku for r in results] == [p.sku for p in pushes]
        assert all(r.ok for r in results)
        assert {p["product_id"] for p in products(sim, "333")}.isdisjoint(ids_before)
        assert all(r.ok for r in await connector.push([Push("TEE-S", 0), Push("MUG-RED", 9)]))
    assert sim.quantities == {"MUG-BLUE": 1, "MUG-RED": 9, "TEE-S": 0, "TEE-M": 4, "TEE-L": 5}
    assert [p["sku"] for p in products(sim, "333")] == ["TEE-S", "TEE-M", "TEE-L"]
    assert [p["offerings"][0]["price"]["amount"] for p in products(sim, "333")] == [2400] * 3


async def test_push_follows_renewed_product_ids_without_etsy_skus() -> None:
    async with channel(product_skus=False) as (sim, connector, _):
        for quantity in (3, 7, 11):
            results = await connector.push([Push("MUG-BLUE", quantity), Push("MUG-RED", 1)])
            assert all(r.ok for r in results), results
        assert connector.product_ids["MUG-BLUE"] == str(products(sim, "111")[0]["product_id"])
    assert sim.quantities == {"MUG-BLUE": 11, "MUG-RED": 1}
    assert len(products(sim, "111")) == 2


async def test_a_put_that_omits_a_product_deletes_it() -> None:
    async with channel() as (sim, connector, _), httpx.AsyncClient() as http:
        await connector.push([Push("MUG-BLUE", 2), Push("MUG-RED", 2)])
        url = f"{connector.config.base_url}/v3/application/listings/111/inventory"
        auth = {"x-api-key": "key-1", "authorization": "Bearer token-1"}
        read = await http.get(url, headers=auth)
        inventory = read.json()
        refused = await http.put(url, headers=auth, json=inventory)  # ids and Money: refused
        only_blue = {
            "products": [
                {"sku": "MUG-BLUE", "property_values": inventory["products"][0]["property_values"],
                 "offerings": [{"price": 24.0, "quantity": 2, "is_enabled": True}]}
            ],
        }  # fmt: skip
        for value in only_blue["products"][0]["property_values"]:
            del value["scale_name"]
        kept = await http.put(url, headers=auth, json=only_blue)
    assert {k: read.headers[k] for k in read.headers if k.startswith("x-")} == {
        "x-limit-per-second": "100",
        "x-remaining-this-second": "100",
        "x-limit-per-day": "10000",
        "x-remaining-today": "10000",
    }
    assert refused.status_code == 400
    assert kept.is_success, kept.text
    assert sim.quantities == {"MUG-BLUE": 2}
    assert sim.take_order("MUG-RED", 1) is None


async def test_unknown_listings_and_products_fail_without_retry() -> None:
    async with channel() as (sim, connector, _):
        results = await connector.push([Push("GHOST", 1), Push("NOT-LISTED", 1)])
        assert sim.calls == 1  # the GET of listing 999 is a 404, not retried
    assert [(r.ok, r.retry) for r in results] == [(False, False), (False, False)]
    assert results[0].error.startswith("HTTP 404")


async def test_bad_credentials_are_not_retried() -> None:
    async with channel() as (sim, connector, _), httpx.AsyncClient() as http:
        wrong = EtsyConnector(config(connector.config.base_url, access_token="expired"), http)
        (result,) = await wrong.push([Push("POSTER", 4)])
    assert (result.ok, result.retry) == (False, False)
    assert result.error.startswith("HTTP 401")
    assert (sim.calls, sim.updates) == (1, 0)


async def test_connector_paces_itself_under_qps() -> None:
    one_each = [Push(f"ONE-{n}", n) for n in range(20)]
    async with channel(limits=True, qps=40) as (sim, connector, _):
        started = time.monotonic()
        results = await connector.push(one_each)
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert sim.throttled == 0
    assert elapsed >= 39 / 36  # 40 calls spread at 90% of 40/s
    assert sim.quantities == {p.sku: p.quantity for p in one_each}


async def test_connector_honours_retry_after() -> None:
    one_each = [Push(f"ONE-{n}", n) for n in range(4)]
    async with channel(limits=True, qps=5) as (sim, connector, _), httpx.AsyncClient() as http:
        options = {"qps": 50, "limit_margin": 1.0, "retry_attempts": 10}
        fast = EtsyConnector(config(connector.config.base_url, **options), http)
        started = time.monotonic()
        results = await fast.push(one_each)
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results), results
    assert sim.throttled > 0
    assert elapsed >= 1.0  # the first 429 said retry-after: 1
    assert sim.quantities == {p.sku: p.quantity for p in one_each}


async def test_connector_stops_at_its_daily_quota() -> None:
    one_each = [Push(f"ONE-{n}", 1) for n in range(6)]
    async with channel(limits=True, qpd=10) as (sim, connector, _):
        results = await connector.push(one_each)  # 9 calls allowed: 6 GETs, 3 PUTs
        assert connector.day.spare() == 0
        assert [r.retry for r in await connector.push([Push("POSTER", 1)])] == [True]
    assert sum(r.ok for r in results) == 3
    assert all(r.retry and "qpd" in r.error for r in results if not r.ok)
    assert (sim.calls, sim.throttled) == (9, 0)


async def test_connector_adopts_the_platforms_daily_count() -> None:
    async with channel(limits=True, qpd=100) as (sim, connector, _):
        sim.day_calls.extend([time.monotonic()] * 50)  # another client on the same token
        assert (await connector.push([Push("POSTER", 1)]))[0].ok
        assert connector.day.spare() == (100 - 52) - 10  # minus the 10% margin


async def test_the_simulator_enforces_qpd_with_429() -> None:
    options = {"qpd": 3, "retry_attempts": 2, "retry_cap_s": 0.01}
    async with channel(limits=True, **options) as (sim, connector, _), httpx.AsyncClient() as http:
        unlimited = EtsyConnector(config(connector.config.base_url, **{**options, "qpd": 0}), http)
        first = await unlimited.push([Push("ONE-0", 1)])
        second = await unlimited.push([Push("ONE-1", 1)])
    assert first[0].ok
    assert (second[0].ok, second[0].retry) == (False, True)
    assert sim.throttled == 2
    assert sim.quantities == {"ONE-0": 1}


async def test_5xx_and_timeouts_are_retried() -> None:
    options = {"qps": 0, "retry_attempts": 12, "retry_cap_s": 0.2, "timeout_s": 0.1}
    async with channel(**options) as (sim, connector, _), httpx.AsyncClient() as http:
        await http.post(f"{connector.config.base_url}/_sim/faults", json={"error_rate": 0.5})
        pushes = [Push(f"ONE-{n}", 7) for n in range(8)]
        assert all(r.ok for r in await connector.push(pushes))
        assert sim.calls > 16
        faults = {"timeout_rate": 1.0, "timeout_s": 0.3}
        await http.post(f"{connector.config.base_url}/_sim/faults", json=faults)
        calls = sim.calls
        impatient_options = {"retry_attempts": 2, "timeout_s": 0.05}
        impatient = EtsyConnector(config(connector.config.base_url, **impatient_options), http)
        (result,) = await impatient.push([Push("POSTER", 1)])
    assert (result.ok, result.retry) == (False, True)
    assert sim.calls - calls == 2
    assert sim.quantities == {p.sku: 7 for p in pushes}
