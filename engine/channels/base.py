"""What every connector shares: its configuration, the normalized order events it
produces, the pushes it sends, and the Connector interface the workers drive.

A connector never touches the engine. Inbound, it turns a platform's delivery into
OrderEvents (engine/channels/inbound.py applies them); outbound, it sends absolute
quantities in platform-sized batches (engine/channels/sync.py decides what and when).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar

import httpx
import msgspec

from .limits import RateLimiter, send


class Platform(StrEnum):
    SHOPIFY = "shopify"
    AMAZON = "amazon"
    EBAY = "ebay"
    ETSY = "etsy"
    WEBHOOK = "webhook"  # generic signed JSON: own web shop, social commerce, POS


class Listing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where one SKU lives on one platform; `ids` holds the platform's identifiers.

    shopify: inventory_item_id, location_id     amazon: seller_sku, marketplace_id, product_type
    ebay: sku, offer_id                         etsy: listing_id, product_id
    webhook: none needed (the SKU itself)
    """

    sku: str
    ids: dict[str, str] = {}


class ChannelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One connected channel, from the [channels.<name>] table of the config file.

    `credentials` values are secrets (client secrets, tokens, signing keys); a value
    written as "env:NAME" is read from the environment variable NAME, so secrets
    stay out of files and never appear in the code.
    `options` holds platform settings, including the documented limits, which are
    only configuration ("rate_per_s", "burst", ...; see each platform module).
    """

    channel: str  # the engine's channel name
    platform: Platform
    base_url: str  # the platform's API root (a simulator's URL in tests and demos)
    credentials: dict[str, str] = {}
    options: dict[str, Any] = {}
    listings: tuple[Listing, ...] = ()

    def secret(self, name: str, default: str | None = None) -> str:
        """A credential, resolving "env:NAME"; KeyError names what is missing."""
        import os

        value = self.credentials.get(name, default)
        if value is None:
            raise KeyError(f"channel {self.channel}: credential {name!r} is not configured")
        if value.startswith("env:"):
            env = value[4:]
            if env not in os.environ:
                raise KeyError(f"channel {self.channel}: environment variable {env} is not set")
            return os.environ[env]
        return value

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


class EventKind(StrEnum):
    CREATED = "created"  # the platform took the order: a committed sale, never refused
    CANCELLED = "cancelled"  # the whole order, or the listed lines, return to sale
    REFUNDED = "refunded"  # restocked units come back (return moves)


class OrderLine(msgspec.Struct, frozen=True):
    line_id: str  # stable per order: (channel, order, line) is the business dedupe key
    sku: str
    qty: int


class OrderEvent(msgspec.Struct, frozen=True):
    """One platform fact about one order, normalized."""

    kind: EventKind
    order_id: str
    lines: tuple[OrderLine, ...]
    occurred_ms: int  # the platform's own time of the change: stale events are dropped
    refund_id: str = ""  # for REFUNDED: each refund applies once
    restock: bool = True  # for REFUNDED: False means no units come back


class Delivery(msgspec.Struct, frozen=True):
    """A verified inbound message: its dedupe key and what it says or points to."""

    delivery_id: str  # the platform's delivery/notification id (dedupe key)
    events: tuple[OrderEvent, ...] = ()  # facts carried in the message itself
    fetch: tuple[str, ...] = ()  # order references to fetch from the platform
    occurred_ms: int = 0  # when the platform says the event fired


class Push(msgspec.Struct, frozen=True):
    """Set the SKU's absolute quantity on the platform."""

    sku: str
    quantity: int
    previous: int | None = None  # the last value we pushed and the platform accepted
    key: str = ""  # idempotency key of this logical push (kept across its retries)


class PushResult(msgspec.Struct, frozen=True):
    sku: str
    ok: bool
    retry: bool = False  # a transient failure: push the (latest) value again later
    error: str = ""


class SignatureError(Exception):
    """The delivery's signature is missing or wrong: answer 401, change nothing."""


class BadDelivery(Exception):
    """A correctly signed delivery we cannot read: answer 400, change nothing."""


class Challenge(Exception):
    """A GET the platform sends to validate the endpoint (eBay): answer with `body`."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("endpoint challenge")
        self.body = body


class Connector(abc.ABC):
    """One platform's contract. Subclasses set `platform` and implement the methods."""

    platform: ClassVar[Platform]
    max_batch: ClassVar[int] = 1  # quantities one push call can carry

    def __init__(self, config: ChannelConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self.http = http
        self.by_sku = {listing.sku: listing for listing in config.listings}
        self.limiter = self.make_limiter()

    async def send(
        self,
        call: Callable[[], Awaitable[httpx.Response]],
        limiter: RateLimiter | None = None,
    ) -> httpx.Response:
        """One platform call under a limiter (self.limiter by default), with the retry
        policy of limits.send and the channel's retry_attempts (5), retry_base_s (0.05) and
        retry_cap_s (5.0) options."""
        option = self.config.option
        return await send(
            call,
            self.limiter if limiter is None else limiter,
            attempts=int(option("retry_attempts", 5)),
            base_s=float(option("retry_base_s", 0.05)),
            cap_s=float(option("retry_cap_s", 5.0)),
        )

    @abc.abstractmethod
    def make_limiter(self) -> RateLimiter:
        """The documented push rate limit, from options (rate_per_s, burst, ...)."""

    @abc.abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes, url: str) -> Delivery:
        """Check the signature over the raw body, then parse. Raises SignatureError,
        BadDelivery, or Challenge. `headers` is case-insensitive (Starlette's Headers)."""

    async def fetch(self, reference: str) -> list[OrderEvent]:
        """The order events a reference from Delivery.fetch stands for (a re-fetch)."""
        raise NotImplementedError(f"{self.platform} deliveries carry their orders")

    async def receive(self) -> list[tuple[Delivery, str]]:
        """Pull-based inbound (Amazon's queue): deliveries with an ack handle each."""
        return []

    async def ack(self, handles: list[str]) -> None:
        """Deletes received messages once they are safely in our inbox."""
        return None

    async def poll(self, since_ms: int) -> list[OrderEvent]:
        """The polling fallback: orders changed since since_ms (platform time)."""
        return []

    @abc.abstractmethod
    async def push(self, pushes: list[Push]) -> list[PushResult]:
        """Send up to max_batch quantities in as few platform calls as allowed.

        Waits on self.limiter before each call; on 429 honours Retry-After; retries
        429, 5xx and timeouts with capped, jittered backoff (limits.send); returns a
        result per push, with retry=True when it gave up on a transient failure.
        """
