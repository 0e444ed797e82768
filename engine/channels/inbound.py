"""Inbound orders: accept a delivery fast, then apply it from the inbox, once.

A webhook request only verifies the signature and calls Inbox.accept, which in one
script remembers the platform's delivery id and appends the delivery to the inbox
stream; a duplicate delivery adds nothing. The Processor reads the inbox (a consumer
group, so an entry is acknowledged only once applied), fetches what a delivery only
points to, and turns each order event into engine calls:

- created   -> Engine.record_order per line: a committed sale, never refused;
- cancelled -> Engine.cancel_order per line: the units return to sale;
- refunded  -> Engine.return_units per restocked line, once per refund id.

Each call is idempotent by (channel, order, line), so a replayed or re-fetched event
changes nothing. An order's last applied state and time are kept (`orders:<channel>`):
an event older than what was applied is stale and dropped, and an order cancelled
before its creation arrived is never sold.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections import Counter
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from .. import keys
from ..engine import Engine
from ..errors import HoldNotFoundError, StockguardError
from .base import BadDelivery, Connector, Delivery, EventKind, OrderEvent, OrderLine

log = logging.getLogger("stockguard.inbound")

_TAG = f"{keys.PREFIX}:{{inbox}}"
INBOX = f"{_TAG}:stream"
DEAD = f"{_TAG}:dead"  # deliveries that can never be applied, with the reason
GROUP = "stockguard-inbound"
DEDUPE_MS = 72 * 3600 * 1000  # longer than any platform's retries (Etsy's: about 32 h)


def seen_key(channel: str, delivery_id: str) -> str:
    digest = hashlib.sha256(f"{channel}\0{delivery_id}".encode()).hexdigest()[:32]
    return f"{_TAG}:seen:{digest}"


def orders_key(channel: str) -> str:
    return f"{_TAG}:orders:{channel}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Inbox:
    """The fast half: called from the webhook endpoint and the queue readers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def accept(self, channel: str, delivery: Delivery) -> bool:
        """Appends the delivery unless its id was seen; False for a duplicate."""
        added = await self.engine.scripts["inbox_accept"](
            [INBOX, seen_key(channel, delivery.delivery_id)],
            [DEDUPE_MS, channel, msgspec.json.encode(delivery), now_ms()],
        )
        return bool(added)


class OrderState(msgspec.Struct):
    """What has been applied of one platform order."""

    state: str  # "created" or "cancelled"
    at_ms: int  # the platform time of the last event applied
    lines: dict[str, tuple[str, int, str]] = {}  # line id -> (sku, qty, location)
    refunds: list[str] = []


_state = msgspec.json.Decoder(OrderState)
_delivery = msgspec.json.Decoder(Delivery)


def _order_key(fields: dict[str, str]) -> str:
    """Which order an inbox entry is about, as far as it says (one key per order)."""
    try:
        delivery = _delivery.decode(fields.get("delivery", ""))
    except msgspec.DecodeError:
        return ""  # dead-lettered when applied
    first = delivery.events[0].order_id if delivery.events else ",".join(delivery.fetch)
    return f"{fields.get('channel', '')}\0{first}"


class Processor:
    """Applies inbox deliveries to the engine; safe to restart at any point."""

    def __init__(
        self,
        engine: Engine,
        connectors: dict[str, Connector],
        *,
        consumer: str | None = None,
        batch: int = 100,
        concurrency: int = 16,
    ) -> None:
        self.engine = engine
        self.client = engine.client
        self.connectors = connectors
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.stats: Counter[str] = Counter()
        self._backlog_first = True  # re-read this consumer's unacknowledged entries first
        self._slots = asyncio.Semaphore(concurrency)

    async def setup(self) -> None:
        try:
            await self.client.xgroup_create(INBOX, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def step(self, block_ms: int = 200) -> int:
        """Applies the next entries; returns how many were acknowledged.

        Deliveries about different orders are applied concurrently (most wait on a platform
        fetch); those about one order, in inbox order, one at a time."""
        start = "0" if self._backlog_first else ">"
        reply = await self.client.xreadgroup(
            GROUP, self.consumer, {INBOX: start}, count=self.batch,
            block=None if self._backlog_first else block_ms,
        )  # fmt: skip
        self._backlog_first = False
        by_order: dict[str, list[tuple[str, dict[str, str]]]] = {}
        for entry_id, fields in reply[0][1] if reply else []:
            by_order.setdefault(_order_key(fields), []).append((entry_id, fields))
        done = await asyncio.gather(*(self._in_order(group) for group in by_order.values()))
        return sum(done)

    async def _in_order(self, entries: list[tuple[str, dict[str, str]]]) -> int:
        """Applies one order's entries in sequence; stops at the first that must be retried
        (it stays pending and is read again first)."""
        done = 0
        for entry_id, fields in entries:
            async with self._slots:
                try:
                    await self._entry(fields)
                except (BadDelivery, StockguardError, msgspec.DecodeError) as error:
                    await self._dead(entry_id, fields, error)
                except Exception:
                    log.exception("inbound: could not apply a delivery; it stays for a retry")
                    self._backlog_first = True
                    return done
            await self.client.xack(INBOX, GROUP, entry_id)
            done += 1
        return done

    async def run(self, stop: asyncio.Event, block_ms: int = 200) -> None:
        await self.setup()
        while not stop.is_set():
            try:
                await self.step(block_ms)
                if self._backlog_first:  # a delivery failed: give its cause a moment
                    await asyncio.sleep(1.0)
            except Exception:
                log.exception("inbound: inbox read failed; trying again in 1 s")
                await asyncio.sleep(1.0)

    async def _dead(self, entry_id: str, fields: dict[str, str], error: Exception) -> None:
        log.error("inbound: delivery dead-lettered: %s", error)
        self.stats["dead"] += 1
        await self.client.xadd(DEAD, {**fields, "entry": entry_id, "error": str(error)[:500]})

    async def _entry(self, fields: dict[str, str]) -> None:
        channel = fields["channel"]
        connector = self.connectors.get(channel)
        delivery = _delivery.decode(fields["delivery"])
        events = list(delivery.events)
        for reference in delivery.fetch:
            if connector is None:
                raise BadDelivery(f"channel {channel!r} has no connector to fetch {reference!r}")
            events += await connector.fetch(reference)
        for event in events:
            await self.apply(channel, event)

    # -- one order event -----------------------------------------------------------------

    async def apply(self, channel: str, event: OrderEvent) -> str:
        """Applies one event; returns what happened: applied, stale or duplicate."""
        raw = await self.client.hget(orders_key(channel), event.order_id)
        state = _state.decode(raw) if raw else None
        if state is not None and event.occurred_ms < state.at_ms:
            outcome = "stale"
        elif event.kind is EventKind.CREATED:
            outcome = await self._created(channel, event, state)
        elif event.kind is EventKind.CANCELLED:
            outcome = await self._cancelled(channel, event, state)
        else:
            outcome = await self._refunded(channel, event, state)
        self.stats[f"{event.kind}.{outcome}"] += 1
        return outcome

    async def _save(self, channel: str, order_id: str, state: OrderState) -> None:
        await self.client.hset(orders_key(channel), order_id, msgspec.json.encode(state))

    async def _created(self, channel: str, event: OrderEvent, state: OrderState | None) -> str:
        if state is not None and state.state == "cancelled":
            return "stale"  # cancelled before its creation reached us: never sold
        state = state or OrderState("created", event.occurred_ms)
        new = [line for line in event.lines if line.line_id not in state.lines]
        for line in new:
            location = await self._record(channel, event.order_id, line)
            if location is not None:
                state.lines[line.line_id] = (line.sku, line.qty, location)
        state.at_ms = max(state.at_ms, event.occurred_ms)
        await self._save(channel, event.order_id, state)
        return "applied" if new else "duplicate"

    async def _record(self, channel: str, order_id: str, line: OrderLine) -> str | None:
        try:
            sale = await self.engine.record_order(
                channel, order_id, line.line_id, line.sku, line.qty, actor=channel
            )
        except StockguardError as error:  # an unknown SKU: the platform sold what we don't track
            log.error("inbound: order %s line %s not recorded: %s", order_id, line.line_id, error)
            self.stats["lines_refused"] += 1
            return None
        if sale.shortfall:
            self.stats["oversells"] += 1
            log.warning(
                "channel oversell: %s sold %d of %s beyond its ATS (%d unfilled), order %s",
                channel, sale.shortfall, line.sku, sale.unfilled, order_id,
            )  # fmt: skip
        return sale.lines[0].location if sale.lines else ""

    async def _cancelled(self, channel: str, event: OrderEvent, state: OrderState | None) -> str:
        if state is not None and state.state == "cancelled":
            return "duplicate"
        state = state or OrderState("cancelled", event.occurred_ms)
        wanted = {line.line_id: line.sku for line in event.lines} or {
            line_id: sku for line_id, (sku, _, _) in state.lines.items()
        }
        for line_id, sku in wanted.items():
            # A line never recorded (or long forgotten) has nothing to give back.
            with contextlib.suppress(HoldNotFoundError):
                await self.engine.cancel_order(channel, event.order_id, line_id, sku, actor=channel)
        state.state, state.at_ms = "cancelled", max(state.at_ms, event.occurred_ms)
        await self._save(channel, event.order_id, state)
        return "applied"

    async def _refunded(self, channel: str, event: OrderEvent, state: OrderState | None) -> str:
        state = state or OrderState("created", event.occurred_ms)
        if event.refund_id in state.refunds:
            return "duplicate"
        if event.restock:
            for line in event.lines:
                await self._restock(channel, event, line, state)
        state.refunds.append(event.refund_id)
        await self._save(channel, event.order_id, state)
        return "applied"

    async def _restock(
        self, channel: str, event: OrderEvent, line: OrderLine, state: OrderState
    ) -> None:
        sold = state.lines.get(line.line_id)
        location = sold[2] if sold and sold[2] else await self._first_location(channel)
        key = f"{channel}\0{event.order_id}\0{event.refund_id}\0{line.line_id}"
        try:
            await self.engine.return_units(
                line.sku, location, line.qty, reason="refund", actor=channel,
                reference=event.order_id[:500],
                op_id="refund." + hashlib.sha256(key.encode()).hexdigest()[:40],
            )  # fmt: skip
        except StockguardError as error:
            log.error("inbound: refund %s line %s not restocked: %s", event.refund_id,
                      line.line_id, error)  # fmt: skip
            self.stats["lines_refused"] += 1

    async def _first_location(self, channel: str) -> str:
        catalog = await self.engine.catalog()
        found = catalog.channels.get(channel)
        return found.locations[0] if found else ""


async def dead_letters(client: Any) -> int:
    """Deliveries that can never be applied, kept in DEAD with the reason (XRANGE shows them)."""
    return int(await client.xlen(DEAD))


async def lag(client: Any) -> tuple[int, int]:
    """(entries not yet applied, age of the oldest in ms) of the inbox."""
    try:
        groups = await client.xinfo_groups(INBOX)
    except ResponseError:
        return 0, 0
    group = next((g for g in groups if g["name"] == GROUP), None)
    if group is None:
        return await client.xlen(INBOX), 0
    pending = await client.xpending(INBOX, GROUP)
    waiting = int(pending["pending"]) + int(group.get("lag") or 0)
    oldest = pending["min"] if pending["pending"] else None
    age = now_ms() - int(oldest.split("-")[0]) if oldest else 0
    return waiting, age
