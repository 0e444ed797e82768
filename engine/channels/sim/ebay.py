"""eBay simulator (channel-apis.md §3): bulkUpdatePriceQuantity with per-item results and
the 250-revisions-a-day listing limit, Fulfillment API order reads, the Notification API
public key, and ORDER_CONFIRMATION notifications signed with a P-256 key made at start.

Platform routes:
  POST /sell/inventory/v1/bulk_update_price_quantity
  GET  /sell/fulfillment/v1/order/{order_id}
  GET  /sell/fulfillment/v1/order?filter=lastmodifieddate:[from..to]&orderIds=&limit=&offset=
  GET  /commerce/notification/v1/public_key/{kid}
Control routes, beyond the base's:
  POST /_sim/carts                       {"lines": [{"sku", "qty"}]}  a multi-line order
  POST /_sim/orders/{order_id}/cancel    cancelState CANCELED (eBay sends no notification)
  POST /_sim/orders/{order_id}/reconfirm checkout completed again: new notifications
  POST /_sim/challenge                   eBay's endpoint validation GET; {"ok": bool}

options (same names as the connector's; [U] = assumed): access_token (any bearer if
unset), verification_token, endpoint_url (default webhook_url), rate_per_s 20, burst =
rate_per_s, daily_quota None [U], one_sku_per_call False, revisions_per_day 250,
revision_day_tz "America/Los_Angeles", revision_limit_error_id 25099 [U],
partial_status 207 [U], cancel_restocks True [U], kid (default a uuid4).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..base import Listing
from ..ebay import ORDER_TOPIC, REVISION_LIMIT_ERROR_ID, iso_ms, to_iso
from .base import Delivery, Handler, Order, Simulator, now_ms

MAX_REQUESTS = 25
FILTER = re.compile(r"lastmodifieddate:\[([^\]]*?)\.\.([^\]]*)\]")


def error(status: int, error_id: int, message: str, **headers: str) -> Response:
    body = {"errors": [{"errorId": error_id, "category": "REQUEST", "message": message}]}
    return JSONResponse(body, status_code=status, headers=headers)


def item_error(status: int, sku: str, offer_id: str, error_id: int, message: str) -> dict[str, Any]:
    failure = {"errorId": error_id, "category": "REQUEST", "message": message}
    return {"statusCode": status, "sku": sku, "offerId": offer_id, "errors": [failure]}


class EbayDelivery(Delivery):
    """A notification, re-signed on each attempt: eBay bumps publishAttemptCount."""

    envelope: dict[str, Any] = msgspec.field(default_factory=dict)


class EbaySimulator(Simulator):
    """The eBay APIs stockguard uses, with eBay's limits, and a storefront that notifies."""

    platform = "ebay"

    def setup(self) -> None:
        self.by_ebay_sku = {
            listing.ids.get("sku", listing.sku): listing for listing in self.listings
        }
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.kid = str(self.options.get("kid") or uuid.uuid4())
        self.tz = ZoneInfo(str(self.options.get("revision_day_tz", "America/Los_Angeles")))

    def reset(self) -> None:
        super().reset()
        self.ebay_orders: dict[str, dict[str, Any]] = {}
        self.item_qty: dict[str, int] = {}  # shipToLocationAvailability.quantity by SKU
        self.offer_qty: dict[str, int] = {}  # availableQuantity by offer
        self.revisions: dict[str, int] = {}  # by offer, in self.day
        self.quota_used = 0  # platform calls in self.day
        self.day = ""
        self.batch_sizes: list[int] = []  # requests[] per accepted bulk call
        self._line_seq = 0

    def state(self) -> dict[str, Any]:
        return {**super().state(), "revisions": self.revisions, "batch_sizes": self.batch_sizes}

    # -- limits ---------------------------------------------------------------------------

    def _today(self) -> None:
        day = datetime.now(self.tz).date().isoformat()
        if day != self.day:
            self.day, self.revisions, self.quota_used = day, {}, 0

    def _to_midnight_s(self) -> float:
        now = datetime.now(self.tz)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), self.tz)
        return (midnight - now).total_seconds()

    def _throttle(self) -> Response | None:
        """Per-second pace (our assumption), then the daily quota per application [U]."""
        rate = self.options.get("rate_per_s", 20.0)
        if rate is not None:
            burst = float(self.options.get("burst", rate))
            wait = self.over_limit("api", float(rate), burst)
            if wait > 0:
                retry_after = f"{math.ceil(wait * 1000) / 1000:.3f}"
                return error(429, 2001, "Too many requests", **{"Retry-After": retry_after})
        quota = self.options.get("daily_quota")
        self._today()
        if quota is not None and self.limits_on and self.quota_used >= int(quota):
            self.throttled += 1
            wait = math.ceil(self._to_midnight_s())
            return error(429, 2001, "Daily call limit reached", **{"Retry-After": str(wait)})
        self.quota_used += 1
        return None

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = self.options.get("access_token")
        return scheme.lower() == "bearer" and bool(token) and token == (expected or token)

    def api(self, handler: Handler) -> Handler:
        """A platform call: faults, then auth, then limits, then the handler."""

        async def call(request: Request) -> Response:
            if (response := await self.fault()) is not None:
                return response
            if not self._authorized(request):
                return error(401, 1001, "Invalid access token")
            throttled = self._throttle()
            return throttled if throttled is not None else await handler(request)

        return call

    # -- Sell Inventory -----------------------------------------------------------------------

    async def bulk_update(self, request: Request) -> Response:
        try:
            requests = (await request.json())["requests"]
            assert isinstance(requests, list) and 1 <= len(requests) <= MAX_REQUESTS
        except (ValueError, KeyError, TypeError, AssertionError):
            return error(400, 25709, f"requests must hold 1 to {MAX_REQUESTS} PriceQuantity")
        skus = {str(r.get("sku", "")) for r in requests if isinstance(r, dict)}
        if len(skus) != len(requests) or (self.options.get("one_sku_per_call") and len(skus) > 1):
            return error(400, 25709, "one PriceQuantity per SKU (one SKU per call if so read)")
        self.batch_sizes.append(len(requests))
        responses = [answer for r in requests for answer in self._revise(r)]
        all_ok = all(r["statusCode"] == 200 for r in responses)
        status = 200 if all_ok else int(self.options.get("partial_status", 207))
        return JSONResponse({"responses": responses}, status_code=status)

    def _revise(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """One PriceQuantity: one revision of the SKU's listing, a response per offer."""
        sku = str(req.get("sku", ""))
        listing = self.by_ebay_sku.get(sku)
        offer_id = listing.ids.get("offer_id", "") if listing else ""
        offers = req.get("offers") or []
        asked = [str(o.get("offerId", "")) for o in offers] or [offer_id]
        if listing is None or any(asked_id != offer_id for asked_id in asked):
            return [
                item_error(404, sku, i, 25713, "no published offer for this SKU") for i in asked
            ]
        try:
            item_qty = _quantity(req.get("shipToLocationAvailability"), "quantity")
            offer_qty = [_quantity(o, "availableQuantity") for o in offers]
        except ValueError as exc:
            return [item_error(400, sku, offer_id, 25604, str(exc))]
        self._today()
        if self.revisions.get(offer_id, 0) >= int(self.options.get("revisions_per_day", 250)):
            error_id = int(self.options.get("revision_limit_error_id", REVISION_LIMIT_ERROR_ID))
            return [item_error(400, sku, offer_id, error_id, "listing revised too often today")]
        self.revisions[offer_id] = self.revisions.get(offer_id, 0) + 1
        self._apply(listing, offer_id, item_qty, offer_qty)
        return [{"statusCode": 200, "sku": sku, "offerId": offer_id}]

    def _apply(
        self, listing: Listing, offer_id: str, item_qty: int | None, offer_qty: list[int | None]
    ) -> None:
        """The listing shows min(item quantity, offer quantity)."""
        if item_qty is not None:
            self.item_qty[listing.sku] = item_qty
        for qty in offer_qty:
            if qty is not None:
                self.offer_qty[offer_id] = qty
        known = [
            q
            for q in (self.item_qty.get(listing.sku), self.offer_qty.get(offer_id))
            if q is not None
        ]
        if known:
            self.set_quantity(listing.sku, min(known))

    # -- Fulfillment ----------------------------------------------------------------------

    async def get_order(self, request: Request) -> Response:
        order = self.ebay_orders.get(request.path_params["order_id"])
        if order is None:
            return error(404, 32100, "Invalid order ID")
        return JSONResponse(order)

    async def get_orders(self, request: Request) -> Response:
        q = request.query_params
        try:
            limit, offset = int(q.get("limit", 50)), int(q.get("offset", 0))
            orders = self._matching(q.get("filter", ""), q.get("orderIds", ""))
            assert 1 <= limit <= 200 and offset >= 0
        except (ValueError, AssertionError):
            return error(400, 30700, "invalid filter, orderIds, limit or offset")
        page = orders[offset : offset + limit]
        body = {"href": str(request.url), "total": len(orders), "limit": limit, "offset": offset}
        return JSONResponse({**body, "orders": page})

    def _matching(self, filter_: str, order_ids: str) -> list[dict[str, Any]]:
        orders = list(self.ebay_orders.values())
        if order_ids:
            wanted = order_ids.split(",")
            if len(wanted) > 50:
                raise ValueError("at most 50 orderIds")
            orders = [o for o in orders if o["orderId"] in wanted]
        if match := FILTER.search(filter_):
            since = iso_ms(match[1]) if match[1] else 0
            until = iso_ms(match[2]) if match[2] else math.inf
            orders = [o for o in orders if since <= iso_ms(o["lastModifiedDate"]) <= until]
        return orders

    # -- Notification API -----------------------------------------------------------------

    def public_pem(self) -> str:
        """One line, as eBay serves it (its SDK re-inserts the line breaks)."""
        pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "".join(pem.decode().splitlines())

    async def public_key(self, request: Request) -> Response:
        if request.path_params["kid"] != self.kid:
            return error(404, 195001, "The public key was not found")
        return JSONResponse({"key": self.public_pem(), "algorithm": "ECDSA", "digest": "SHA1"})

    def sign(self, body: bytes) -> str:
        signature = self.private_key.sign(body, ec.ECDSA(hashes.SHA1()))
        header = {
            "alg": "ecdsa",
            "kid": self.kid,
            "signature": base64.b64encode(signature).decode(),
            "digest": "SHA1",
        }
        return base64.b64encode(json.dumps(header, separators=(",", ":")).encode()).decode()

    def publish(self, delivery: EbayDelivery) -> None:
        """Fixes body and headers for attempt number delivery.attempts (at least 1)."""
        notification = {
            **delivery.envelope["notification"],
            "publishDate": to_iso(now_ms()),
            "publishAttemptCount": max(1, delivery.attempts),
        }
        envelope = {**delivery.envelope, "notification": notification}
        delivery.body = json.dumps(envelope, separators=(",", ":")).encode()
        delivery.headers = {
            "Content-Type": "application/json",
            "X-EBAY-SIGNATURE": self.sign(delivery.body),
        }

    def notification(self, order_id: str, line_item_id: str) -> EbayDelivery:
        envelope = {
            "metadata": {"topic": ORDER_TOPIC, "schemaVersion": "1.0", "deprecated": False},
            "notification": {
                "notificationId": str(uuid.uuid4()),
                "eventDate": self.ebay_orders[order_id]["lastModifiedDate"],
                "data": {"orderId": order_id, "lineItemId": line_item_id},
            },
        }
        delivery = EbayDelivery(url=self.webhook_url, body=b"", headers={}, envelope=envelope)
        self.publish(delivery)
        return delivery

    def deliveries(self, order: Order) -> list[Delivery]:
        """ORDER_CONFIRMATION is generated per line item."""
        return [self.notification(order.order_id, order.line_id)]

    def prepare(self, delivery: Delivery) -> None:
        if isinstance(delivery, EbayDelivery):
            self.publish(delivery)

    # -- storefront -----------------------------------------------------------------------

    def next_order_id(self) -> str:
        seq = int(super().next_order_id())
        return f"12-{seq:05d}-{seq * 7919 % 100000:05d}"

    def take_order(self, sku: str, qty: int) -> Order | None:
        orders = self.take_cart([(sku, qty)])
        return orders[0] if orders else None

    def take_cart(self, lines: list[tuple[str, int]]) -> list[Order] | None:
        """One checkout of several lines: one eBay order, one notification per line."""
        wanted: Counter[str] = Counter()
        for sku, qty in lines:
            wanted[sku] += qty
        if not lines or any(
            sku not in self.by_sku or qty < 1 or self.quantities.get(sku, 0) < wanted[sku]
            for sku, qty in lines
        ):
            return None
        order_id, created_ms = self.next_order_id(), now_ms()
        orders = [self._sell(order_id, sku, qty, created_ms) for sku, qty in lines]
        self.ebay_orders[order_id] = self._ebay_order(order_id, orders)
        self.orders.extend(orders)
        for order in orders:
            for delivery in self.deliveries(order):
                self.send(delivery)
        return orders

    def _sell(self, order_id: str, sku: str, qty: int, created_ms: int) -> Order:
        listing = self.by_sku[sku]
        self.quantities[sku] -= qty
        self._adjust_parts(listing, -qty)
        self._line_seq += 1
        line_id = str(10_000_000_000 + self._line_seq)
        return Order(order_id, sku, qty, line_id, created_ms, listing)

    def _adjust_parts(self, listing: Listing, delta: int) -> None:
        offer_id = listing.ids.get("offer_id", "")
        if listing.sku in self.item_qty:
            self.item_qty[listing.sku] += delta
        if offer_id in self.offer_qty:
            self.offer_qty[offer_id] += delta

    def _ebay_order(self, order_id: str, orders: list[Order]) -> dict[str, Any]:
        created = to_iso(orders[0].created_ms)
        return {
            "orderId": order_id,
            "creationDate": created,
            "lastModifiedDate": created,
            "orderFulfillmentStatus": "NOT_STARTED",
            "orderPaymentStatus": "PAID",
            "cancelStatus": {"cancelState": "NONE_REQUESTED", "cancelRequests": []},
            "lineItems": [_line_item(order) for order in orders],
        }

    def cancel(self, order_id: str) -> dict[str, Any] | None:
        order = self.ebay_orders.get(order_id)
        if order is None:
            return None
        if order["cancelStatus"]["cancelState"] != "CANCELED":
            order["cancelStatus"]["cancelState"] = "CANCELED"
            modified = max(now_ms(), iso_ms(order["lastModifiedDate"]) + 1)
            order["lastModifiedDate"] = to_iso(modified)
            if self.options.get("cancel_restocks", True):
                self._restock(order_id)
        return order

    def _restock(self, order_id: str) -> None:
        for sold in (o for o in self.orders if o.order_id == order_id):
            self.quantities[sold.sku] = self.quantities.get(sold.sku, 0) + sold.qty
            self._adjust_parts(sold.listing, sold.qty)

    def reconfirm(self, order_id: str) -> int:
        lines = [o for o in self.orders if o.order_id == order_id]
        for line in lines:
            self.send(self.notification(order_id, line.line_id))
        return len(lines)

    async def challenge(self) -> bool:
        """eBay's endpoint validation: GET ?challenge_code=…, check the hashed answer."""
        assert self._http is not None
        code = secrets.token_hex(16)
        endpoint = str(self.options.get("endpoint_url") or self.webhook_url)
        token = str(self.options.get("verification_token", ""))
        expected = hashlib.sha256((code + token + endpoint).encode()).hexdigest()
        response = await self._http.get(self.webhook_url, params={"challenge_code": code})
        try:
            return bool(response.json().get("challengeResponse") == expected)
        except ValueError:
            return False

    # -- routes -----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        async def carts(request: Request) -> Response:
            lines = [(str(x["sku"]), int(x["qty"])) for x in (await request.json())["lines"]]
            orders = self.take_cart(lines)
            if orders is None:
                return JSONResponse({"error": "not enough quantity"}, status_code=409)
            return JSONResponse(self.ebay_orders[orders[0].order_id], status_code=201)

        async def cancel(request: Request) -> Response:
            order = self.cancel(request.path_params["order_id"])
            return JSONResponse(order) if order else error(404, 32100, "Invalid order ID")

        async def reconfirm(request: Request) -> Response:
            return JSONResponse({"sent": self.reconfirm(request.path_params["order_id"])})

        async def challenge(request: Request) -> Response:
            return JSONResponse({"ok": await self.challenge()})

        return [
            Route(
                "/sell/inventory/v1/bulk_update_price_quantity",
                self.api(self.bulk_update),
                methods=["POST"],
            ),
            Route(
                "/sell/fulfillment/v1/order/{order_id}", self.api(self.get_order), methods=["GET"]
            ),
            Route("/sell/fulfillment/v1/order", self.api(self.get_orders), methods=["GET"]),
            Route(
                "/commerce/notification/v1/public_key/{kid}",
                self.api(self.public_key),
                methods=["GET"],
            ),
            Route("/_sim/carts", carts, methods=["POST"]),
            Route("/_sim/orders/{order_id}/cancel", cancel, methods=["POST"]),
            Route("/_sim/orders/{order_id}/reconfirm", reconfirm, methods=["POST"]),
            Route("/_sim/challenge", challenge, methods=["POST"]),
        ]


def _quantity(container: Any, name: str) -> int | None:
    if container is None or name not in container:
        return None
    value = container[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0")
    return value


def _line_item(order: Order) -> dict[str, Any]:
    offer_id = order.listing.ids.get("offer_id", "")
    return {
        "lineItemId": order.line_id,
        "legacyItemId": order.listing.ids.get("item_id") or f"11{offer_id:0>10}",
        "sku": order.listing.ids.get("sku", order.listing.sku),
        "quantity": order.qty,
        "lineItemFulfillmentStatus": "NOT_STARTED",
    }
