"""Etsy Open API v3 (channel-apis.md §4).

Inbound: an ORDER_PAID (or order.canceled) webhook carries no lines, only the receipt's
resource_url, so a verified delivery names the receipt to fetch; the receipt gives the
transactions, its status and update_timestamp (the staleness clock, in seconds).
Signatures follow Standard Webhooks: space-separated "v1,<base64 HMAC-SHA256>" entries
over "id.timestamp.body", keyed by the base64 secret after "whsec_". Whether Etsy sends
the "v1," prefix is unconfirmed, so entries are accepted with or without it.

Outbound: updateListingInventory replaces a listing's whole products array (products
left out are deleted), so a push reads the inventory, changes the pushed products'
offering quantities and writes every product back: one GET and one PUT per listing,
however many of its products change. Products are matched by SKU, else by product_id;
Etsy renews product_id on every update (etsy/open-api#523), so the ids are tracked.
There is no compare-and-set: a sale between the GET and the PUT of a product we did not
push is written back at its read quantity, until the next push of that SKU.

Limits: QPS and a rolling 24 h QPD per token, counting every GET and PUT.

credentials: keystring, access_token, webhook_secret, previous_webhook_secret (optional)
options: shop_id; qps (10), qpd (10000), limit_margin (0.9), burst (1), tolerance_s (300),
    page_size (100), timeout_s (10), retry_attempts (5), retry_base_s (0.05),
    retry_cap_s (5)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import sys
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from .base import (
    BadDelivery,
    ChannelConfig,
    Connector,
    Delivery,
    EventKind,
    OrderEvent,
    OrderLine,
    Platform,
    Push,
    PushResult,
    SignatureError,
)
from .limits import Exhausted, RateLimiter, TokenBucket

API = "/v3/application"
RECEIPT_PATH = re.compile(r"/shops/([^/]+)/receipts/([^/?#]+)")
ORDER_EVENTS = frozenset({"order.paid", "order.canceled"})
CANCELLED_STATUSES = frozenset({"canceled", "fully refunded"})
EARLIEST_S = 946_684_800  # Etsy refuses timestamp filters before 2000-01-01
DAY_S = 86_400.0


class Notice(msgspec.Struct, frozen=True):
    event_type: str
    resource_url: str = ""
    shop_id: int | str | None = None


class Transaction(msgspec.Struct, frozen=True):
    transaction_id: int | str
    quantity: int
    listing_id: int | str | None = None
    product_id: int | str | None = None
    sku: str | None = None


class Receipt(msgspec.Struct, frozen=True):
    receipt_id: int | str
    update_timestamp: int
    status: str = ""
    transactions: list[Transaction] = []


class ReceiptPage(msgspec.Struct, frozen=True):
    count: int
    results: list[Receipt]


class Money(msgspec.Struct, frozen=True):
    amount: int
    divisor: int
    currency_code: str = ""


class Offering(msgspec.Struct):
    price: Money | float
    quantity: int
    is_enabled: bool = True
    is_deleted: bool = False
    readiness_state_id: int | None = None


class PropertyValue(msgspec.Struct, frozen=True):
    property_id: int
    value_ids: list[int] = []
    values: list[str] = []
    scale_id: int | None = None
    property_name: str | None = None


class Product(msgspec.Struct):
    offerings: list[Offering]
    property_values: list[PropertyValue] = []
    sku: str | None = ""
    product_id: int | str | None = None
    is_deleted: bool = False


class Inventory(msgspec.Struct):
    products: list[Product]
    price_on_property: list[int] = []
    quantity_on_property: list[int] = []
    sku_on_property: list[int] = []
    readiness_state_on_property: list[int] | None = None


class QuotaSpent(Exhausted):
    """Etsy's daily quota (QPD) is spent: a transient failure, tried again later."""


class DayQuota:
    """A rolling 24 h call budget (Etsy's QPD), spent when a call is sent."""

    def __init__(self, limit: int | None, reserve: int = 0) -> None:
        self.limit = limit
        self.reserve = reserve  # what the platform allows beyond our limit (the margin)
        self.calls: deque[float] = deque()

    def spare(self) -> int:
        if self.limit is None:
            return sys.maxsize
        cutoff = time.monotonic() - DAY_S
        while self.calls and self.calls[0] <= cutoff:
            self.calls.popleft()
        return self.limit - len(self.calls)

    def spend(self, n: int = 1) -> None:
        if self.limit is not None:
            self.calls.extend([time.monotonic()] * n)

    def take(self) -> bool:
        """Spends one call if the budget has it."""
        if self.spare() < 1:
            return False
        self.spend()
        return True

    def sync(self, remaining_today: int) -> None:
        """Adopts the platform's count when it saw more calls (another client on the token)."""
        excess = self.spare() - (remaining_today - self.reserve)
        if self.limit is not None and excess > 0:
            self.spend(excess)


def signing_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


def offered_signatures(header: str) -> list[str]:
    """The base64 signatures of a webhook-signature header, "v1," prefix or not."""
    signatures = []
    for entry in header.split():
        version, comma, signature = entry.partition(",")
        if not comma:
            signatures.append(entry)
        elif version == "v1":
            signatures.append(signature)
    return signatures


def property_key(product: Product) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """A product's variation, which (unlike its product_id) survives inventory updates."""
    return tuple((v.property_id, tuple(v.value_ids)) for v in product.property_values)


def product_body(product: Product) -> dict[str, Any]:
    """A product as updateListingInventory takes it: no ids, prices as floats."""
    return {
        "sku": product.sku or "",
        "property_values": [msgspec.to_builtins(v) for v in product.property_values],
        "offerings": [offering_body(o) for o in product.offerings if not o.is_deleted],
    }


def offering_body(offering: Offering) -> dict[str, Any]:
    price = offering.price
    body: dict[str, Any] = {
        "price": price.amount / price.divisor if isinstance(price, Money) else price,
        "quantity": offering.quantity,
        "is_enabled": offering.is_enabled,
    }
    if offering.readiness_state_id is not None:
        body["readiness_state_id"] = offering.readiness_state_id
    return body


def inventory_body(inventory: Inventory) -> dict[str, Any]:
    body = {
        "products": [product_body(p) for p in inventory.products if not p.is_deleted],
        "price_on_property": inventory.price_on_property,
        "quantity_on_property": inventory.quantity_on_property,
        "sku_on_property": inventory.sku_on_property,
    }
    if inventory.readiness_state_on_property is not None:
        body["readiness_state_on_property"] = inventory.readiness_state_on_property
    return body


def failed(pushes: list[Push], error: str, *, retry: bool = False) -> list[PushResult]:
    return [PushResult(p.sku, ok=False, retry=retry, error=error) for p in pushes]


def status_error(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:200]}"


class EtsyConnector(Connector):
    """Etsy shop receipts in, listing inventory out, within QPS and QPD."""

    platform = Platform.ETSY
    max_batch = 100

    def __init__(self, config: ChannelConfig, http: httpx.AsyncClient) -> None:
        super().__init__(config, http)
        self.shop_id = str(config.option("shop_id", ""))
        self.product_ids = {
            listing.sku: listing.ids["product_id"]
            for listing in config.listings
            if listing.ids.get("product_id")
        }
        self.listing_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        qpd = self.config.option("qpd", 10_000)
        daily = int(qpd * self.margin) if qpd else None
        self.day = DayQuota(daily, reserve=int(qpd) - daily if daily is not None else 0)

    @property
    def margin(self) -> float:
        return float(self.config.option("limit_margin", 0.9))

    def make_limiter(self) -> RateLimiter:
        """QPS with the safety margin; qps null or 0 lifts it (QPD is self.day).

        Calls are spread evenly (burst 1): concurrent listings' calls can reach Etsy
        bunched together, and an even pace leaves a whole second's worth of headroom."""
        qps = self.config.option("qps", 10)
        if not qps:
            return TokenBucket(None)
        return TokenBucket(qps * self.margin, float(self.config.option("burst", 1)))

    # -- inbound ----------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes, url: str) -> Delivery:
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        self.check_signature(msg_id, stamp, headers.get("webhook-signature", ""), body)
        try:
            notice = msgspec.json.decode(body, type=Notice)
        except msgspec.DecodeError as exc:
            raise BadDelivery(f"unreadable Etsy webhook: {exc}") from exc
        delivery = Delivery(delivery_id=msg_id, occurred_ms=int(stamp) * 1000)
        if notice.event_type not in ORDER_EVENTS:
            return delivery
        match = RECEIPT_PATH.search(notice.resource_url)
        if match is None:
            raise BadDelivery(f"no receipt in resource_url {notice.resource_url!r}")
        if self.shop_id and match[1] != self.shop_id:
            return delivery  # one app's webhooks cover all its shops; this one is not ours
        return msgspec.structs.replace(delivery, fetch=(match[0],))

    def check_signature(self, msg_id: str, stamp: str, header: str, body: bytes) -> None:
        if not (msg_id and stamp.isdigit() and header):
            raise SignatureError("missing or malformed webhook-id/-timestamp/-signature")
        tolerance_s = float(self.config.option("tolerance_s", 300))
        if abs(time.time() - int(stamp)) > tolerance_s:
            raise SignatureError("webhook-timestamp outside the tolerance")
        message = f"{msg_id}.{stamp}.".encode() + body
        offered = offered_signatures(header)
        for key in self.signing_keys():
            digest = hmac.new(key, message, hashlib.sha256).digest()
            expected = base64.b64encode(digest).decode()
            if any(hmac.compare_digest(expected, s) for s in offered):
                return
        raise SignatureError("no webhook-signature entry matches")

    def signing_keys(self) -> list[bytes]:
        keys = [signing_key(self.config.secret("webhook_secret"))]
        previous = self.config.secret("previous_webhook_secret", "")
        if previous:
            keys.append(signing_key(previous))
        return keys

    async def fetch(self, reference: str) -> list[OrderEvent]:
        """The receipt's current state; `reference` is a receipt path or a receipt id."""
        match = RECEIPT_PATH.search(reference)
        shop_id, receipt_id = (match[1], match[2]) if match else (self.shop_id, reference)
        response = await self.call("GET", f"{API}/shops/{shop_id}/receipts/{receipt_id}")
        response.raise_for_status()
        return [self.event(msgspec.json.decode(response.content, type=Receipt))]

    async def poll(self, since_ms: int) -> list[OrderEvent]:
        """Receipts modified since since_ms (whole seconds, so the edge second repeats)."""
        page_size = int(self.config.option("page_size", 100))
        params = {"min_last_modified": max(EARLIEST_S, since_ms // 1000), "limit": page_size}
        events: list[OrderEvent] = []
        while True:
            response = await self.call(
                "GET",
                f"{API}/shops/{self.shop_id}/receipts",
                params={**params, "offset": len(events)},
            )
            response.raise_for_status()
            page = msgspec.json.decode(response.content, type=ReceiptPage)
            events.extend(self.event(receipt) for receipt in page.results)
            if not page.results or len(events) >= page.count:
                return events

    def event(self, receipt: Receipt) -> OrderEvent:
        kind = EventKind.CANCELLED if receipt.status in CANCELLED_STATUSES else EventKind.CREATED
        lines = tuple(
            OrderLine(line_id=str(t.transaction_id), sku=sku, qty=t.quantity)
            for t in receipt.transactions
            if (sku := self.sku_of(t))
        )
        return OrderEvent(kind, str(receipt.receipt_id), lines, receipt.update_timestamp * 1000)

    def sku_of(self, transaction: Transaction) -> str:
        """The transaction's Etsy SKU, else the SKU whose current product_id it names (a
        product replaced by a later update is unknown: give Etsy products SKUs)."""
        if transaction.sku:
            return transaction.sku
        product_id = str(transaction.product_id)
        return next((sku for sku, pid in self.product_ids.items() if pid == product_id), "")

    # -- outbound ---------------------------------------------------------------------

    async def push(self, pushes: list[Push]) -> list[PushResult]:
        results: dict[str, PushResult] = {}
        by_listing: dict[str, list[Push]] = {}
        for push in pushes:
            listing = self.by_sku.get(push.sku)
            listing_id = listing.ids.get("listing_id") if listing else None
            if listing_id:
                by_listing.setdefault(listing_id, []).append(push)
            else:
                results[push.sku] = PushResult(push.sku, ok=False, error="no Etsy listing_id")
        batches = await asyncio.gather(
            *(self.push_listing(listing_id, group) for listing_id, group in by_listing.items())
        )
        results.update((result.sku, result) for batch in batches for result in batch)
        return [results[push.sku] for push in pushes]

    async def push_listing(self, listing_id: str, pushes: list[Push]) -> list[PushResult]:
        """Read-modify-write of one listing's inventory; one listing at a time, so two
        concurrent pushes never write back each other's stale reads."""
        async with self.listing_locks[listing_id]:
            if self.day.spare() < 2:  # a GET without its PUT is a wasted call
                return failed(pushes, "Etsy daily quota (qpd) spent", retry=True)
            try:
                return await self.rewrite(f"{API}/listings/{listing_id}/inventory", pushes)
            except Exhausted as exc:
                return failed(pushes, str(exc), retry=True)

    async def rewrite(self, path: str, pushes: list[Push]) -> list[PushResult]:
        read = await self.call("GET", path)
        if not read.is_success:
            return failed(pushes, status_error(read))
        try:
            inventory = msgspec.json.decode(read.content, type=Inventory)
        except msgspec.DecodeError as exc:
            return failed(pushes, f"unreadable inventory: {exc}")
        placed = self.place(inventory, pushes)
        missing = [p for p in pushes if p.sku not in placed]
        results = failed(missing, "no such product in the listing's inventory")
        pushed = [p for p in pushes if p.sku in placed]
        if not pushed:
            return results
        written = await self.call("PUT", path, json=inventory_body(inventory))
        if not written.is_success:
            return results + failed(pushed, status_error(written))
        self.track_ids(written, {sku: property_key(p) for sku, p in placed.items()})
        return results + [PushResult(p.sku, ok=True) for p in pushed]

    def place(self, inventory: Inventory, pushes: list[Push]) -> dict[str, Product]:
        """Sets each pushed SKU's offering quantities; returns the products it changed."""
        placed: dict[str, Product] = {}
        for push in pushes:
            product = self.find(inventory, push.sku)
            if product is not None:
                for offering in product.offerings:
                    offering.quantity = max(0, push.quantity)
                placed[push.sku] = product
        return placed

    def find(self, inventory: Inventory, sku: str) -> Product | None:
        products = [p for p in inventory.products if not p.is_deleted]
        product_id = self.product_ids.get(sku)
        by_sku = (p for p in products if p.sku == sku)
        by_id = (p for p in products if product_id and str(p.product_id) == product_id)
        return next(by_sku, None) or next(by_id, None)

    def track_ids(self, written: httpx.Response, keys: dict[str, tuple[Any, ...]]) -> None:
        """Follows the product_ids Etsy renewed, matching products by their variation."""
        try:
            products = msgspec.json.decode(written.content, type=Inventory).products
        except msgspec.DecodeError:
            return
        renewed = {property_key(p): str(p.product_id) for p in products if p.product_id}
        for sku, key in keys.items():
            if key in renewed:
                self.product_ids[sku] = renewed[key]

    # -- calls ------------------------------------------------------------------------

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call under QPS/QPD with retries (limits.send)."""
        return await self.send(lambda: self.request(method, path, **kwargs))

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if not self.day.take():
            raise QuotaSpent("Etsy daily quota (qpd) spent")
        response = await self.http.request(
            method,
            self.config.base_url.rstrip("/") + path,
            headers={
                "x-api-key": self.config.secret("keystring"),
                "authorization": f"Bearer {self.config.secret('access_token')}",
            },
            timeout=float(self.config.option("timeout_s", 10.0)),
            **kwargs,
        )
        remaining = response.headers.get("x-remaining-today", "")
        if remaining.isdigit():
            self.day.sync(int(remaining))
        return response
