"""Flash sales: an inventory-aware admission queue in front of the holds of a sale's SKUs.

Buyers join a sale's queue and poll their ticket. The sale_* scripts admit tickets
first come, first served (or, for joins before the start, in an order drawn at random,
if the sale says so) at the sale's rate, while fewer than max_active admissions are
live. An admitted ticket gets a signed admission token; a hold of the sale's SKUs on
the sale's channel during the sale needs one, spends it, and counts toward the
customer's limit per SKU (held and confirmed units, enforced inside lua/hold.lua).
As soon as no sale SKU has ATS left on the channel, joins and waiting tickets are told
"sold out".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from enum import StrEnum
from typing import Any

import msgspec

from . import keys, validate
from .errors import (
    AdmissionInvalidError,
    AdmissionRequiredError,
    Code,
    StockguardError,
    UnknownSaleError,
    ValidationError,
    error_for,
)
from .ids import customer_key
from .models import BufferOverride, Hold

SOLD_OUT_CHECK_S = 0.2  # how stale a process's view of "sold out" may be
INDEX_RELOAD_S = 1.0  # how soon every process sees a new or changed sale


class Sale(msgspec.Struct, frozen=True):
    """A flash sale, as the operator defines it."""

    name: str
    channel: str
    skus: tuple[str, ...]
    start_ms: int
    end_ms: int
    rate_per_s: float  # buyers admitted per second
    max_active: int  # admitted buyers not yet holding, at most
    token_ttl_ms: int  # how long an admission may wait for its hold
    limit: int  # units per customer per SKU, held and confirmed
    randomize: bool = True  # joins before the start get their places drawn at random
    poll_ms: int = 1000  # how often a waiting ticket should poll
    idle_ms: int = 10_000  # a ticket not polled for this long is dropped at the head
    buffer: int | None = None  # replaces the SKUs' buffer during the sale window


class TicketState(StrEnum):
    WAITING = "waiting"
    ADMITTED = "admitted"
    USED = "used"  # the admission went into a hold
    EXPIRED = "expired"  # admitted, but no hold before the token expired
    SOLD_OUT = "sold_out"
    ENDED = "ended"
    DROPPED = "dropped"  # stopped polling


class Ticket(msgspec.Struct, frozen=True, omit_defaults=True):
    """A place in a sale's queue, and what to do next."""

    sale: str
    ticket: str
    state: TicketState
    poll_after_ms: int = 0  # poll again after this long (waiting only)
    place: int | None = None  # 1 = next; null while places are not yet drawn
    queue_length: int | None = None
    eta_ms: int | None = None
    token: str | None = None  # admitted: send it as the hold's `admission`
    token_expires_at_ms: int | None = None


class SaleStats(msgspec.Struct, frozen=True):
    sale: Sale
    admitted: int  # buyers admitted so far
    waiting: int  # tickets in the queue
    active: int  # admissions not yet spent or expired
    sold_out: bool


class Admission(msgspec.Struct, frozen=True, array_like=True):
    sale: str
    ticket: str
    ck: str  # customer key
    exp: int


_admission = msgspec.json.Decoder(Admission)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sales:
    """The flash sales of one engine: definitions, queues, tokens and sale holds."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.client = engine.client
        self._secret = b""
        self._index: dict[str, Sale] = {}
        self._by_sku: dict[tuple[str, str], Sale] = {}
        self._loaded_at = -INDEX_RELOAD_S
        self._checked: dict[str, float] = {}

    # -- definitions ---------------------------------------------------------------------

    async def define(self, sale: Sale) -> Sale:
        """Create or replace a sale; its SKUs get the buffer override for its window."""
        _validate(sale)
        catalog = await self.engine.catalog()
        if sale.channel not in catalog.channels:
            raise error_for([Code.UNKNOWN_CHANNEL, sale.channel])
        for sku in sale.skus:
            override = None
            if sale.buffer is not None:
                override = BufferOverride(sale.start_ms, sale.end_ms, sale.buffer)
            await self.engine.set_buffer_override(sku, override)  # also: UNKNOWN_SKU
        encoded = msgspec.json.encode(sale)
        await self.client.set(keys.sale_keys(sale.name)[0], encoded)
        await self.client.hset(keys.SALES, sale.name, encoded)
        self._loaded_at = -INDEX_RELOAD_S
        return sale

    async def get(self, name: str) -> Sale:
        raw = await self.client.hget(keys.SALES, validate.name("sale", name))
        if raw is None:
            raise UnknownSaleError(name)
        return msgspec.json.decode(raw, type=Sale)

    async def for_hold(self, channel: str, skus: list[str]) -> Sale | None:
        """The sale running now (by this host's clock) that covers any of these SKUs."""
        now = time.monotonic()
        if now - self._loaded_at > INDEX_RELOAD_S:
            raw = await self.client.hgetall(keys.SALES)
            self._index = {n: msgspec.json.decode(r, type=Sale) for n, r in raw.items()}
            self._by_sku = {(s.channel, sku): s for s in self._index.values() for sku in s.skus}
            self._loaded_at = now
        if not self._by_sku:
            return None
        wall_ms = int(time.time() * 1000)
        for sku in skus:
            sale = self._by_sku.get((channel, sku))
            if sale is not None and sale.start_ms <= wall_ms < sale.end_ms:
                return sale
        return None

    # -- the queue -----------------------------------------------------------------------

    async def join(self, name: str, customer: str) -> Ticket:
        validate.text("customer", customer, 200)
        if not customer:
            raise ValidationError("customer", "must not be empty")
        sale = await self.get(name)
        await self._check_sold_out(sale)
        args = [secrets.token_hex(12), customer_key(customer), secrets.randbelow(2**41)]
        return await self._ticket(sale, "sale_join", args)

    async def poll(self, name: str, ticket: str, customer: str) -> Ticket:
        sale = await self.get(name)
        await self._check_sold_out(sale)
        return await self._ticket(sale, "sale_poll", [ticket, customer_key(customer)])

    async def _ticket(self, sale: Sale, script: str, args: list[Any]) -> Ticket:
        await self._key()
        reply = await self.scripts[script](keys.sale_keys(sale.name), args)
        if reply[0] == Code.UNKNOWN_SALE:
            raise UnknownSaleError(sale.name)
        if reply[0] != Code.OK:
            raise error_for(reply)
        _, ticket_id, state, a, b = reply
        state = TicketState(state)
        if state is TicketState.WAITING:
            place = a if a > 0 else None
            eta = int((a if a > 0 else b) * 1000 / sale.rate_per_s)
            return Ticket(sale.name, ticket_id, state, sale.poll_ms, place, b, eta)
        if state is TicketState.ADMITTED:
            ck = args[1]
            token = self._sign(Admission(sale.name, ticket_id, ck, a))
            return Ticket(sale.name, ticket_id, state, token=token, token_expires_at_ms=a)
        return Ticket(sale.name, ticket_id, state)

    @property
    def scripts(self) -> Any:
        return self.engine.scripts

    async def _check_sold_out(self, sale: Sale, *, now: bool = False) -> list[Any] | None:
        """Marks the sale sold out (or not) from its SKUs' ATS, at most every 200 ms
        unless `now`; returns sale_mark's reply when it checked."""
        at = time.monotonic()
        if not now and at - self._checked.get(sale.name, -1.0) < SOLD_OUT_CHECK_S:
            return None
        self._checked[sale.name] = at
        ats = await self.engine.ats(sale.channel, list(sale.skus))
        flag = "0" if any(n > 0 for n in ats.values()) else "1"
        return list(await self.scripts["sale_mark"](keys.sale_keys(sale.name), [flag]))

    async def stats(self, name: str) -> SaleStats:
        """How the sale's queue stands now (checking the sold-out mark first)."""
        sale = await self.get(name)
        reply = await self._check_sold_out(sale, now=True)
        assert reply is not None
        _, admitted, waiting, active, sold_out = reply
        return SaleStats(sale, admitted, waiting, active, bool(sold_out))

    # -- admission tokens and sale holds ---------------------------------------------------

    async def _key(self) -> bytes:
        if not self._secret:
            await self.client.set(keys.SECRET, secrets.token_hex(32), nx=True)
            self._secret = bytes.fromhex(await self.client.get(keys.SECRET))
        return self._secret

    def _sign(self, admission: Admission) -> str:
        payload = msgspec.json.encode(admission)
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    async def verify(self, token: str) -> Admission:
        secret = await self._key()
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except ValueError:
            raise AdmissionInvalidError("malformed") from None
        if not hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).digest(), mac):
            raise AdmissionInvalidError("bad signature")
        try:
            return _admission.decode(payload)
        except msgspec.DecodeError:
            raise AdmissionInvalidError("malformed") from None

    async def hold(
        self,
        sale: Sale,
        token: str | None,
        channel: str,
        lines: list[tuple[str, int]],
        *,
        ttl_ms: int,
        customer: str | None,
        hold_id: str | None = None,
    ) -> Hold:
        """A hold during a sale: spends the admission, then holds within the customer's limit."""
        if not token:
            sku = next((sku for sku, _ in lines if sku in sale.skus), lines[0][0])
            raise AdmissionRequiredError(sale.name, sku)
        admission = await self.verify(token)
        if admission.sale != sale.name:
            raise AdmissionInvalidError(f"the token is for sale {admission.sale!r}")
        if customer is None or customer_key(customer) != admission.ck:
            raise AdmissionInvalidError("the token is for another customer")
        await self._use(admission, "use")
        try:
            hold: Hold = await self.engine.hold(
                channel,
                lines,
                ttl_ms=ttl_ms,
                customer=customer,
                hold_id=hold_id,
                sale=(sale.name, sale.limit),
            )
        except StockguardError:
            await self._use(admission, "undo")  # refused: the buyer may try again
            await self._check_sold_out(sale, now=True)
            raise
        # This hold may have taken the last units: say so now, not at the next check.
        await self._check_sold_out(sale, now=True)
        return hold

    async def _use(self, admission: Admission, action: str) -> None:
        args = [admission.ticket, admission.ck, admission.exp, action]
        reply = await self.scripts["sale_use"](keys.sale_keys(admission.sale), args)
        if reply[0] == Code.UNKNOWN_SALE:
            raise AdmissionInvalidError("no such sale")
        if reply[0] != Code.OK:
            raise error_for(reply)


def _validate(sale: Sale) -> None:
    validate.name("sale", sale.name)
    validate.name("channel", sale.channel)
    if not 0 < len(sale.skus) <= validate.MAX_LINES:
        raise ValidationError("skus", f"must list 1 to {validate.MAX_LINES} SKUs")
    for sku in sale.skus:
        validate.name("skus", sku)
    validate.integer("start_ms", sale.start_ms, 0, validate.MAX_TIME_MS)
    validate.integer("end_ms", sale.end_ms, sale.start_ms + 1, validate.MAX_TIME_MS)
    if not 0 < sale.rate_per_s <= 1_000_000:
        raise ValidationError("rate_per_s", "must be above 0 and at most 1,000,000")
    validate.integer("max_active", sale.max_active, 1, validate.MAX_QTY)
    validate.integer("token_ttl_ms", sale.token_ttl_ms, 1000, validate.MAX_TTL_MS)
    validate.integer("limit", sale.limit, 1, validate.MAX_QTY)
    validate.integer("poll_ms", sale.poll_ms, 50, 60_000)
    validate.integer("idle_ms", sale.idle_ms, sale.poll_ms, validate.MAX_TTL_MS)
    if sale.buffer is not None:
        validate.integer("buffer", sale.buffer, 0, validate.MAX_QTY)
