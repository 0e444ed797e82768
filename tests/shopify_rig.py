"""The Shopify simulator and connector rig shared by tests/test_channel_shopify*.py."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.channels.base import (
    BadDelivery,
    ChannelConfig,
    Delivery,
    Listing,
    OrderEvent,
    Platform,
    SignatureError,
)
from engine.channels.shopify import ShopifyConnector
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
