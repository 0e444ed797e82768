"""Amazon SP-API simulator: Listings Items, Feeds (JSON_LISTINGS_FEED), Orders v0, and the
ORDER_CHANGE notifications Amazon puts on the seller's SQS queue.

SP-API routes (x-amz-access-token must equal option access_token, else 403 ErrorList;
every response has x-amzn-RequestId; usage plans as engine.channels.amazon.PLANS):
  PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=   patchListingsItem
  POST  /feeds/2021-06-30/documents                                    createFeedDocument
  POST  /feeds/2021-06-30/feeds                                        createFeed
  GET   /feeds/2021-06-30/feeds/{feedId}                               getFeed
  GET   /feeds/2021-06-30/documents/{feedDocumentId}                   getFeedDocument
  GET   /orders/v0/orders?LastUpdatedAfter=&MarketplaceIds=[&NextToken=] getOrders
  GET   /orders/v0/orders/{orderId}                                    getOrder
  GET   /orders/v0/orders/{orderId}/orderItems                         getOrderItems
  PUT/GET /_s3/documents/{id}?X-Amz-Expires=&X-Amz-Signature=          pre-signed S3 URLs
  POST  /_sim/orders/{order_id}/cancel                                 storefront cancel

Our simulator's stand-in for SQS. Amazon delivers ORDER_CHANGE to an SQS queue, not over
HTTP; this small JSON API has the shape of SQS ReceiveMessage/DeleteMessage, without
its protocol, IAM auth or faults:
  POST /_sqs/receive {"MaxNumberOfMessages": 1..10, "WaitTimeSeconds": 0..20}
       → {"Messages": [{"MessageId", "ReceiptHandle", "Body": "<notification JSON>"}]}
       (long-polls until a message is visible or WaitTimeSeconds pass)
  POST /_sqs/delete  {"ReceiptHandles": [...]}
A received message stays invisible for visibility_timeout_s, then is handed out again
with a new ReceiptHandle unless it was deleted.

A patch answers ACCEPTED and applies apply_delay_ms later; a feed is DONE feed_delay_ms
after createFeed, and DONE means every valid message is applied. A storefront order is
Unshipped (it passed Pending) with one OrderStatusChange notification; a cancel makes it
Canceled with another. duplicate_rate enqueues a notification twice (same NotificationId,
new MessageId). LastUpdateDate and EventTime carry milliseconds. A patch or feed message
for an unknown SKU, another productType or an unsimulated patch is INVALID with an ERROR
issue (codes 400000x are the simulator's own).

options: access_token ("Atza|sim-access-token"), seller_id ("A3TH9S8BH6GOGM"),
rate_per_s / burst / usage_plans (as the connector), retry_after_on_429 (True: the 429
Retry-After header is unconfirmed), apply_delay_ms (2), feed_delay_ms (20),
visibility_timeout_s (30), reorder (False; True hands out the newest messages first),
page_size (100), document_ttl_s (300).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..amazon import DEFAULT_MARKETPLACE, iso, parse_ms, seller_sku, usage_plan
from ..base import Listing
from .base import Handler, Order, Simulator, now_ms

FIELD = "/attributes/fulfillment_availability"
QUOTA = "You exceeded your quota for the requested resource."


def errors(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message}]}, status_code=status)


def issue(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "severity": "ERROR", "attributeNames": []}


class Sale(msgspec.Struct):
    order: Order
    item_id: str
    status: str
    updated_ms: int


class Message(msgspec.Struct):
    message_id: str
    body: str
    visible_at: float = 0.0
    handle: str = ""


class Document(msgspec.Struct):
    signature: str
    expires_at: float
    content: bytes | None = None


class Feed(msgspec.Struct):
    feed_id: str
    marketplace_ids: list[str]
    document_id: str
    created_ms: int
    status: str = "IN_QUEUE"
    report_id: str = ""


class AmazonSimulator(Simulator):
    platform = "amazon"

    def reset(self) -> None:
        super().reset()
        self.sales: dict[str, Sale] = {}
        self.queue: list[Message] = []
        self.feeds: dict[str, Feed] = {}
        self.documents: dict[str, Document] = {}
        self.patch_ops: list[str] = []  # op of every accepted patch, feed messages included
        self.pending = 0  # accepted patches and feeds not yet applied
        self.operations: Counter[str] = Counter()  # SP-API calls by operation, any status

    @property
    def token(self) -> str:
        return str(self.options.get("access_token", "Atza|sim-access-token"))

    @property
    def seller_id(self) -> str:
        return str(self.options.get("seller_id", "A3TH9S8BH6GOGM"))

    def listing(self, sku: str) -> Listing | None:
        return next((li for li in self.listings if seller_sku(li) == sku), None)

    async def settle(self, timeout_s: float = 5.0) -> None:
        """Waits until every accepted patch and feed has been applied."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def later(self, delay_ms: float, apply: Callable[[], None]) -> None:
        def run() -> None:
            self.pending -= 1
            apply()

        self.pending += 1
        asyncio.get_running_loop().call_later(delay_ms / 1000, run)

    # -- auth, limits, headers ----------------------------------------------------------

    def api(self, operation: str, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            self.operations[operation] += 1
            response = await self.fault() or self.refuse(operation, request)
            if response is None:
                response = await handler(request)
            response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
            if response.status_code in (200, 201, 202, 400, 429):
                response.headers["x-amzn-RateLimit-Limit"] = str(
                    usage_plan(self.options, operation)[0]
                )
            return response

        return endpoint

    def refuse(self, operation: str, request: Request) -> Response | None:
        if request.headers.get("x-amz-access-token") != self.token:
            return errors(403, "Unauthorized", "Access to requested resource is denied.")
        wait_s = self.over_limit(operation, *usage_plan(self.options, operation))
        if not wait_s:
            return None
        response = errors(429, "QuotaExceeded", QUOTA)
        if self.options.get("retry_after_on_429", True):
            response.headers["Retry-After"] = f"{wait_s:.3f}"
        return response

    # -- listings -----------------------------------------------------------------------

    def check(
        self, listing: Listing | None, product_type: Any, patches: Any
    ) -> int | list[dict[str, Any]]:
        """The quantity a patch list sets on a listing, or the issues that make it INVALID."""
        if listing is None:
            return [issue("4000001", "The SKU is not a listing of this seller.")]
        expected = listing.ids.get("product_type", product_type)
        if product_type != expected:
            return [issue("4000002", f"productType must be {expected}.")]
        if not isinstance(patches, list) or len(patches) != 1 or not isinstance(patches[0], dict):
            return [issue("4000003", "The simulator takes exactly one patch.")]
        patch = patches[0]
        value = patch.get("value")
        entry = value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}
        quantity = entry.get("quantity")
        if patch.get("op") not in ("merge", "replace") or patch.get("path") != FIELD:
            return [issue("4000003", f"Only merge or replace of {FIELD} is simulated.")]
        if entry.get("fulfillment_channel_code") != "DEFAULT":
            return [issue("4000004", "fulfillment_channel_code must be DEFAULT.")]
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            return [issue("4000005", "quantity must be a non-negative integer.")]
        self.patch_ops.append(str(patch["op"]))
        return quantity

    async def patch_listing(self, request: Request) -> Response:
        params = request.path_params
        if params["seller_id"] != self.seller_id:
            return errors(403, "Unauthorized", "Access to requested resource is denied.")
        if not request.query_params.get("marketplaceIds"):
            return errors(400, "InvalidInput", "marketplaceIds is required.")
        try:
            body = json.loads(await request.body())
            product_type, patches = body["productType"], body["patches"]
        except (ValueError, KeyError, TypeError):
            return errors(400, "InvalidInput", "Body must be a ListingsItemPatchRequest.")
        sku = params["sku"]
        listing = self.listing(sku)
        result = self.check(listing, product_type, patches)
        answer = {"sku": sku, "submissionId": uuid.uuid4().hex, "issues": []}
        if isinstance(result, list):
            return JSONResponse({**answer, "status": "INVALID", "issues": result})
        assert listing is not None
        delay_ms = float(self.options.get("apply_delay_ms", 2))
        self.later(delay_ms, lambda: self.set_quantity(listing.sku, result))
        return JSONResponse({**answer, "status": "ACCEPTED"})

    # -- feeds --------------------------------------------------------------------------

    def document_url(self, request: Request, document_id: str) -> str:
        document = self.documents[document_id]
        ttl_s = int(self.options.get("document_ttl_s", 300))
        document.expires_at = time.time() + ttl_s
        return (
            f"{str(request.base_url).rstrip('/')}/_s3/documents/{document_id}"
            f"?X-Amz-Expires={ttl_s}&X-Amz-Signature={document.signature}"
        )

    def new_document(self, content: bytes | None = None) -> str:
        document_id = f"amzn1.tortuga.4.na.{uuid.uuid4()}"
        self.documents[document_id] = Document(uuid.uuid4().hex, 0.0, content)
        return document_id

    async def create_document(self, request: Request) -> Response:
        try:
            content_type = (await request.json())["contentType"]
        except (ValueError, KeyError, TypeError):
            content_type = None
        if not content_type:
            return errors(400, "InvalidInput", "contentType is required.")
        document_id = self.new_document()
        url = self.document_url(request, document_id)
        return JSONResponse({"feedDocumentId": document_id, "url": url}, status_code=201)

    async def s3(self, request: Request) -> Response:
        fault = await self.fault()
        if fault is not None:
            return fault
        document = self.documents.get(request.path_params["document_id"])
        signature = request.query_params.get("X-Amz-Signature")
        if document is None or signature != document.signature or time.time() > document.expires_at:
            return Response("<Error><Code>AccessDenied</Code></Error>", 403, media_type="text/xml")
        if request.method == "PUT":
            document.content = await request.body()
            return Response(status_code=200)
        return Response(document.content or b"", media_type="application/json")

    async def create_feed(self, request: Request) -> Response:
        try:
            body = await request.json()
            marketplaces = list(body["marketplaceIds"])
            feed_type, document_id = body["feedType"], body["inputFeedDocumentId"]
        except (ValueError, KeyError, TypeError):
            return errors(400, "InvalidInput", "Body must be a CreateFeedSpecification.")
        if feed_type != "JSON_LISTINGS_FEED" or not 1 <= len(marketplaces) <= 25:
            return errors(400, "InvalidInput", "Only JSON_LISTINGS_FEED for 1-25 marketplaces.")
        if document_id not in self.documents:
            return errors(400, "InvalidInput", "Unknown inputFeedDocumentId.")
        feed = Feed(str(random.randrange(10**10, 10**11)), marketplaces, document_id, now_ms())
        self.feeds[feed.feed_id] = feed
        self.later(float(self.options.get("feed_delay_ms", 20)), lambda: self.process(feed))
        return JSONResponse({"feedId": feed.feed_id}, status_code=202)

    def process(self, feed: Feed) -> None:
        """Applies every valid message and files the processing report."""
        try:
            document = json.loads(self.documents[feed.document_id].content or b"")
            messages = list(document["messages"])
        except (ValueError, KeyError, TypeError):
            feed.status = "FATAL"
            return
        issues = []
        for message in messages:
            result = self.apply_message(message)
            issues += [{**i, "messageId": message.get("messageId"), "sku": message.get("sku")}
                       for i in result]  # fmt: skip
        failed = {i["messageId"] for i in issues}
        summary = {
            "errors": len(issues), "warnings": 0, "messagesProcessed": len(messages),
            "messagesAccepted": len(messages) - len(failed), "messagesInvalid": len(failed),
        }  # fmt: skip
        header = {"sellerId": self.seller_id, "version": "2.0", "feedId": feed.feed_id}
        report = {"header": header, "issues": issues, "summary": summary}
        feed.report_id = self.new_document(json.dumps(report).encode())
        feed.status = "DONE"

    def apply_message(self, message: Any) -> list[dict[str, Any]]:
        if not isinstance(message, dict) or message.get("operationType") != "PATCH":
            return [issue("4000006", "The simulator takes PATCH messages only.")]
        listing = self.listing(str(message.get("sku")))
        result = self.check(listing, message.get("productType"), message.get("patches"))
        if isinstance(result, list):
            return result
        assert listing is not None
        self.set_quantity(listing.sku, result)
        return []

    async def get_feed(self, request: Request) -> Response:
        feed = self.feeds.get(request.path_params["feed_id"])
        if feed is None:
            return errors(404, "NotFound", "The requested feed does not exist.")
        answer = {
            "feedId": feed.feed_id, "feedType": "JSON_LISTINGS_FEED",
            "marketplaceIds": feed.marketplace_ids, "createdTime": iso(feed.created_ms),
            "processingStatus": feed.status,
        }  # fmt: skip
        if feed.report_id:
            answer["resultFeedDocumentId"] = feed.report_id
        return JSONResponse(answer)

    async def get_document(self, request: Request) -> Response:
        document_id = request.path_params["document_id"]
        if document_id not in self.documents:
            return errors(404, "NotFound", "The requested feed document does not exist.")
        url = self.document_url(request, document_id)
        return JSONResponse({"feedDocumentId": document_id, "url": url})

    # -- orders and notifications -------------------------------------------------------

    def next_order_id(self) -> str:
        seq = int(super().next_order_id())
        return f"114-{seq:07d}-{seq * 7919 % 10**7:07d}"

    def take_order(self, sku: str, qty: int) -> Order | None:
        order = super().take_order(sku, qty)
        if order is not None:
            item_id = f"{int(order.order_id.replace('-', '')) % 10**14:014d}"
            sale = Sale(order, item_id, "Unshipped", order.created_ms)
            self.sales[order.order_id] = sale
            self.notify(sale)
        return order

    def marketplace(self, sale: Sale) -> str:
        return sale.order.listing.ids.get("marketplace_id", DEFAULT_MARKETPLACE)

    def notify(self, sale: Sale) -> None:
        """Enqueues the ORDER_CHANGE notification of the sale's current status."""
        body = json.dumps(self.notification(sale))
        copies = 2 if self.duplicate_rate and random.random() < self.duplicate_rate else 1
        self.queue += [Message(str(uuid.uuid4()), body) for _ in range(copies)]

    def notification(self, sale: Sale) -> dict[str, Any]:
        order, at = sale.order, iso(sale.updated_ms)
        unshipped = order.qty if sale.status != "Canceled" else 0
        item = {
            "OrderItemId": sale.item_id, "SellerSKU": seller_sku(order.listing),
            "OrderItemStatus": sale.status, "Quantity": order.qty, "QuantityShipped": 0,
            "IsBuyerRequestedCancel": False,
        }  # fmt: skip
        summary = {
            "MarketplaceId": self.marketplace(sale), "OrderStatus": sale.status,
            "PurchaseDate": iso(order.created_ms), "DestinationPostalCode": "48110",
            "FulfillmentType": "MFN", "OrderType": "StandardOrder", "NumberOfItemsShipped": 0,
            "NumberOfItemsUnshipped": unshipped, "OrderItems": [item],
        }  # fmt: skip
        change = {
            "NotificationLevel": "OrderLevel", "SellerId": self.seller_id,
            "AmazonOrderId": order.order_id, "OrderChangeType": "OrderStatusChange",
            "OrderChangeTrigger": {"TimeOfOrderChange": at, "ChangeReason": "Order status change"},
            "Summary": summary,
        }  # fmt: skip
        metadata = {
            "ApplicationId": "amzn1.sp.solution.simulator", "SubscriptionId": "sim-subscription",
            "PublishTime": iso(now_ms()), "NotificationId": str(uuid.uuid4()),
        }  # fmt: skip
        return {
            "NotificationVersion": "1.0", "NotificationType": "ORDER_CHANGE",
            "PayloadVersion": "1.0", "EventTime": at,
            "Payload": {"OrderChangeNotification": change}, "NotificationMetadata": metadata,
        }  # fmt: skip

    async def cancel(self, request: Request) -> Response:
        sale = self.sales.get(request.path_params["order_id"])
        if sale is None:
            return JSONResponse({"error": "no such order"}, status_code=404)
        if sale.status == "Canceled":
            return JSONResponse({"error": "already canceled"}, status_code=409)
        sale.status = "Canceled"
        sale.updated_ms = max(now_ms(), sale.updated_ms + 1)  # strictly after the last change
        self.notify(sale)
        return JSONResponse({"AmazonOrderId": sale.order.order_id, "OrderStatus": sale.status})

    def order_json(self, sale: Sale) -> dict[str, Any]:
        unshipped = sale.order.qty if sale.status != "Canceled" else 0
        return {
            "AmazonOrderId": sale.order.order_id, "PurchaseDate": iso(sale.order.created_ms),
            "LastUpdateDate": iso(sale.updated_ms), "OrderStatus": sale.status,
            "FulfillmentChannel": "MFN", "SalesChannel": "Amazon.com",
            "OrderType": "StandardOrder", "NumberOfItemsShipped": 0,
            "NumberOfItemsUnshipped": unshipped, "MarketplaceId": self.marketplace(sale),
        }  # fmt: skip

    async def get_order(self, request: Request) -> Response:
        sale = self.sales.get(request.path_params["order_id"])
        if sale is None:
            return errors(404, "NotFound", "Order not found.")
        return JSONResponse({"payload": self.order_json(sale)})

    async def get_order_items(self, request: Request) -> Response:
        sale = self.sales.get(request.path_params["order_id"])
        if sale is None:
            return errors(404, "NotFound", "Order not found.")
        item = {
            "ASIN": "B0SIM00000", "SellerSKU": seller_sku(sale.order.listing),
            "OrderItemId": sale.item_id, "Title": sale.order.sku,
            "QuantityOrdered": sale.order.qty, "QuantityShipped": 0,
        }  # fmt: skip
        payload = {"AmazonOrderId": sale.order.order_id, "OrderItems": [item]}
        return JSONResponse({"payload": payload})

    async def get_orders(self, request: Request) -> Response:
        query = request.query_params
        try:
            since, offset = self.orders_cursor(query)
        except (ValueError, KeyError):
            return errors(400, "InvalidInput", "LastUpdatedAfter or a valid NextToken is required.")
        marketplaces = set(query.get("MarketplaceIds", "").split(","))
        matching = sorted(
            (s for s in self.sales.values()
             if s.updated_ms >= since and self.marketplace(s) in marketplaces),
            key=lambda s: (s.updated_ms, s.order.order_id),
        )  # fmt: skip
        size = int(self.options.get("page_size", 100))
        page = matching[offset : offset + size]
        payload: dict[str, Any] = {"Orders": [self.order_json(s) for s in page]}
        if offset + size < len(matching):
            payload["NextToken"] = base64.b64encode(f"{since}:{offset + size}".encode()).decode()
        return JSONResponse({"payload": payload})

    def orders_cursor(self, query: Any) -> tuple[int, int]:
        if not query.get("MarketplaceIds"):
            raise KeyError("MarketplaceIds")
        if query.get("NextToken"):
            since, offset = base64.b64decode(query["NextToken"]).decode().split(":")
            return int(since), int(offset)
        return parse_ms(query["LastUpdatedAfter"]), 0

    # -- the SQS stand-in ---------------------------------------------------------------

    def take_messages(self, limit: int) -> list[Message]:
        now = time.monotonic()
        visible = [m for m in self.queue if m.visible_at <= now]
        if self.options.get("reorder"):
            visible.reverse()
        taken = visible[:limit]
        hidden_s = float(self.options.get("visibility_timeout_s", 30))
        for message in taken:
            message.visible_at = now + hidden_s
            message.handle = uuid.uuid4().hex
        return taken

    async def sqs_receive(self, request: Request) -> Response:
        body = await request.json()
        limit = min(10, max(1, int(body.get("MaxNumberOfMessages", 1))))
        deadline = time.monotonic() + min(20.0, max(0.0, float(body.get("WaitTimeSeconds", 0))))
        while not (taken := self.take_messages(limit)) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        messages = [
            {"MessageId": m.message_id, "ReceiptHandle": m.handle, "Body": m.body} for m in taken
        ]
        return JSONResponse({"Messages": messages})

    async def sqs_delete(self, request: Request) -> Response:
        handles = set((await request.json()).get("ReceiptHandles") or [])
        self.queue = [m for m in self.queue if not m.handle or m.handle not in handles]
        return JSONResponse({})

    def routes(self) -> list[Route]:
        api = self.api
        return [
            Route("/listings/2021-08-01/items/{seller_id}/{sku:path}",
                  api("patchListingsItem", self.patch_listing), methods=["PATCH"]),
            Route("/feeds/2021-06-30/documents",
                  api("createFeedDocument", self.create_document), methods=["POST"]),
            Route("/feeds/2021-06-30/feeds", api("createFeed", self.create_feed), methods=["POST"]),
            Route("/feeds/2021-06-30/feeds/{feed_id}",
                  api("getFeed", self.get_feed), methods=["GET"]),
            Route("/feeds/2021-06-30/documents/{document_id}",
                  api("getFeedDocument", self.get_document), methods=["GET"]),
            Route("/orders/v0/orders", api("getOrders", self.get_orders), methods=["GET"]),
            Route("/orders/v0/orders/{order_id}", api("getOrder", self.get_order), methods=["GET"]),
            Route("/orders/v0/orders/{order_id}/orderItems",
                  api("getOrderItems", self.get_order_items), methods=["GET"]),
            Route("/_s3/documents/{document_id}", self.s3, methods=["PUT", "GET"]),
            Route("/_sim/orders/{order_id}/cancel", self.cancel, methods=["POST"]),
            Route("/_sqs/receive", self.sqs_receive, methods=["POST"]),
            Route("/_sqs/delete", self.sqs_delete, methods=["POST"]),
        ]  # fmt: skip
