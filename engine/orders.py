"""Channel orders: sales a platform already took, committed without refusal (lua/order.lua).

Each order line is its own operation, keyed by (channel, order, line), in the partition of
its SKU: a platform never needs an order to be all-or-nothing, only each line once.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from . import keys, validate
from .errors import ValidationError, error_for
from .ids import fingerprint
from .models import ChannelSale, HoldLine

ORDER_RETENTION_MS = 90 * 24 * 3600 * 1000  # a cancel this late still finds the order
_SAFE = re.compile(r"[A-Za-z0-9._+-]{1,40}")


class _Record(msgspec.Struct):
    id: str
    ch: str
    st: str
    lines: list[tuple[str, str, int]] | dict[str, int]  # cjson writes no lines as {}
    ref: str = ""
    short: int = 0
    unfilled: int = 0


_decode = msgspec.json.Decoder(_Record).decode


def _part(value: str) -> str:
    """A platform id as a record-id segment: itself if short and plain, else a digest."""
    if _SAFE.fullmatch(value):
        return value
    return "h" + hashlib.sha256(value.encode()).hexdigest()[:16]


def record_id(channel: str, order_id: str, line_id: str) -> str:
    return f"order:{_part(channel)}:{_part(order_id)}:{_part(line_id)}"


def _sale(raw: str, order_id: str) -> ChannelSale:
    rec = _decode(raw)
    return ChannelSale(
        id=rec.id,
        channel=rec.ch,
        order_id=order_id,
        state=rec.st,
        lines=tuple(HoldLine(*line) for line in rec.lines) if isinstance(rec.lines, list) else (),
        shortfall=rec.short,
        unfilled=rec.unfilled,
    )


class OrderOps:
    """record_order and cancel_order, mixed into the Engine."""

    client: Any
    settings: Any
    _batcher: Any

    async def _order(self, action: str, channel: str, order_id: str, line_id: str, sku: str,
                     qty: int, actor: str) -> ChannelSale:  # fmt: skip
        validate.name("channel", channel)
        validate.name("sku", sku)
        validate.text("order_id", order_id, 200)
        validate.text("line_id", line_id, 200)
        validate.text("actor", actor)
        if not order_id or not line_id:
            raise ValidationError("order_id" if not order_id else "line_id", "is empty")
        p = keys.partition_of(sku)
        rid = record_id(channel, order_id, line_id)
        args = (action, rid, channel, sku, qty, order_id, actor, str(p))
        op_id = f"{rid}:{action}"
        reply = await self._batcher.submit(
            "order",
            p,
            (op_id, fingerprint("order", *args), *args),
            op_key=keys.op(p, op_id),
            head=(
                self.settings.idempotency_ttl_ms,
                ORDER_RETENTION_MS - self.settings.finished_retention_ms,
            ),
        )
        if reply[0] != 0:
            raise error_for(reply, op_id)
        return _sale(reply[1], order_id)

    async def record_order(
        self, channel: str, order_id: str, line_id: str, sku: str, qty: int, *, actor: str = ""
    ) -> ChannelSale:
        """Commit an order line a channel already sold; never refused for lack of stock.

        Units beyond the channel's ATS are a channel oversell (ChannelSale.shortfall, and an
        'oversell' event in the outbox). Recording the same line again returns the first
        outcome.
        """
        validate.qty("qty", qty)
        return await self._order("sale", channel, order_id, line_id, sku, qty, actor)

    async def cancel_order(
        self, channel: str, order_id: str, line_id: str, sku: str, *, actor: str = ""
    ) -> ChannelSale:
        """Return a recorded order line's committed units to sale (and to the channel's
        allocation). Cancelling twice is a no-op; an unknown line is HoldNotFoundError."""
        return await self._order("cancel", channel, order_id, line_id, sku, 0, actor)
