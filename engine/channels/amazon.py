"""Amazon SP-API: quantities through patchListingsItem (a JSON_LISTINGS_FEED for big
batches); orders through ORDER_CHANGE notifications on an SQS queue and the Orders API v0.

Amazon signs nothing we receive: notifications land on our own SQS queue, whose IAM
policy is the authentication, so verify() refuses every HTTP delivery and receive()
long-polls the queue. A notification only says that an order changed; fetch() re-reads
the order, so duplicated and out-of-order notifications converge on its current state.
Listings writes have no idempotency key and no compare-and-set: pushes are absolute and
last-writer-wins, so Push.key has nothing to travel in.

credentials: access_token (the LWA access token, sent as x-amz-access-token)
options: seller_id (required); marketplace_id ("ATVPDKIKX0DER", for listings without one
  and for polling); patch_op ("merge" or "replace"); rate_per_s (5) and burst (5) of
  patchListingsItem; usage_plans ({operation: [rate, burst]} over PLANS); limit_margin
  (0.9); feed_threshold (50 SKUs); feed_poll_s (2.0); feed_wait_s (600); queue_url
  (base_url + "/_sqs"); wait_s (1, SQS long poll); retry_attempts (5); retry_base_s (0.05);
  retry_cap_s (5.0)
listing ids: seller_sku (default: the SKU), marketplace_id, product_type (needed to push)
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from .base import (
    BadDelivery,
    ChannelConfig,
    Connector,
    Delivery,
    EventKind,
    Listing,
    OrderEvent,
    OrderLine,
    Platform,
    Push,
    PushResult,
    SignatureError,
)
from .limits import Exhausted, RateLimiter, TokenBucket

log = logging.getLogger(__name__)

DEFAULT_MARKETPLACE = "ATVPDKIKX0DER"  # amazon.com
FEED_CONTENT_TYPE = "application/json; charset=UTF-8"
FEEDS = "/feeds/2021-06-30"

# Documented usage plans, (rate per second, burst); channel-apis.md §2.
PLANS: dict[str, tuple[float, float]] = {
    "patchListingsItem": (5.0, 5),
    "createFeedDocument": (0.5, 15),
    "createFeed": (0.0083, 15),
    "getFeed": (2.0, 15),
    "getFeedDocument": (0.0222, 10),
    "getOrders": (0.0167, 20),
    "getOrder": (0.5, 30),
    "getOrderItems": (0.5, 30),
}

KINDS = {
    "Pending": EventKind.CREATED,
    "Unshipped": EventKind.CREATED,
    "PartiallyShipped": EventKind.CREATED,
    "Shipped": EventKind.CREATED,
    "Canceled": EventKind.CANCELLED,
}


def usage_plan(options: Mapping[str, Any], operation: str) -> tuple[float, float]:
    """An operation's (rate, burst): the documented plan unless options override it."""
    rate, burst = PLANS[operation]
    if operation == "patchListingsItem":
        rate = float(options.get("rate_per_s", rate))
        burst = float(options.get("burst", burst))
    override = options.get("usage_plans", {}).get(operation)
    if override:
        rate, burst = float(override[0]), float(override[1])
    return rate, burst


def iso(ms: int) -> str:
    """SP-API's timestamp form, e.g. 2020-01-11T00:09:53.109Z."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_ms(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def seller_sku(listing: Listing) -> str:
    return listing.ids.get("seller_sku", listing.sku)


def has_token(bucket: TokenBucket) -> bool:
    """Whether a call could go now, without spending the token."""
    if bucket.try_take() > 0:
        return False
    if bucket.rate is not None:
        bucket.tokens += 1
    return True


def error_text(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
    return f"HTTP {response.status_code} {text}".strip()


def parse_notification(body: str) -> Delivery:
    """An SQS message body (the notification JSON) as a Delivery that points at its order."""
    try:
        note = json.loads(body)
        delivery_id = str(note["NotificationMetadata"]["NotificationId"])
        occurred_ms = parse_ms(note["EventTime"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadDelivery(f"unreadable notification: {e!r}") from e
    change = (note.get("Payload") or {}).get("OrderChangeNotification") or {}
    order_id = change.get("AmazonOrderId")
    is_order = note.get("NotificationType") == "ORDER_CHANGE" and order_id
    fetch = (str(order_id),) if is_order else ()
    return Delivery(delivery_id=delivery_id, fetch=fetch, occurred_ms=occurred_ms)


class AmazonError(Exception):
    """An SP-API call failed; `retry` says whether it was transient."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class AmazonConnector(Connector):
    platform = Platform.AMAZON
    max_batch = 1000  # push() picks per-SKU PATCHes or one feed per marketplace

    def __init__(self, config: ChannelConfig, http: httpx.AsyncClient) -> None:
        super().__init__(config, http)
        if not config.option("seller_id", ""):
            raise KeyError(f"channel {config.channel}: option 'seller_id' is not configured")
        self.seller_id = str(config.option("seller_id", ""))
        self.patch_op = str(config.option("patch_op", "merge"))
        if self.patch_op not in ("merge", "replace"):
            raise ValueError(f"channel {config.channel}: patch_op must be merge or replace")
        self.marketplace_id = str(config.option("marketplace_id", DEFAULT_MARKETPLACE))
        self.buckets = {op: self._bucket(op) for op in PLANS}
        self.buckets["patchListingsItem"] = self.limiter
        self.unlimited = TokenBucket(None)  # pre-signed S3 URLs are outside the usage plans
        self.by_seller_sku = {seller_sku(li): li.sku for li in config.listings}
        self.queue_url = str(config.option("queue_url", config.base_url.rstrip("/") + "/_sqs"))

    def make_limiter(self) -> RateLimiter:
        return self._bucket("patchListingsItem")

    def _bucket(self, operation: str) -> TokenBucket:
        rate, burst = usage_plan(self.config.options, operation)
        margin = float(self.config.option("limit_margin", 0.9))
        # The platform's bucket starts full at our first call, not at our start: a smaller
        # burst too keeps ours behind it whatever the first calls' latency.
        return TokenBucket(rate * margin, burst * margin)

    def _marketplace(self, listing: Listing) -> str:
        return listing.ids.get("marketplace_id", self.marketplace_id)

    # -- calls --------------------------------------------------------------------------

    async def _api(
        self, operation: str, method: str, path: str, *, params: Any = None, body: Any = None
    ) -> httpx.Response:
        url = self.config.base_url.rstrip("/") + path
        headers = {"x-amz-access-token": self.config.secret("access_token")}

        def call() -> Awaitable[httpx.Response]:
            return self.http.request(method, url, params=params, json=body, headers=headers)

        return await self.send(call, self.buckets[operation])

    async def _json(
        self, operation: str, method: str, path: str, *, params: Any = None, body: Any = None
    ) -> Any:
        try:
            response = await self._api(operation, method, path, params=params, body=body)
        except Exhausted as e:
            raise AmazonError(f"{operation}: {e}", retry=True) from e
        if not response.is_success:
            raise AmazonError(f"{operation}: {error_text(response)}", retry=False)
        return response.json()

    async def _document(self, method: str, url: str, content: bytes | None = None) -> bytes:
        """PUT or GET a pre-signed feed document URL (no access token goes to S3)."""
        headers = {"Content-Type": FEED_CONTENT_TYPE} if content is not None else {}

        def call() -> Awaitable[httpx.Response]:
            return self.http.request(method, url, content=content, headers=headers)

        try:
            response = await self.send(call, self.unlimited)
        except Exhausted as e:
            raise AmazonError(f"feed document: {e}", retry=True) from e
        if not response.is_success:
            raise AmazonError(f"feed document: HTTP {response.status_code}", retry=False)
        return response.content

    # -- outbound -----------------------------------------------------------------------

    def _patch_body(self, quantity: int) -> dict[str, Any]:
        value = [{"fulfillment_channel_code": "DEFAULT", "quantity": quantity}]
        return {"op": self.patch_op, "path": "/attributes/fulfillment_availability", "value": value}

    async def push(self, pushes: list[Push]) -> list[PushResult]:
        results: dict[int, PushResult] = {}
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pushes):
            listing = self.by_sku.get(p.sku)
            if listing is None or "product_type" not in listing.ids:
                results[i] = PushResult(sku=p.sku, ok=False, error="no listing with a product_type")
            else:
                groups.setdefault(self._marketplace(listing), []).append(i)
        for marketplace, indexes in groups.items():
            batch = [pushes[i] for i in indexes]
            if self._use_feed(len(batch)):
                done = await self._push_feed(marketplace, batch)
            else:
                done = await asyncio.gather(*(self._patch(marketplace, p) for p in batch))
            results.update(zip(indexes, done, strict=True))
        return [results[i] for i in range(len(pushes))]

    def _use_feed(self, size: int) -> bool:
        threshold = int(self.config.option("feed_threshold", 50))
        return size > threshold and has_token(self.buckets["createFeed"])

    async def _patch(self, marketplace: str, push: Push) -> PushResult:
        listing = self.by_sku[push.sku]
        path = "/listings/2021-08-01/items/{}/{}".format(
            quote(self.seller_id, safe=""), quote(seller_sku(listing), safe="")
        )
        body = {
            "productType": listing.ids["product_type"],
            "patches": [self._patch_body(push.quantity)],
        }
        params = {"marketplaceIds": marketplace}
        try:
            response = await self._api("patchListingsItem", "PATCH", path, params=params, body=body)
        except Exhausted as e:
            return PushResult(sku=push.sku, ok=False, retry=True, error=str(e))
        if response.status_code != 200:
            return PushResult(sku=push.sku, ok=False, error=error_text(response))
        submission = response.json()
        if submission.get("status") != "ACCEPTED":  # accepted for (asynchronous) processing
            issues = "; ".join(str(i.get("message")) for i in submission.get("issues") or [])
            return PushResult(sku=push.sku, ok=False, error=f"{submission.get('status')}: {issues}")
        return PushResult(sku=push.sku, ok=True)

    async def _push_feed(self, marketplace: str, batch: list[Push]) -> list[PushResult]:
        try:
            failed = await self._run_feed(marketplace, batch)
        except AmazonError as e:
            return [PushResult(sku=p.sku, ok=False, retry=e.retry, error=str(e)) for p in batch]
        return [
            PushResult(sku=p.sku, ok=n not in failed, error=failed.get(n, ""))
            for n, p in enumerate(batch, 1)
        ]

    def _feed(self, batch: list[Push]) -> bytes:
        messages = [
            {
                "messageId": n,
                "sku": seller_sku(self.by_sku[p.sku]),
                "operationType": "PATCH",
                "productType": self.by_sku[p.sku].ids["product_type"],
                "patches": [self._patch_body(p.quantity)],
            }
            for n, p in enumerate(batch, 1)
        ]
        header = {"sellerId": self.seller_id, "version": "2.0", "issueLocale": "en_US"}
        return json.dumps({"header": header, "messages": messages}).encode()

    async def _run_feed(self, marketplace: str, batch: list[Push]) -> dict[int, str]:
        """createFeedDocument, upload, createFeed, wait for DONE; the failed messageIds."""
        document = await self._json(
            "createFeedDocument", "POST", f"{FEEDS}/documents",
            body={"contentType": FEED_CONTENT_TYPE},
        )  # fmt: skip
        await self._document("PUT", str(document["url"]), self._feed(batch))
        created = await self._json(
            "createFeed", "POST", f"{FEEDS}/feeds",
            body={
                "feedType": "JSON_LISTINGS_FEED",
                "marketplaceIds": [marketplace],
                "inputFeedDocumentId": document["feedDocumentId"],
            },
        )  # fmt: skip
        feed = await self._await_feed(str(created["feedId"]))
        if feed.get("processingStatus") != "DONE":
            raise AmazonError(
                f"feed {created['feedId']}: {feed.get('processingStatus')}", retry=True
            )
        report_id = feed.get("resultFeedDocumentId")
        return await self._report(str(report_id)) if report_id else {}

    async def _await_feed(self, feed_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + float(self.config.option("feed_wait_s", 600))
        while True:
            feed: dict[str, Any] = await self._json("getFeed", "GET", f"{FEEDS}/feeds/{feed_id}")
            if feed.get("processingStatus") in ("DONE", "CANCELLED", "FATAL"):
                return feed
            if time.monotonic() >= deadline:
                raise AmazonError(f"feed {feed_id} still processing", retry=True)
            await asyncio.sleep(float(self.config.option("feed_poll_s", 2.0)))

    async def _report(self, document_id: str) -> dict[int, str]:
        """The processing report's ERROR issues, by messageId."""
        path = f"{FEEDS}/documents/{quote(document_id, safe='')}"
        document = await self._json("getFeedDocument", "GET", path)
        content = await self._document("GET", str(document["url"]))
        if document.get("compressionAlgorithm") == "GZIP":
            content = gzip.decompress(content)
        issues = json.loads(content).get("issues") or []
        return {
            int(i["messageId"]): f"{i.get('code')}: {i.get('message')}"
            for i in issues
            if i.get("severity") == "ERROR"
        }

    # -- inbound ------------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes, url: str) -> Delivery:
        raise SignatureError("Amazon notifications arrive by SQS (receive()), never by HTTP")

    async def receive(self) -> list[tuple[Delivery, str]]:
        wait_s = min(20, max(0, int(self.config.option("wait_s", 1))))
        response = await self.http.post(
            f"{self.queue_url}/receive",
            json={"MaxNumberOfMessages": 10, "WaitTimeSeconds": wait_s},
            timeout=wait_s + 10.0,
        )
        response.raise_for_status()
        received: list[tuple[Delivery, str]] = []
        for message in response.json().get("Messages") or []:
            try:
                received.append((parse_notification(message["Body"]), message["ReceiptHandle"]))
            except BadDelivery as e:  # left on the queue for its redrive policy (DLQ)
                log.warning("amazon: skipping SQS message %s: %s", message.get("MessageId"), e)
        return received

    async def ack(self, handles: list[str]) -> None:
        if handles:
            response = await self.http.post(
                f"{self.queue_url}/delete", json={"ReceiptHandles": handles}
            )
            response.raise_for_status()

    async def fetch(self, reference: str) -> list[OrderEvent]:
        path = f"/orders/v0/orders/{quote(reference, safe='')}"
        return await self._events((await self._json("getOrder", "GET", path))["payload"])

    async def poll(self, since_ms: int) -> list[OrderEvent]:
        marketplaces = sorted({self._marketplace(li) for li in self.config.listings})
        scope = {"MarketplaceIds": ",".join(marketplaces or [self.marketplace_id])}
        params = {"LastUpdatedAfter": iso(since_ms), **scope}
        events: list[OrderEvent] = []
        while True:
            payload = (await self._json("getOrders", "GET", "/orders/v0/orders", params=params))[
                "payload"
            ]
            for order in payload.get("Orders") or []:
                events += await self._events(order)
            if not payload.get("NextToken"):
                return events
            params = {"NextToken": payload["NextToken"], **scope}

    async def _events(self, order: dict[str, Any]) -> list[OrderEvent]:
        kind = KINDS.get(order.get("OrderStatus", ""))
        if kind is None:  # Unfulfillable, InvoiceUnconfirmed, PendingAvailability: no change
            return []
        order_id = str(order["AmazonOrderId"])
        lines = await self._lines(order_id)
        occurred_ms = parse_ms(order["LastUpdateDate"])
        return [OrderEvent(kind=kind, order_id=order_id, lines=lines, occurred_ms=occurred_ms)]

    async def _lines(self, order_id: str) -> tuple[OrderLine, ...]:
        path = f"/orders/v0/orders/{quote(order_id, safe='')}/orderItems"
        lines: list[OrderLine] = []
        params: dict[str, str] = {}
        while True:
            payload = (await self._json("getOrderItems", "GET", path, params=params))["payload"]
            for item in payload.get("OrderItems") or []:
                sku = str(item["SellerSKU"])
                lines.append(
                    OrderLine(
                        line_id=str(item["OrderItemId"]),
                        sku=self.by_seller_sku.get(sku, sku),
                        qty=int(item["QuantityOrdered"]),
                    )
                )
            if not payload.get("NextToken"):
                return tuple(lines)
            params = {"NextToken": str(payload["NextToken"])}
