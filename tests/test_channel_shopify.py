"""Shopify connector against the Shopify simulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.channels.base import (
    BadDelivery,
    ChannelConfig,
    Delivery,
    EventKind,
    Listing,
    OrderEvent,
    OrderLine,
    Platform,
    Push,
    SignatureError,
)
from engine.channels.shopify import SET_QUANTITIES, ShopifyConnector
from engine.channels.sim.base import serving
from engine.channels.sim.shopify import ShopifySimulator

SECRET = "test-client-secret"
OLD_SECRET = "test-client-secret-before-rotation"
TOKEN = "shpat_test_token"
SHOP_DOMAIN = "stockguard-test.myshopify.com"
LOCATION = "655441491"
OPTIONS = {"client_secret": SECRET, "access_token": TOKEN, "shop_domain": SHOP_DOMAIN}
FAST_RETRIES = (0.001,) * 8

# channel-apis.md §1.1, orders/create, copied verbatim
DOCUMENTED_ORDER = b"""{
  "id": 450789469,
  "admin_graphql_api_id": "gid://shopify/Order/450789469",
  "name": "#1001",
  "cancel_reason": null,
  "cancelled_at": null,
  "created_at": "2008-01-10T11:00:00-05:00",
  "updated_at": "2008-01-10T11:00:00-05:00",
  "financial_status": "partially_refunded",
  "fulfillment_status": null,
  "location_id": null,
  "line_items": [
    {
      "id": 518995019,
      "admin_graphql_api_id": "gid://shopify/LineItem/518995019",
      "variant_id": 49148385,
      "product_id": 632910392,
      "sku": "IPOD2008RED",
      "title": "IPod Nano - 8gb",
      "variant_title": "red",
      "quantity": 1,
      "current_quantity": 1,
      "fulfillable_quantity": 1,
      "fulfillment_service": "manual",
      "fulfillment_status": null,
      "variant_inventory_management": "shopify",
      "requires_shipping": true,
      "price": "199.00"
    }
  ],
  "refunds": []
}"""

# channel-apis.md §1.1, refunds/create, copied verbatim
DOCUMENTED_REFUND = b"""{
  "id": 509562969,
  "order_id": 450789469,
  "created_at": "2025-04-02T11:38:15-05:00",
  "restock": true,
  "refund_line_items": [
    {
      "id": 104689539,
      "quantity": 1,
      "line_item_id": 703073504,
      "location_id": 487838322,
      "restock_type": "legacy_restock",
      "line_item": {"id": 703073504, "variant_id": 457924702, "sku": "IPOD2008BLACK", "quantity": 1}
    }
  ],
  "transactions": [ { "kind": "refund", "amount": "209.00", "status": "success" } ]
}"""


def listings(n: int) -> list[Listing]:
    ids = [{"inventory_item_id": str(808_950_810 + i), "location_id": LOCATION} for i in range(n)]
    return [Listing(f"SKU-{i}", level) for i, level in enumerate(ids)]


def make_config(
    url: str, items: list[Listing], options: dict[str, Any], **credentials: str
) -> ChannelConfig:
    return ChannelConfig(
        channel="shopify-main",
        platform=Platform.SHOPIFY,
        base_url=url,
        credentials={"client_secret": SECRET, "access_token": TOKEN, **credentials},
        options=options,
        listings=tuple(items),
    )


def signed(body: bytes, topic: str = "orders/create", secret: str = SECRET, **extra: str) -> Any:
    """Headers as our endpoint sees them: case-insensitive, values decoded as latin-1."""
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    headers = {
        "x-shopify-topic": topic,
        "x-shopify-hmac-sha256": digest,
        "x-shopify-shop-domain": SHOP_DOMAIN,
        "x-shopify-api-version": "2026-04",
        "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        **extra,
    }
    return Headers(raw=[(k.encode(), v.encode("latin-1")) for k, v in headers.items()])


def ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


class Inbox:
    """Our webhook endpoint: verifies with the connector and keeps what it accepted."""

    def __init__(self, connector: ShopifyConnector, fail_first: int = 0) -> None:
        self.connector = connector
        self.fail_first = fail_first
        self.accepted: list[Delivery] = []
        self.rejected = 0
        self.headers: list[dict[str, str]] = []

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.headers.append(dict(request.headers))
        if self.fail_first > 0:
            self.fail_first -= 1
            return Response(status_code=500)
        try:
            delivery = self.connector.verify(request.headers, body, str(request.url))
        except SignatureError:
            self.rejected += 1
            return Response(status_code=401)
        except BadDelivery:
            return Response(status_code=400)
        self.accepted.append(delivery)
        return Response(status_code=200)

    def events(self) -> list[OrderEvent]:
        return [event for delivery in self.accepted for event in delivery.events]


@dataclass
class Shop:
    sim: ShopifySimulator
    connector: ShopifyConnector
    inbox: Inbox
    http: httpx.AsyncClient
    url: str

    async def order(self, sku: str, qty: int) -> dict[str, Any]:
        response = await self.http.post(f"{self.url}/_sim/orders", json={"sku": sku, "qty": qty})
        assert response.status_code == 201, response.text
        await self.sim.idle()
        return dict(response.json())

    async def control(self, path: str, body: dict[str, Any]) -> httpx.Response:
        response = await self.http.post(f"{self.url}{path}", json=body)
        await self.sim.idle()
        return response

    async def graphql(self, query: str, variables: dict[str, Any], version: str = "2026-04") -> Any:
        response = await self.http.post(
            f"{self.url}/admin/api/{version}/graphql.json",
            json={"query": query, "variables": variables},
            headers={"X-Shopify-Access-Token": TOKEN},
        )
        return response.json()


@contextlib.asynccontextmanager
async def shop(
    n: int = 3,
    *,
    options: dict[str, Any] | None = None,
    connector_options: dict[str, Any] | None = None,
    credentials: dict[str, str] | None = None,
    timeout_s: float = 2.0,
    fail_first: int = 0,
    limits: bool = True,
    duplicate_rate: float = 0.0,
) -> AsyncIterator[Shop]:
    """A simulated store, a connector pointed at it, and our webhook endpoint."""
    items = listings(n)
    sim_options = {**OPTIONS, **(options or {})}
    sim = ShopifySimulator(
        items,
        limits=limits,
        duplicate_rate=duplicate_rate,
        retry_delays_s=FAST_RETRIES,
        options=sim_options,
    )
    async with (
        serving(sim.app()) as url,
        httpx.AsyncClient(timeout=timeout_s) as http,
    ):
        connector_config = {**sim_options, **(connector_options or {})}
        config = make_config(url, items, connector_config, **(credentials or {}))
        connector = ShopifyConnector(config, http)
        inbox = Inbox(connector, fail_first)
        hooks = Starlette(routes=[Route("/hooks/shopify", inbox.hook, methods=["POST"])])
        async with serving(hooks) as hooks_url:
            sim.webhook_url = f"{hooks_url}/hooks/shopify"
            yield Shop(sim, connector, inbox, http, url)


# -- inbound --------------------------------------------------------------------------------


async def test_documented_examples_replay_verbatim() -> None:
    async with httpx.AsyncClient() as http:
        connector = ShopifyConnector(make_config("http://unused", [], {}), http)
        order = connector.verify(signed(DOCUMENTED_ORDER), DOCUMENTED_ORDER, "https://us/hook")
        refund = connector.verify(
            signed(DOCUMENTED_REFUND, "refunds/create"), DOCUMENTED_REFUND, "https://us/hook"
        )
    created_ms = ms("2008-01-10T16:00:00+00:00")
    assert order.delivery_id == f"{SHOP_DOMAIN}/b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    assert order.occurred_ms == created_ms
    line = OrderLine("518995019", "IPOD2008RED", 1)
    assert order.events == (OrderEvent(EventKind.CREATED, "450789469", (line,), created_ms),)
    refund_ms = ms("2025-04-02T16:38:15+00:00")
    line = OrderLine("703073504", "IPOD2008BLACK", 1)
    expected = OrderEvent(EventKind.REFUNDED, "450789469", (line,), refund_ms, "509562969", True)
    assert refund.events == (expected,)


async def test_signatures_are_checked_before_parsing_and_rotation_is_accepted() -> None:
    async with httpx.AsyncClient() as http:
        connector = ShopifyConnector(make_config("http://unused", [], {}), http)
        rotating = ShopifyConnector(
            make_config("http://unused", [], {}, previous_client_secret=OLD_SECRET), http
        )
        bad = [
            (
                signed(DOCUMENTED_ORDER),
                DOCUMENTED_ORDER.replace(b'"quantity": 1', b'"quantity": 9'),
            ),
            (signed(DOCUMENTED_ORDER, secret="wrong"), DOCUMENTED_ORDER),
            (signed(DOCUMENTED_ORDER, secret=OLD_SECRET), DOCUMENTED_ORDER),
            (signed(b"not json", **{"x-shopify-hmac-sha256": "bm9wZQ=="}), b"not json"),
            (signed(DOCUMENTED_ORDER, **{"x-shopify-hmac-sha256": "ünicode"}), DOCUMENTED_ORDER),
        ]
        for headers, body in bad:
            with pytest.raises(SignatureError):
                connector.verify(headers, body, "")
        missing = signed(DOCUMENTED_ORDER, **{"x-shopify-hmac-sha256": ""})
        with pytest.raises(SignatureError):
            connector.verify(missing, DOCUMENTED_ORDER, "")
        old = rotating.verify(signed(DOCUMENTED_ORDER, secret=OLD_SECRET), DOCUMENTED_ORDER, "")
        new = rotating.verify(signed(DOCUMENTED_ORDER), DOCUMENTED_ORDER, "")
        assert old.events == new.events and len(new.events) == 1
        with pytest.raises(SignatureError):
            rotating.verify(signed(DOCUMENTED_ORDER, secret="wrong"), DOCUMENTED_ORDER, "")


async def test_headers_shop_and_payload_shapes() -> None:
    async with httpx.AsyncClient() as http:
        connector = ShopifyConnector(
            make_config("http://unused", [], {"shop_domain": SHOP_DOMAIN}), http
        )
        for name in ("topic", "shop-domain", "api-version", "webhook-id"):
            headers = signed(DOCUMENTED_ORDER, **{f"x-shopify-{name}": ""})
            with pytest.raises(BadDelivery):
                connector.verify(headers, DOCUMENTED_ORDER, "")
        other_shop = signed(DOCUMENTED_ORDER, **{"x-shopify-shop-domain": "other.myshopify.com"})
        with pytest.raises(BadDelivery):
            connector.verify(other_shop, DOCUMENTED_ORDER, "")
        with pytest.raises(BadDelivery):
            connector.verify(signed(b"[not json"), b"[not json", "")
        ignored = connector.verify(signed(b"{}", "products/update"), b"{}", "")
        assert ignored.events == () and ignored.delivery_id.endswith("bf7d70bcd043")

        order = {
            "id": "gid://shopify/Order/820982911946154508",
            "updated_at": "2026-01-10T11:00:00-05:00",
            "cancelled_at": "2026-01-10T11:00:00-05:00",
            "line_items": [
                {"id": "866550311766439020", "sku": "A-1", "quantity": "2"},
                {"id": 141249953214522974, "sku": None, "quantity": 1},  # a custom item
                {"id": 141249953214522975, "quantity": 1},
            ],
        }
        body = json.dumps(order).encode()
        triggered = "2026-01-10T16:00:01.123456789Z"
        cancelled = connector.verify(
            signed(body, "orders/cancelled", **{"x-shopify-triggered-at": triggered}), body, ""
        )
    at_ms = ms("2026-01-10T16:00:01.123+00:00")
    line = OrderLine("866550311766439020", "A-1", 2)
    expected = OrderEvent(EventKind.CANCELLED, "820982911946154508", (line,), at_ms)
    assert cancelled.events == (expected,) and cancelled.occurred_ms == at_ms


async def test_storefront_webhooks_end_to_end() -> None:
    async with shop() as s:
        assert all(r.ok for r in await s.connector.push([Push("SKU-0", 5), Push("SKU-1", 4)]))
        placed = await s.order("SKU-0", 2)
        assert s.sim.quantities["SKU-0"] == 3
        [created] = s.inbox.events()
        line = OrderLine(placed["line_id"], "SKU-0", 2)
        assert (created.kind, created.order_id, created.lines) == (
            EventKind.CREATED,
            placed["order_id"],
            (line,),
        )
        names = {"x-shopify-topic", "x-shopify-hmac-sha256", "x-shopify-shop-domain"}
        names |= {"x-shopify-api-version", "x-shopify-webhook-id", "x-shopify-triggered-at"}
        assert names | {"x-shopify-event-id"} <= set(s.inbox.headers[0])

        cancel = await s.control(f"/_sim/orders/{placed['order_id']}/cancel", {"reason": "fraud"})
        assert cancel.json()["cancel_reason"] == "fraud"
        assert (await s.control(f"/_sim/orders/{placed['order_id']}/cancel", {})).status_code == 409
        cancelled = s.inbox.events()[-1]
        assert (cancelled.kind, cancelled.lines) == (EventKind.CANCELLED, (line,))
        assert cancelled.occurred_ms >= created.occurred_ms
        assert s.sim.quantities["SKU-0"] == 5

        second = await s.order("SKU-1", 3)
        refund = f"/_sim/orders/{second['order_id']}/refund"
        assert (await s.control(refund, {"qty": 1, "restock": True})).status_code == 201
        assert (await s.control(refund, {"qty": 1, "restock": False})).status_code == 201
        assert (await s.control(refund, {"qty": 5})).status_code == 409
        back, kept = s.inbox.events()[-2:]
        assert back.kind == kept.kind == EventKind.REFUNDED
        assert (back.restock, kept.restock) == (True, False)
        assert back.refund_id != kept.refund_id
        assert back.lines == kept.lines == (OrderLine(second["line_id"], "SKU-1", 1),)
        assert s.sim.quantities["SKU-1"] == 4 - 3 + 1
        ids = [d.delivery_id for d in s.inbox.accepted]
        assert len(ids) == len(set(ids)) == 5 and ids[0].startswith(f"{SHOP_DOMAIN}/")


async def test_bad_signature_is_refused_and_counts_nothing() -> None:
    async with shop(options={"signing_secret": "a-secret-we-do-not-know"}) as s:
        s.sim.quantities["SKU-0"] = 4
        await s.order("SKU-0", 1)
        assert s.inbox.accepted == [] and s.inbox.rejected == 9  # the first try and 8 retries
        assert (s.sim.delivered, s.sim.failed_deliveries) == (0, 9)


async def test_rotation_with_the_simulator() -> None:
    rotating = {"previous_client_secret": OLD_SECRET}
    async with shop(options={"signing_secret": OLD_SECRET}, credentials=rotating) as s:
        s.sim.quantities["SKU-0"] = 4
        await s.order("SKU-0", 1)
        assert s.inbox.rejected == 0 and len(s.inbox.events()) == 1


async def test_retries_and_duplicates_keep_the_webhook_id() -> None:
    async with shop(fail_first=3, duplicate_rate=1.0) as s:
        s.sim.quantities["SKU-0"] = 4
        await s.order("SKU-0", 1)
        webhook_ids = {h["x-shopify-webhook-id"] for h in s.inbox.headers}
        assert len(s.inbox.headers) == 5 and len(webhook_ids) == 1
        first, second = s.inbox.accepted
        assert first.delivery_id == second.delivery_id and first.events == second.events


# -- outbound -------------------------------------------------------------------------------


async def test_pushes_go_in_batches_of_250_and_converge() -> None:
    plus = {"bucket_points": 10_000, "restore_per_s": 10_000}  # pacing is tested below
    async with shop(600, limits=False, connector_options=plus) as s:
        pushes = [Push(f"SKU-{i}", i % 17) for i in range(600)]
        results = await s.connector.push(pushes)
        assert [r.sku for r in results] == [p.sku for p in pushes] and all(r.ok for r in results)
        assert s.sim.calls == 3 and s.sim.updates == 600
        again = [Push(p.sku, p.quantity + 1, previous=p.quantity) for p in pushes]
        assert all(r.ok for r in await s.connector.push(again))
        assert s.sim.calls == 6
        assert s.sim.quantities == {p.sku: p.quantity for p in again}


async def test_a_stale_change_from_is_reread_and_sent_with_a_new_key() -> None:
    async with shop() as s:
        [ok] = await s.connector.push([Push("SKU-0", 10, key="push-1")])
        assert ok.ok and "push-1" in s.sim.idempotent
        await s.order("SKU-0", 2)  # the store sold 2 since: 8 now, we still believe 10
        calls = s.sim.calls
        [result] = await s.connector.push([Push("SKU-0", 7, previous=10, key="push-2")])
        assert result.ok and s.sim.quantities["SKU-0"] == 7
        assert s.sim.calls - calls == 3  # stale set, levels query, set again
        assert len(s.sim.idempotent) == 3  # push-1, push-2 (stale) and the fresh key
        assert [q for _, q in s.sim.history["SKU-0"]] == [10, 7]


async def test_a_retried_push_replays_and_a_reused_key_recovers() -> None:
    async with shop() as s:
        push = Push("SKU-0", 6, previous=None, key="logical-push")
        assert (await s.connector.push([push]))[0].ok
        assert (await s.connector.push([push]))[0].ok  # a retry: Shopify replays the first result
        assert s.sim.updates == 1
        s.sim.quantities["SKU-0"] = 6
        [result] = await s.connector.push([Push("SKU-0", 9, previous=6, key="logical-push")])
        assert result.ok and s.sim.quantities["SKU-0"] == 9 and s.sim.updates == 2


async def test_user_errors_fail_only_their_push() -> None:
    async with shop() as s:
        pushes = [Push("SKU-0", 3), Push("SKU-1", -1), Push("SKU-2", 5), Push("NOT-LISTED", 1)]
        results = await s.connector.push(pushes)
        assert [r.ok for r in results] == [True, False, True, False]
        assert "INVALID_QUANTITY_NEGATIVE" in results[1].error and not results[1].retry
        assert "no Shopify listing" in results[3].error
        assert s.sim.quantities == {"SKU-0": 3, "SKU-2": 5}
        assert s.sim.calls == 2  # all-or-nothing: the good ones went again without the bad one


async def test_simulator_contract_for_inventory_set_quantities() -> None:
    async with shop() as s:
        quantity = {
            "inventoryItemId": "gid://shopify/InventoryItem/808950810",
            "locationId": f"gid://shopify/Location/{LOCATION}",
            "quantity": 4,
            "changeFromQuantity": None,
        }
        request = {"name": "available", "reason": "correction", "quantities": [quantity]}
        first = await s.graphql(SET_QUANTITIES, {"key": "k1", "input": request})
        replay = await s.graphql(SET_QUANTITIES, {"key": "k1", "input": request})
        assert first["data"] == replay["data"] and s.sim.updates == 1
        cost = first["extensions"]["cost"]
        assert (
            cost["requestedQueryCost"] == 11 and cost["throttleStatus"]["maximumAvailable"] == 1000
        )

        other = {**request, "quantities": [{**quantity, "quantity": 5}]}
        mismatch = await s.graphql(SET_QUANTITIES, {"key": "k1", "input": other})
        [error] = mismatch["data"]["inventorySetQuantities"]["userErrors"]
        assert error["code"] == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"

        no_key = SET_QUANTITIES.replace("@idempotent(key: $key)", "")
        assert "errors" in await s.graphql(no_key, {"key": "k2", "input": request})
        bare = {k: v for k, v in quantity.items() if k != "changeFromQuantity"}
        missing = {**request, "quantities": [bare]}
        assert "errors" in await s.graphql(SET_QUANTITIES, {"key": "k3", "input": missing})
        older = await s.graphql(SET_QUANTITIES, {"key": "k4", "input": missing}, "2026-01")
        assert older["data"]["inventorySetQuantities"]["userErrors"] == []
        too_many = {**request, "quantities": [quantity] * 251}
        huge = await s.graphql(SET_QUANTITIES, {"key": "k5", "input": too_many})
        assert huge["errors"][0]["extensions"]["code"] == "MAX_INPUT_SIZE_EXCEEDED"
        assert s.sim.updates == 2


async def test_simulator_rest_blind_set() -> None:
    async with shop(options={"rest_bucket": 2, "rest_rate_per_s": 2}) as s:
        url = f"{s.url}/admin/api/2025-04/inventory_levels/set.json"
        body = {"location_id": int(LOCATION), "inventory_item_id": 808950811, "available": 42}
        headers = {"X-Shopify-Access-Token": TOKEN}
        response = await s.http.post(url, json=body, headers=headers)
        assert response.json()["inventory_level"]["available"] == 42
        assert response.headers["X-Shopify-Shop-Api-Call-Limit"] == "1/2"
        assert s.sim.quantities == {"SKU-1": 42}
        await s.http.post(url, json=body, headers=headers)
        throttled = await s.http.post(url, json=body, headers=headers)
        assert throttled.status_code == 429 and float(throttled.headers["Retry-After"]) > 0
        denied = await s.http.post(url, json=body, headers={"X-Shopify-Access-Token": "nope"})
        assert denied.status_code == 401


# -- limits and faults ----------------------------------------------------------------------


async def test_the_connector_paces_itself_under_the_cost_bucket() -> None:
    plan = {"bucket_points": 200, "restore_per_s": 500}
    async with shop(60, options=plan) as s:
        started = time.monotonic()
        pushes = [s.connector.push([Push(f"SKU-{i}", i)]) for i in range(60)]
        results = [r for batch in await asyncio.gather(*pushes) for r in batch]
        assert all(r.ok for r in results) and s.sim.throttled == 0
        assert time.monotonic() - started > (60 * 11 - 200) / 500  # it waited for the bucket
        assert s.sim.quantities == {f"SKU-{i}": i for i in range(60)}


@pytest.mark.parametrize("status", [429, 200])
async def test_the_connector_honours_throttling(status: int) -> None:
    plan = {"bucket_points": 30, "restore_per_s": 100, "throttle_status": status}
    generous = {"bucket_points": 1000, "restore_per_s": 1000}
    async with shop(12, options=plan, connector_options=generous) as s:
        started = time.monotonic()
        for i in range(12):
            assert (await s.connector.push([Push(f"SKU-{i}", i)]))[0].ok
        assert 1 <= s.sim.throttled <= 12  # each push waited as told, then got in
        assert time.monotonic() - started > (12 * 11 - 30) / 100 * 0.9
        assert s.sim.quantities == {f"SKU-{i}": i for i in range(12)}


async def test_server_errors_are_retried_then_reported_as_transient() -> None:
    options = {"retry_attempts": 4, "retry_base_s": 0.001}
    async with shop(connector_options=options) as s:
        await s.control("/_sim/faults", {"error_rate": 1.0})
        [result] = await s.connector.push([Push("SKU-0", 5)])
        assert (result.ok, result.retry) == (False, True) and s.sim.calls == 4
        assert s.sim.quantities == {}
        random.seed(6)
        await s.control("/_sim/faults", {"error_rate": 0.3})
        results = await s.connector.push([Push("SKU-0", 5), Push("SKU-1", 6)])
        assert all(r.ok for r in results) and s.sim.quantities == {"SKU-0": 5, "SKU-1": 6}


async def test_timeouts_are_retried() -> None:
    options = {"retry_attempts": 2, "retry_base_s": 0.001}
    async with shop(connector_options=options, timeout_s=0.05) as s:
        await s.control("/_sim/faults", {"timeout_rate": 1.0, "timeout_s": 0.2})
        [result] = await s.connector.push([Push("SKU-0", 5)])
        assert result.retry and s.sim.calls == 2
        await s.control("/_sim/faults", {})
        await asyncio.sleep(0.2)
        assert (await s.connector.push([Push("SKU-0", 5)]))[0].ok


async def test_non_retryable_errors_are_not_retried() -> None:
    async with shop(options={"access_token": "the-real-token"}) as s:
        [result] = await s.connector.push([Push("SKU-0", 5)])
        assert (result.ok, result.retry) == (False, False) and "401" in result.error
        assert s.sim.calls == 1 and s.sim.quantities == {}
