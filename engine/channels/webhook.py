"""stockguard's own signed-JSON channel, for shops we control or that integrate with us:
our own web shop, social commerce, point of sale.

Signature (both directions): header
    Stockguard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>
with one or more v1= entries (a sender rotating its secret signs with both). A receiver
accepts any v1 that matches its current or previous secret and refuses a t more than
tolerance_s (300) from its clock.

Inbound, the shop POSTs one event per request:
    {"id": "<delivery id, the dedupe key>",
     "type": "order.created" | "order.cancelled" | "order.refunded",
     "occurred_at_ms": <int, the shop's time of the change>,
     "order": {"id": "<order id>", "lines": [{"id": "<line id>", "sku": "...", "qty": <int > 0>}]},
     "refund_id": "<refunds only: each refund applies once>",
     "restock": <refunds only, default true: false means no units come back>}
Ids may be strings or integers. order.created and order.refunded need lines; an
order.cancelled without lines cancels the whole order. Unknown fields are ignored, so
the shop may send more; a field of the wrong type is a bad delivery (400).

Outbound, we POST {base_url}/inventory with {"items": [{"sku": "...", "quantity": <int>}]}
(at most batch_size items, absolute quantities), signed as above, with an
Idempotency-Key header that stays the same across retries of one push. The shop answers
200 {"accepted": <items applied>}; 429 with Retry-After when we go too fast.

credentials: secret, previous_secret (optional)
options: batch_size (100), rate_per_s (50), burst (rate_per_s), limit_margin (0.9),
    tolerance_s (300), timeout_s (10), retry_attempts (5), retry_base_s (0.05),
    retry_cap_s (5)
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from .base import (
    BadDelivery,
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

SIGNATURE_HEADER = "stockguard-signature"
KINDS = {
    "order.created": EventKind.CREATED,
    "order.cancelled": EventKind.CANCELLED,
    "order.refunded": EventKind.REFUNDED,
}

Id = int | str


class Line(msgspec.Struct, frozen=True):
    id: Id
    sku: str
    qty: Annotated[int, msgspec.Meta(gt=0)]


class Order(msgspec.Struct, frozen=True):
    id: Id
    lines: list[Line] = []


class Message(msgspec.Struct, frozen=True):
    id: Id
    type: Literal["order.created", "order.cancelled", "order.refunded"]
    occurred_at_ms: int
    order: Order
    refund_id: Id = ""
    restock: bool = True


def sign(secret: str, stamp: int, body: bytes) -> str:
    """The hex v1 signature of a body sent at `stamp` (unix seconds)."""
    message = f"{stamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secrets: list[str], body: bytes, stamp: int | None = None) -> str:
    stamp = int(time.time()) if stamp is None else stamp
    return ",".join([f"t={stamp}", *(f"v1={sign(s, stamp, body)}" for s in secrets)])


def verify_signature(header: str, body: bytes, secrets: list[str], tolerance_s: float) -> None:
    """Raises SignatureError unless a v1 entry matches one of the secrets, in time."""
    stamps, offered = [], []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            stamps.append(value)
        elif name == "v1":
            offered.append(value)
    if len(stamps) != 1 or not stamps[0].isdigit() or not offered:
        raise SignatureError("missing or malformed Stockguard-Signature")
    stamp = int(stamps[0])
    if abs(time.time() - stamp) > tolerance_s:
        raise SignatureError("Stockguard-Signature timestamp outside the tolerance")
    expected = [sign(secret, stamp, body) for secret in secrets]
    if not any(hmac.compare_digest(e, o) for e in expected for o in offered):
        raise SignatureError("no Stockguard-Signature entry matches")


def event(message: Message) -> OrderEvent:
    if message.type != "order.cancelled" and not message.order.lines:
        raise BadDelivery(f"{message.type} without lines")
    if message.type == "order.refunded" and message.refund_id == "":
        raise BadDelivery("order.refunded without refund_id")
    return OrderEvent(
        kind=KINDS[message.type],
        order_id=str(message.order.id),
        lines=tuple(OrderLine(str(li.id), li.sku, li.qty) for li in message.order.lines),
        occurred_ms=message.occurred_at_ms,
        refund_id=str(message.refund_id),
        restock=message.restock,
    )


def batch_key(pushes: list[Push]) -> str:
    """One Idempotency-Key per call: derived from the pushes' keys when they all have one."""
    if all(p.key for p in pushes):
        return hashlib.sha256("\n".join(p.key for p in pushes).encode()).hexdigest()
    return uuid.uuid4().hex


class WebhookConnector(Connector):
    """Our signed-JSON contract: order events in, absolute quantities out."""

    platform = Platform.WEBHOOK
    max_batch = 100

    def make_limiter(self) -> RateLimiter:
        margin = float(self.config.option("limit_margin", 0.9))
        rate = self.config.option("rate_per_s", 50)
        if not rate:
            return TokenBucket(None)
        burst = float(self.config.option("burst", rate))
        return TokenBucket(rate * margin, max(1.0, burst * margin))

    def secrets(self) -> list[str]:
        previous = self.config.secret("previous_secret", "")
        return [self.config.secret("secret"), *([previous] if previous else [])]

    def verify(self, headers: Mapping[str, str], body: bytes, url: str) -> Delivery:
        tolerance_s = float(self.config.option("tolerance_s", 300))
        verify_signature(headers.get(SIGNATURE_HEADER, ""), body, self.secrets(), tolerance_s)
        try:
            message = msgspec.json.decode(body, type=Message)
        except msgspec.DecodeError as exc:
            raise BadDelivery(f"unreadable delivery: {exc}") from exc
        return Delivery(
            delivery_id=str(message.id),
            events=(event(message),),
            occurred_ms=message.occurred_at_ms,
        )

    async def push(self, pushes: list[Push]) -> list[PushResult]:
        size = max(1, int(self.config.option("batch_size", self.max_batch)))
        results: list[PushResult] = []
        for start in range(0, len(pushes), size):
            results.extend(await self.push_batch(pushes[start : start + size]))
        return results

    async def push_batch(self, pushes: list[Push]) -> list[PushResult]:
        items = [{"sku": p.sku, "quantity": max(0, p.quantity)} for p in pushes]
        body = msgspec.json.encode({"items": items})
        headers = {
            "content-type": "application/json",
            "idempotency-key": batch_key(pushes),
            SIGNATURE_HEADER: signature_header([self.config.secret("secret")], body),
        }
        url = self.config.base_url.rstrip("/") + "/inventory"
        timeout_s = float(self.config.option("timeout_s", 10.0))
        try:
            response = await self.send(
                lambda: self.http.post(url, content=body, headers=headers, timeout=timeout_s)
            )
        except Exhausted as exc:
            return [PushResult(p.sku, ok=False, retry=True, error=str(exc)) for p in pushes]
        error = self.refusal(response.status_code, response.content, len(items))
        return [PushResult(p.sku, ok=not error, error=error) for p in pushes]

    @staticmethod
    def refusal(status: int, content: bytes, sent: int) -> str:
        """Why the shop did not apply the batch, or ""."""
        if not 200 <= status < 300:
            return f"HTTP {status}: {content[:200].decode(errors='replace')}"
        try:
            accepted = msgspec.json.decode(content, type=dict[str, int]).get("accepted")
        except msgspec.DecodeError:
            return "unreadable answer to the push"
        return "" if accepted == sent else f"the shop accepted {accepted} of {sent} items"
