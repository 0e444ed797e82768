"""Etsy Open API v3 simulator (channel-apis.md §4 and §6).

Platform routes; each needs x-api-key and the Bearer token, spends QPS and the rolling
24 h QPD (429 with retry-after in whole seconds), and a success carries
x-limit-per-second, x-remaining-this-second, x-limit-per-day and x-remaining-today:
  GET /v3/application/listings/{listing_id}/inventory
  PUT /v3/application/listings/{listing_id}/inventory    replaces the whole products array
  GET /v3/application/shops/{shop_id}/receipts/{receipt_id}
  GET /v3/application/shops/{shop_id}/receipts           min/max_created, min/max_last_modified,
                                                         was_paid, limit (1-100), offset
Control route:
  POST /_sim/orders/{order_id}/cancel    the receipt turns "canceled"; an order.canceled webhook

The inventory is seeded from the listings: one listing per listing_id, one product per SKU.
A PUT takes only the request shape (no product_id, offering_id, is_deleted or scale_name;
prices as floats), renews every product_id and offering_id as Etsy does
(etsy/open-api#523), and deletes the products it leaves out, so a connector that forgets
one loses that SKU. The storefront finds a product by its variation (property values).

options: keystring, access_token, shop_id, webhook_secret (the connector's names);
qps (10), qpd (10000), signature_prefix ("v1,"; the prefix is unconfirmed),
renew_product_ids (true), product_skus (true; false seeds products without an Etsy SKU)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import math
import time
import uuid
from collections import deque
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Listing
from .base import Delivery, Order, Simulator

API = "/v3/application"
VARIANT_PROPERTY = 513  # a custom variation property
DAY_S = 86_400.0
EARLIEST_S = 946_684_800
RECEIPT_FILTERS = {
    "min_created": ("create_timestamp", 1),
    "max_created": ("create_timestamp", -1),
    "min_last_modified": ("update_timestamp", 1),
    "max_last_modified": ("update_timestamp", -1),
}

Variation = tuple[tuple[int, tuple[int, ...]], ...]


class PropertyValueIn(msgspec.Struct, forbid_unknown_fields=True):
    property_id: int
    value_ids: list[int]
    values: list[str]
    scale_id: int | None = None
    property_name: str | None = None


class OfferingIn(msgspec.Struct, forbid_unknown_fields=True):
    price: float
    quantity: int
    is_enabled: bool
    readiness_state_id: int | None = None


class ProductIn(msgspec.Struct, forbid_unknown_fields=True):
    property_values: list[PropertyValueIn]
    offerings: list[OfferingIn]
    sku: str = ""


class InventoryIn(msgspec.Struct, forbid_unknown_fields=True):
    products: list[ProductIn]
    price_on_property: list[int] = []
    quantity_on_property: list[int] = []
    sku_on_property: list[int] = []
    readiness_state_on_property: list[int] = []


def variation(property_values: list[dict[str, Any]]) -> Variation:
    return tuple((v["property_id"], tuple(v["value_ids"])) for v in property_values)


def sellable(product: dict[str, Any]) -> int:
    return sum(o["quantity"] for o in product["offerings"] if o["is_enabled"])


def as_id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def invalid(body: InventoryIn) -> str:
    """Why Etsy would refuse this inventory, or ""."""
    products = body.products
    if any(not p.offerings for p in products):
        return "every product needs an offering"
    if any(o.quantity < 0 or o.price <= 0 for p in products for o in p.offerings):
        return "offering quantity must be >= 0 and price > 0"
    shared: dict[str, set[Any]] = {
        "price_on_property": {o.price for p in products for o in p.offerings},
        "quantity_on_property": {o.quantity for p in products for o in p.offerings},
        "sku_on_property": {p.sku for p in products},
    }
    for field, values in shared.items():
        if not getattr(body, field) and len(values) > 1:
            return f"values differ between products but {field} is empty"
    return ""


class EtsySimulator(Simulator):
    """Etsy listings' inventory, shop receipts, and ORDER_PAID webhooks."""

    platform = "etsy"

    def reset(self) -> None:
        super().reset()
        self.ids = itertools.count(4_000_000_001)
        self.variations: dict[tuple[str, Variation], str] = {}  # -> our SKU
        self.inventories = {lid: self.seed(group) for lid, group in self.by_listing().items()}
        self.receipts: dict[str, dict[str, Any]] = {}
        self.day_calls: deque[float] = deque()

    def opt(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)

    # -- inventory ----------------------------------------------------------------------

    def by_listing(self) -> dict[str, list[Listing]]:
        groups: dict[str, list[Listing]] = {}
        for listing in self.listings:
            if listing.ids.get("listing_id"):
                groups.setdefault(listing.ids["listing_id"], []).append(listing)
        return groups

    def seed(self, listings: list[Listing]) -> dict[str, Any]:
        variant = [VARIANT_PROPERTY] if len(listings) > 1 else []
        products = [self.seed_product(listing, len(listings) > 1) for listing in listings]
        return {
            "products": products,
            "price_on_property": [],
            "quantity_on_property": variant,
            "sku_on_property": variant,
        }

    def seed_product(self, listing: Listing, varies: bool) -> dict[str, Any]:
        values: list[dict[str, Any]] = []
        if varies:
            values = [
                {"property_id": VARIANT_PROPERTY, "property_name": "Variant", "scale_id": None,
                 "scale_name": None, "value_ids": [next(self.ids)], "values": [listing.sku]}
            ]  # fmt: skip
        self.variations[(listing.ids["listing_id"], variation(values))] = listing.sku
        product_id = listing.ids.get("product_id", "")
        return {
            "product_id": int(product_id) if product_id.isdigit() else next(self.ids),
            "sku": listing.sku if self.opt("product_skus", True) else "",
            "is_deleted": False,
            "offerings": [self.offering(24.0, 0, True)],
            "property_values": values,
        }

    def offering(self, price: float, quantity: int, enabled: bool) -> dict[str, Any]:
        return {
            "offering_id": next(self.ids),
            "quantity": quantity,
            "is_enabled": enabled,
            "is_deleted": False,
            "price": {"amount": round(price * 100), "divisor": 100, "currency_code": "USD"},
        }

    def sku_of(self, listing_id: str, product: dict[str, Any]) -> str:
        key = (listing_id, variation(product["property_values"]))
        return product["sku"] or self.variations.get(key, "")

    def stock(self, listing_id: str) -> dict[str, int]:
        products = self.inventories[listing_id]["products"]
        return {sku: sellable(p) for p in products if (sku := self.sku_of(listing_id, p))}

    def replace(self, listing_id: str, body: InventoryIn) -> None:
        """Etsy's PUT: the body becomes the inventory; what it leaves out is gone."""
        before = self.stock(listing_id)
        old_ids = {
            variation(p["property_values"]): p["product_id"]
            for p in self.inventories[listing_id]["products"]
        }
        products = []
        for product in body.products:
            values = [
                {**msgspec.to_builtins(v), "scale_name": None} for v in product.property_values
            ]
            key = variation(values)
            if product.sku:
                self.variations[(listing_id, key)] = product.sku
            renew = self.opt("renew_product_ids", True) or key not in old_ids
            products.append({
                "product_id": next(self.ids) if renew else old_ids[key],
                "sku": product.sku,
                "is_deleted": False,
                "offerings": [
                    self.offering(o.price, o.quantity, o.is_enabled) for o in product.offerings
                ],
                "property_values": values,
            })  # fmt: skip
        self.inventories[listing_id] = {**msgspec.to_builtins(body), "products": products}
        after = self.stock(listing_id)
        for sku in before.keys() - after.keys():
            self.quantities.pop(sku, None)
        for sku, quantity in after.items():
            if before.get(sku) != quantity or sku not in self.quantities:
                self.set_quantity(sku, quantity)

    # -- storefront ---------------------------------------------------------------------

    def take_order(self, sku: str, qty: int) -> Order | None:
        """Sells from the product's offerings and opens a paid receipt."""
        order = super().take_order(sku, qty)
        if order is None:
            return None
        listing_id = order.listing.ids["listing_id"]
        product = next(
            p for p in self.inventories[listing_id]["products"] if self.sku_of(listing_id, p) == sku
        )
        left = qty
        for offering in product["offerings"]:
            taken = min(left, offering["quantity"]) if offering["is_enabled"] else 0
            offering["quantity"] -= taken
            left -= taken
        now_s = int(time.time())
        self.receipts[order.order_id] = {
            "receipt_id": int(order.order_id), "shop_id": as_id(self.shop_id),
            "status": "paid", "is_paid": True, "is_shipped": False,
            "create_timestamp": now_s, "update_timestamp": now_s,
            "transactions": [{
                "transaction_id": next(self.ids), "receipt_id": int(order.order_id),
                "listing_id": as_id(listing_id), "product_id": product["product_id"],
                "sku": product["sku"], "quantity": qty, "paid_timestamp": now_s,
                "shipped_timestamp": None, "price": product["offerings"][0]["price"],
            }],
        }  # fmt: skip
        return order

    def deliveries(self, order: Order) -> list[Delivery]:
        return self.notice("order.paid", order.order_id)

    def notice(self, event_type: str, receipt_id: str) -> list[Delivery]:
        """The flat webhook Etsy sends, signed the Standard Webhooks way."""
        if not self.webhook_url:
            return []
        body = msgspec.json.encode({
            "event_type": event_type,
            "resource_url": f"https://openapi.etsy.com{API}/shops/{self.shop_id}/receipts/{receipt_id}",
            "shop_id": as_id(self.shop_id),
        })  # fmt: skip
        msg_id = f"msg_{uuid.uuid4().hex}"
        stamp = str(int(time.time()))
        secret = str(self.opt("webhook_secret", "whsec_c3RvY2tndWFyZC1ldHN5LXNpbQ=="))
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        signature = str(self.opt("signature_prefix", "v1,")) + base64.b64encode(digest).decode()
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": signature,
        }
        return [Delivery(url=self.webhook_url, body=body, headers=headers)]

    @property
    def shop_id(self) -> str:
        return str(self.opt("shop_id", "12345"))

    # -- limits -------------------------------------------------------------------------

    def day_wait(self) -> float:
        """0 if the rolling 24 h window has room, else the seconds until it has."""
        cutoff = time.monotonic() - DAY_S
        while self.day_calls and self.day_calls[0] <= cutoff:
            self.day_calls.popleft()
        if len(self.day_calls) < int(self.opt("qpd", 10_000)):
            return 0.0
        return self.day_calls[0] - cutoff

    def throttle(self) -> float:
        if not self.limits_on:
            return 0.0
        day_wait = self.day_wait()
        if day_wait:
            self.throttled += 1
            return day_wait
        qps = float(self.opt("qps", 10))
        wait = self.over_limit("qps", qps, qps)
        if not wait:
            self.day_calls.append(time.monotonic())
        return wait

    def rate_headers(self) -> dict[str, str]:
        qps, qpd = int(self.opt("qps", 10)), int(self.opt("qpd", 10_000))
        bucket = self.limiters.get("qps")
        second = qps if bucket is None or not self.limits_on else int(max(0.0, bucket.tokens))
        today = qpd - len(self.day_calls) if self.limits_on else qpd
        return {
            "x-limit-per-second": str(qps),
            "x-remaining-this-second": str(second),
            "x-limit-per-day": str(qpd),
            "x-remaining-today": str(today),
        }

    async def gate(self, request: Request) -> Response | None:
        """Faults, then auth, then limits: a response here ends the call."""
        if (response := await self.fault()) is not None:
            return response
        token = f"Bearer {self.opt('access_token', 'sim-access-token')}"
        key_ok = request.headers.get("x-api-key") == self.opt("keystring", "sim-keystring")
        if not key_ok or request.headers.get("authorization") != token:
            return JSONResponse({"error": "Invalid API key or access token"}, status_code=401)
        if wait := self.throttle():
            headers = {"retry-after": str(max(1, math.ceil(wait)))}
            return JSONResponse({"error": "Too many requests"}, status_code=429, headers=headers)
        return None

    def ok(self, payload: Any) -> Response:
        return JSONResponse(payload, headers=self.rate_headers())

    # -- routes -------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route(API + "/listings/{listing_id}/inventory", self.get_inventory, methods=["GET"]),
            Route(API + "/listings/{listing_id}/inventory", self.put_inventory, methods=["PUT"]),
            Route(API + "/shops/{shop_id}/receipts/{receipt_id}", self.get_receipt),
            Route(API + "/shops/{shop_id}/receipts", self.list_receipts),
            Route("/_sim/orders/{order_id}/cancel", self.cancel, methods=["POST"]),
        ]

    async def get_inventory(self, request: Request) -> Response:
        if (response := await self.gate(request)) is not None:
            return response
        inventory = self.inventories.get(request.path_params["listing_id"])
        if inventory is None:
            return JSONResponse({"error": "Listing not found"}, status_code=404)
        return self.ok(inventory)

    async def put_inventory(self, request: Request) -> Response:
        if (response := await self.gate(request)) is not None:
            return response
        listing_id = request.path_params["listing_id"]
        if listing_id not in self.inventories:
            return JSONResponse({"error": "Listing not found"}, status_code=404)
        try:
            body = msgspec.json.decode(await request.body(), type=InventoryIn)
        except msgspec.DecodeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if error := invalid(body):
            return JSONResponse({"error": error}, status_code=400)
        self.replace(listing_id, body)
        return self.ok(self.inventories[listing_id])

    async def get_receipt(self, request: Request) -> Response:
        if (response := await self.gate(request)) is not None:
            return response
        receipt = self.receipts.get(request.path_params["receipt_id"])
        if request.path_params["shop_id"] != self.shop_id or receipt is None:
            return JSONResponse({"error": "Receipt not found"}, status_code=404)
        return self.ok(receipt)

    async def list_receipts(self, request: Request) -> Response:
        if (response := await self.gate(request)) is not None:
            return response
        if request.path_params["shop_id"] != self.shop_id:
            return JSONResponse({"error": "Shop not found"}, status_code=404)
        try:
            found, limit, offset = self.select(dict(request.query_params))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return self.ok({"count": len(found), "results": found[offset : offset + limit]})

    def select(self, query: dict[str, str]) -> tuple[list[dict[str, Any]], int, int]:
        """Receipts matching the filters, newest first (Etsy's default created desc)."""
        limit, offset = int(query.get("limit", 25)), int(query.get("offset", 0))
        if not 1 <= limit <= 100 or offset < 0:
            raise ValueError("limit must be 1-100 and offset >= 0")
        found = sorted(self.receipts.values(), key=lambda r: -r["receipt_id"])
        for name, (field, sign) in RECEIPT_FILTERS.items():
            if name in query:
                bound = int(query[name])
                if bound < EARLIEST_S:
                    raise ValueError(f"{name} must be >= {EARLIEST_S}")
                found = [r for r in found if sign * (r[field] - bound) >= 0]
        if "was_paid" in query:
            paid = query["was_paid"] == "true"
            found = [r for r in found if r["is_paid"] is paid]
        return found, limit, offset

    async def cancel(self, request: Request) -> Response:
        order_id = request.path_params["order_id"]
        receipt = self.receipts.get(order_id)
        if receipt is None:
            return JSONResponse({"error": "no such order"}, status_code=404)
        receipt["status"] = "canceled"
        receipt["update_timestamp"] = int(time.time())
        for delivery in self.notice("order.canceled", order_id):
            self.send(delivery)
        return JSONResponse(receipt)
