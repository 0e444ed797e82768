"""eBay (channel-apis.md §3): Notification API ORDER_CONFIRMATION webhooks signed with
ECDSA, Fulfillment API order reads, and Sell Inventory bulkUpdatePriceQuantity pushes.

Inbound, a notification names an order line; the connector verifies the signature with
eBay's public key for the header's `kid` (fetched by `prepare()`, cached `key_cache_s`)
and hands back the orderId to fetch, because the order's current state (cancelled or
not, its lines, its lastModifiedDate) lives in the Fulfillment API. eBay sends no
notification for a cancellation: `poll()` is how cancellations arrive.

Revision budget: eBay lets a listing be revised at most `revisions_per_day` (250) times a
calendar day (US Pacific). The connector counts its successful revisions per offer and
day. Once an offer has used `revisions_per_day - revision_reserve`, only pushes that set
the quantity to 0 are sent, so a sell-out always gets through; past the full budget
nothing is sent. A push held back comes back retry=True, error="daily revision limit",
so sync pushes the latest value again later (after midnight Pacific it goes through).
The count is in memory: after a restart eBay's own refusal (errorId
`revision_limit_error_id`) marks the offer spent for the day.

credentials: access_token (OAuth user token), verification_token (endpoint validation)
options (defaults): rate_per_s 20, burst = rate_per_s, limit_margin 0.9, key_cache_s 3600,
  endpoint_url (the URL eBay calls; default: the request URL without its query),
  one_sku_per_call False, revisions_per_day 250, revision_reserve 10,
  revision_day_tz "America/Los_Angeles", revision_limit_error_id 25099, page_size 200,
  retry_attempts 5, retry_base_s 0.05, retry_cap_s 5.0, fields {} (overrides FIELDS)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import httpx
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .base import (
    BadDelivery,
    Challenge,
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

# [U] names not re-read in eBay's docs; option "fields" overrides any of them.
FIELDS = {
    "data_order_id": "orderId",  # notification.data of ORDER_CONFIRMATION
    "order_id": "orderId",
    "line_items": "lineItems",
    "line_id": "lineItemId",
    "sku": "sku",
    "qty": "quantity",
    "item_id": "legacyItemId",
    "modified": "lastModifiedDate",
    "cancel_status": "cancelStatus",
    "cancel_state": "cancelState",
}
ORDER_TOPIC = "ORDER_CONFIRMATION"
CANCELED = "CANCELED"
RATE_PER_S = 20.0  # eBay documents daily quotas only; this per-second pace is our choice
REVISIONS_PER_DAY = 250
REVISION_DAY_TZ = "America/Los_Angeles"
REVISION_LIMIT_ERROR_ID = 25099  # [U] the error a 251st revision gets is undocumented
KEY_PATH = "/commerce/notification/v1/public_key/"
ORDER_PATH = "/sell/fulfillment/v1/order"
PUSH_PATH = "/sell/inventory/v1/bulk_update_price_quantity"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PublicKey = ec.EllipticCurvePublicKey


def iso_ms(value: str) -> int:
    """An eBay timestamp ("2021-03-19T20:43:59.462Z") as epoch milliseconds."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(milliseconds=1)


def to_iso(ms: int) -> str:
    """Epoch milliseconds in eBay's format, UTC with milliseconds."""
    when = EPOCH + timedelta(milliseconds=ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def load_key(pem: str) -> PublicKey:
    """eBay serves the PEM on one line, so read the base64 between the markers."""
    der = base64.b64decode(re.sub(r"-----(BEGIN|END) PUBLIC KEY-----|\s", "", pem))
    key = serialization.load_der_public_key(der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("eBay notification keys are ECDSA keys")
    return key


class SignatureHeader(msgspec.Struct):
    """X-EBAY-SIGNATURE, once base64-decoded."""

    kid: str
    signature: str
    alg: str = "ecdsa"
    digest: str = "SHA1"


def signature_header(headers: Mapping[str, str]) -> SignatureHeader | None:
    value = headers.get("x-ebay-signature")
    if not value:
        return None
    try:
        return msgspec.json.decode(base64.b64decode(value), type=SignatureHeader)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None


def signed_forms(body: bytes) -> Iterator[bytes]:
    """The raw bytes, then compact JSON: eBay's SDK verifies JSON.stringify(message)."""
    yield body
    try:
        compact = json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return
    if compact.encode() != body:
        yield compact.encode()


def signature_ok(key: PublicKey, header: SignatureHeader, body: bytes) -> bool:
    if header.alg.lower() != "ecdsa" or header.digest.upper() != "SHA1":
        return False
    try:
        der = base64.b64decode(header.signature, validate=True)
    except binascii.Error:
        return False
    for message in signed_forms(body):
        try:
            key.verify(der, message, ec.ECDSA(hashes.SHA1()))
            return True
        except InvalidSignature:
            continue
    return False


class Metadata(msgspec.Struct):
    topic: str


class Notification(msgspec.Struct, rename="camel"):
    notification_id: str | int
    event_date: str
    publish_attempt_count: int = 1
    data: dict[str, Any] = {}


class Envelope(msgspec.Struct):
    metadata: Metadata
    notification: Notification


class RevisionBudget:
    """Successful revisions per offer in the current eBay day, and what may still be sent."""

    def __init__(self, limit: int, reserve: int, tz: str) -> None:
        self.limit = limit
        self.reserve = min(max(0, reserve), limit)
        self.tz = ZoneInfo(tz)
        self.day = ""
        self.used: dict[str, int] = {}

    def today(self) -> dict[str, int]:
        day = datetime.now(self.tz).date().isoformat()
        if day != self.day:
            self.day, self.used = day, {}
        return self.used

    def allows(self, offer_id: str, quantity: int) -> bool:
        """Selling out may use the reserve; any other quantity may not."""
        cap = self.limit if quantity <= 0 else self.limit - self.reserve
        return self.today().get(offer_id, 0) < cap

    def spend(self, offer_id: str) -> None:
        used = self.today()
        used[offer_id] = used.get(offer_id, 0) + 1

    def exhaust(self, offer_id: str) -> None:
        self.today()[offer_id] = self.limit


class Item(msgspec.Struct):
    index: int
    push: Push
    ebay_sku: str
    offer_id: str


class EbayConnector(Connector):
    """eBay Notification API in, Fulfillment API reads, bulkUpdatePriceQuantity out."""

    platform = Platform.EBAY
    max_batch = 25  # requests[] per bulkUpdatePriceQuantity call

    def __init__(self, config: ChannelConfig, http: httpx.AsyncClient) -> None:
        super().__init__(config, http)
        self.base_url = config.base_url.rstrip("/")
        self.fields = {**FIELDS, **config.option("fields", {})}
        self.sku_of = {
            listing.ids.get("sku", listing.sku): listing.sku for listing in config.listings
        }
        self.one_sku_per_call = bool(config.option("one_sku_per_call", False))
        self.revisions = RevisionBudget(
            int(config.option("revisions_per_day", REVISIONS_PER_DAY)),
            int(config.option("revision_reserve", 10)),
            str(config.option("revision_day_tz", REVISION_DAY_TZ)),
        )
        self.revision_error_id = int(
            config.option("revision_limit_error_id", REVISION_LIMIT_ERROR_ID)
        )
        self.key_cache_s = float(config.option("key_cache_s", 3600))
        self._keys: dict[str, tuple[float, PublicKey | None]] = {}  # kid -> (expires, key)
        self._key_lock = asyncio.Lock()

    def make_limiter(self) -> RateLimiter:
        rate = self.config.option("rate_per_s", RATE_PER_S)
        if rate is None:
            return TokenBucket(None)
        margin = float(self.config.option("limit_margin", 0.9))
        burst = float(self.config.option("burst", rate))
        return TokenBucket(float(rate) * margin, max(1.0, burst * margin))

    # -- HTTP -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.secret('access_token')}"}

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """A GET's JSON; raises Exhausted (transient) or httpx.HTTPStatusError (other)."""
        url = self.base_url + path
        response = await self.send(
            lambda: self.http.get(url, params=params, headers=self._headers())
        )
        response.raise_for_status()
        return response.json()

    # -- inbound ------------------------------------------------------------------------------

    async def prepare(self, headers: Mapping[str, str]) -> None:
        """Fetches and caches the public key the signature names, so verify() can run.

        Raises Exhausted or httpx.HTTPStatusError when eBay cannot tell us now (answer 5xx
        so eBay redelivers). A kid eBay does not know (404) is cached as missing for
        key_cache_s too, so forged headers cannot spend our Notification API quota.
        """
        header = signature_header(headers)
        if header is None or self._fresh(header.kid):
            return
        async with self._key_lock:
            if not self._fresh(header.kid):
                key = await self._fetch_key(header.kid)
                self._keys[header.kid] = (time.monotonic() + self.key_cache_s, key)

    def _fresh(self, kid: str) -> bool:
        entry = self._keys.get(kid)
        return entry is not None and entry[0] > time.monotonic()

    async def _fetch_key(self, kid: str) -> PublicKey | None:
        url = self.base_url + KEY_PATH + quote(kid, safe="")
        response = await self.send(lambda: self.http.get(url, headers=self._headers()))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        try:
            return load_key(str(response.json()["key"]))
        except (KeyError, TypeError, ValueError):
            return None

    def verify(self, headers: Mapping[str, str], body: bytes, url: str) -> Delivery:
        query = parse_qs(urlsplit(url).query)
        if "challenge_code" in query:
            raise Challenge({"challengeResponse": self._challenge(query["challenge_code"][0], url)})
        header = signature_header(headers)
        if header is None:
            raise SignatureError("missing or unreadable X-EBAY-SIGNATURE")
        entry = self._keys.get(header.kid)
        if entry is None or entry[1] is None:
            raise SignatureError(f"no eBay public key for kid {header.kid!r}")
        if not signature_ok(entry[1], header, body):
            raise SignatureError("X-EBAY-SIGNATURE does not match the body")
        return self._delivery(body)

    def _challenge(self, code: str, url: str) -> str:
        endpoint = self.config.option("endpoint_url", "") or urlunsplit(
            urlsplit(url)._replace(query="", fragment="")
        )
        token = self.config.secret("verification_token")
        return hashlib.sha256((code + token + endpoint).encode()).hexdigest()

    def _delivery(self, body: bytes) -> Delivery:
        try:
            envelope = msgspec.json.decode(body, type=Envelope)
            occurred_ms = iso_ms(envelope.notification.event_date)
        except (msgspec.DecodeError, ValueError) as exc:
            raise BadDelivery(f"unreadable eBay notification: {exc}") from exc
        notification = envelope.notification
        delivery_id = str(notification.notification_id)
        if envelope.metadata.topic != ORDER_TOPIC:
            return Delivery(delivery_id=delivery_id, occurred_ms=occurred_ms)
        order_id = notification.data.get(self.fields["data_order_id"])
        if order_id in (None, ""):
            raise BadDelivery("ORDER_CONFIRMATION without an orderId")
        return Delivery(delivery_id=delivery_id, fetch=(str(order_id),), occurred_ms=occurred_ms)

    async def fetch(self, reference: str) -> list[OrderEvent]:
        """The order as it is now: CANCELLED once eBay says CANCELED, else CREATED."""
        return [self._event(await self._get(f"{ORDER_PATH}/{quote(reference, safe='')}"))]

    async def poll(self, since_ms: int) -> list[OrderEvent]:
        """Orders modified since since_ms, every page; this is how cancellations arrive."""
        page_size = int(self.config.option("page_size", 200))
        params: dict[str, Any] = {"filter": f"lastmodifieddate:[{to_iso(since_ms)}..]"}
        events: list[OrderEvent] = []
        while True:
            params.update(limit=page_size, offset=len(events))
            page = await self._get(ORDER_PATH, params)
            orders = page.get("orders") or []
            events.extend(self._event(order) for order in orders)
            if not orders or len(events) >= int(page.get("total", 0)):
                return events

    def _event(self, order: Any) -> OrderEvent:
        f = self.fields
        try:
            state = (order.get(f["cancel_status"]) or {}).get(f["cancel_state"])
            return OrderEvent(
                kind=EventKind.CANCELLED if state == CANCELED else EventKind.CREATED,
                order_id=str(order[f["order_id"]]),
                lines=tuple(self._line(line) for line in order.get(f["line_items"]) or []),
                occurred_ms=iso_ms(order[f["modified"]]),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise BadDelivery(f"unreadable eBay order: {exc!r}") from exc

    def _line(self, line: Any) -> OrderLine:
        f = self.fields
        ebay_sku = str(line.get(f["sku"]) or line.get(f["item_id"]) or "")
        return OrderLine(
            line_id=str(line[f["line_id"]]),
            sku=self.sku_of.get(ebay_sku, ebay_sku),
            qty=int(line[f["qty"]]),
        )

    # -- outbound ---------------------------------------------------------------------------

    async def push(self, pushes: list[Push]) -> list[PushResult]:
        """A later push for a SKU supersedes an earlier one: only the last is sent (revisions
        are scarce), and both get its result."""
        last = {p.sku: index for index, p in enumerate(pushes)}
        results: dict[int, PushResult] = {}
        items: list[Item] = []
        for index in last.values():
            p = pushes[index]
            listing = self.by_sku.get(p.sku)
            offer_id = listing.ids.get("offer_id", "") if listing else ""
            if listing is None or not offer_id:
                results[index] = PushResult(p.sku, ok=False, error="no eBay offer for this SKU")
            elif not self.revisions.allows(offer_id, p.quantity):
                results[index] = PushResult(
                    p.sku, ok=False, retry=True, error="daily revision limit"
                )
            else:
                items.append(Item(index, p, listing.ids.get("sku", listing.sku), offer_id))
        size = 1 if self.one_sku_per_call else self.max_batch
        for start in range(0, len(items), size):
            results.update(await self._push_chunk(items[start : start + size]))
        return [results[last[p.sku]] for p in pushes]

    async def _push_chunk(self, chunk: list[Item]) -> dict[int, PushResult]:
        body = {"requests": [request(item) for item in chunk]}
        url = self.base_url + PUSH_PATH
        try:
            response = await self.send(
                lambda: self.http.post(url, json=body, headers=self._headers())
            )
        except Exhausted as exc:
            return {
                i.index: PushResult(i.push.sku, ok=False, retry=True, error=str(exc)) for i in chunk
            }
        if response.status_code not in (200, 207):
            error = f"HTTP {response.status_code}: {response.text[:200]}"
            return {i.index: PushResult(i.push.sku, ok=False, error=error) for i in chunk}
        try:
            answers = {
                str(r.get("offerId") or r.get("sku")): r for r in response.json()["responses"]
            }
        except (KeyError, TypeError, ValueError, AttributeError):
            answers = {}
        return {
            item.index: self._result(item, answers.get(item.offer_id) or answers.get(item.ebay_sku))
            for item in chunk
        }

    def _result(self, item: Item, answer: dict[str, Any] | None) -> PushResult:
        sku = item.push.sku
        if answer is None:
            return PushResult(sku, ok=False, retry=True, error="no response for this offer")
        status = int(answer.get("statusCode", 0))
        if status == 200:
            self.revisions.spend(item.offer_id)
            return PushResult(sku, ok=True)
        errors = answer.get("errors") or [{}]
        if any(str(e.get("errorId")) == str(self.revision_error_id) for e in errors):
            self.revisions.exhaust(item.offer_id)
            return PushResult(sku, ok=False, retry=True, error="daily revision limit")
        message = f"{status}: {errors[0].get('message', 'rejected')}"
        return PushResult(sku, ok=False, retry=status == 429 or status >= 500, error=message)


def request(item: Item) -> dict[str, Any]:
    """One PriceQuantity: eBay wants the quantity at both the item and the offer level."""
    quantity = max(0, item.push.quantity)
    return {
        "sku": item.ebay_sku,
        "shipToLocationAvailability": {"quantity": quantity},
        "offers": [{"offerId": item.offer_id, "availableQuantity": quantity}],
    }
