"""A shop on stockguard's signed-JSON channel (the contract is in channels/webhook.py).

Platform route:
  POST /inventory    {"items": [{"sku", "quantity"}]}: 401 on a bad or stale signature,
                     429 + Retry-After over rate_per_s, 413 over max_batch items, 422 when an
                     Idempotency-Key comes back with another body (a replay answers as before)
Control routes (each sends its signed webhook):
  POST /_sim/orders/{order_id}/cancel    order.cancelled with the order's lines
  POST /_sim/orders/{order_id}/refund    {"qty": int, "restock": bool}: order.refunded

options: secret, previous_secret (the connector's names); rate_per_s (50), burst (rate_per_s),
max_batch (100), tolerance_s (300)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import uuid
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .base import Delivery, Order, Simulator, now_ms

DEFAULT_SECRET = "sim-webhook-secret"


class Item(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    quantity: Annotated[int, msgspec.Meta(ge=0)]


class Items(msgspec.Struct, forbid_unknown_fields=True):
    items: list[Item]


class Refund(msgspec.Struct):
    qty: int | None = None
    restock: bool = True


class WebhookSimulator(Simulator):
    """Receives signed pushes; its storefront sends signed order webhooks."""

    platform = "webhook"

    def reset(self) -> None:
        super().reset()
        self.replies: dict[str, tuple[bytes, dict[str, Any]]] = {}  # by Idempotency-Key
        self.cancelled: set[str] = set()
        self.refunded: dict[str, int] = {}  # by order id: units refunded so far
        self.refund_seq = 0

    def opt(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)

    # -- signatures ---------------------------------------------------------------------

    def signature(self, body: bytes) -> str:
        stamp = int(time.time())
        secret = str(self.opt("secret", DEFAULT_SECRET))
        digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        return f"t={stamp},v1={digest.hexdigest()}"

    def signed(self, header: str, body: bytes) -> bool:
        fields = [part.strip().partition("=") for part in header.split(",")]
        stamps = [value for name, _, value in fields if name == "t"]
        offered = [value for name, _, value in fields if name == "v1"]
        if len(stamps) != 1 or not stamps[0].isdigit():
            return False
        if abs(time.time() - int(stamps[0])) > float(self.opt("tolerance_s", 300)):
            return False
        secrets = [self.opt("secret", DEFAULT_SECRET), self.opt("previous_secret", "")]
        message = f"{stamps[0]}.".encode() + body
        expected = [
            hmac.new(str(s).encode(), message, hashlib.sha256).hexdigest() for s in secrets if s
        ]
        return any(hmac.compare_digest(e, o) for e in expected for o in offered)

    # -- storefront ---------------------------------------------------------------------

    def deliveries(self, order: Order) -> list[Delivery]:
        return self.notice(order, "order.created", order.qty)

    def notice(self, order: Order, kind: str, qty: int, **extra: Any) -> list[Delivery]:
        if not self.webhook_url:
            return []
        body = msgspec.json.encode({
            "id": f"dlv_{uuid.uuid4().hex}",
            "type": kind,
            "occurred_at_ms": now_ms(),
            "order": {
                "id": order.order_id,
                "lines": [{"id": order.line_id, "sku": order.sku, "qty": qty}],
            },
            **extra,
        })  # fmt: skip
        headers = {"content-type": "application/json", "stockguard-signature": self.signature(body)}
        return [Delivery(url=self.webhook_url, body=body, headers=headers)]

    def order(self, order_id: str) -> Order | None:
        return next((o for o in self.orders if o.order_id == order_id), None)

    # -- routes -------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("/inventory", self.inventory, methods=["POST"]),
            Route("/_sim/orders/{order_id}/cancel", self.cancel, methods=["POST"]),
            Route("/_sim/orders/{order_id}/refund", self.refund, methods=["POST"]),
        ]

    async def inventory(self, request: Request) -> Response:
        if (response := await self.fault()) is not None:
            return response
        body = await request.body()
        if not self.signed(request.headers.get("stockguard-signature", ""), body):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        rate = float(self.opt("rate_per_s", 50))
        if wait := self.over_limit("push", rate, float(self.opt("burst", rate))):
            headers = {"retry-after": str(max(1, math.ceil(wait)))}
            return JSONResponse({"error": "too many requests"}, status_code=429, headers=headers)
        key = request.headers.get("idempotency-key", "")
        if key in self.replies:
            return self.replay(key, body)
        try:
            items = msgspec.json.decode(body, type=Items).items
        except msgspec.DecodeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if len(items) > int(self.opt("max_batch", 100)):
            return JSONResponse({"error": "too many items"}, status_code=413)
        for item in items:
            self.set_quantity(item.sku, item.quantity)
        reply = {"accepted": len(items)}
        if key:
            self.replies[key] = (hashlib.sha256(body).digest(), reply)
        return JSONResponse(reply)

    def replay(self, key: str, body: bytes) -> Response:
        digest, reply = self.replies[key]
        if digest != hashlib.sha256(body).digest():
            return JSONResponse({"error": "Idempotency-Key reused"}, status_code=422)
        return JSONResponse(reply)

    async def cancel(self, request: Request) -> Response:
        order = self.order(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"error": "no such order"}, status_code=404)
        if order.order_id in self.cancelled:
            return JSONResponse({"error": "already cancelled"}, status_code=409)
        self.cancelled.add(order.order_id)
        for delivery in self.notice(order, "order.cancelled", order.qty):
            self.send(delivery)
        return JSONResponse({"order_id": order.order_id, "status": "cancelled"})

    async def refund(self, request: Request) -> Response:
        order = self.order(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"error": "no such order"}, status_code=404)
        try:
            refund = msgspec.json.decode(await request.body() or b"{}", type=Refund)
        except msgspec.DecodeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        qty = order.qty if refund.qty is None else refund.qty
        if not 0 < qty <= order.qty - self.refunded.get(order.order_id, 0):
            return JSONResponse({"error": "nothing left to refund"}, status_code=409)
        self.refunded[order.order_id] = self.refunded.get(order.order_id, 0) + qty
        self.refund_seq += 1
        refund_id = f"rf_{self.refund_seq}"
        extra = {"refund_id": refund_id, "restock": refund.restock}
        for delivery in self.notice(order, "order.refunded", qty, **extra):
            self.send(delivery)
        return JSONResponse({"order_id": order.order_id, "refund_id": refund_id, "qty": qty})
