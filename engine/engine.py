"""The Engine: every verb of the stock authority, over Redis, Valkey or Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from . import keys, validate
from .errors import (
    Code,
    HoldNotActiveError,
    HoldNotFoundError,
    ShortfallError,
    ValidationError,
    error_for,
)
from .ids import customer_key, fingerprint, new_id
from .models import (
    Hold,
    HoldLine,
    HoldState,
    Record,
)
from .orders import OrderOps
from .stock import StockOps, _check

Lines = Mapping[str, int] | Iterable[tuple[str, int]]

_record = msgspec.json.Decoder(Record)
_STATES = {state.value: state for state in HoldState}
CONFIRM_GRACE_MS = 30_000  # a multi-part confirm keeps every part alive this long


def _is_confirmed(reply: list[Any]) -> bool:
    return bool(reply[0] == Code.HOLD_NOT_ACTIVE and reply[2] == "confirmed")


def _shortfall(reply: list[Any]) -> ShortfallError:
    error = error_for(reply)
    assert isinstance(error, ShortfallError)
    return error


def _hold(records: list[Record]) -> Hold:
    """One Hold from its parts' records; the home part's record comes first."""
    first = records[0]
    lines = tuple(
        HoldLine(sku, location, qty)
        for record in records
        if isinstance(record.lines, list)
        for sku, location, qty in record.lines
    )
    return Hold(
        id=first.id,
        channel=first.ch,
        state=_STATES[first.st],
        expires_at_ms=first.exp,
        lines=lines,
        customer=first.cust,
        reference=first.ref,
    )


def _parts(csv: str, home: int) -> list[int]:
    others = [int(p) for p in csv.split(",") if int(p) != home]
    return [home, *others]


class Engine(StockOps, OrderOps):
    """Holds and moves over one Redis-compatible client; safe for many concurrent callers."""

    # -- holds ---------------------------------------------------------------------------

    async def hold(
        self,
        channel: str,
        lines: Lines,
        *,
        ttl_ms: int,
        customer: str | None = None,
        hold_id: str | None = None,
        sale: tuple[str, int] | None = None,
    ) -> Hold:
        """Hold every line for the channel until ttl_ms from now, or hold nothing.

        With sale=(name, limit), the hold counts toward the customer's limit of units per
        SKU in that sale (held and confirmed), and is refused past it.
        """
        validate.name("channel", channel)
        validate.integer("ttl_ms", ttl_ms, 1, validate.MAX_TTL_MS)
        if customer is not None:
            validate.text("customer", customer, 200)
        extra: tuple[Any, ...] = ()
        if sale is not None:
            if not customer:
                raise ValidationError("customer", "a flash-sale hold needs the customer")
            validate.name("sale", sale[0])
            validate.integer("limit", sale[1], 1, validate.MAX_QTY)
            extra = (*sale, customer_key(customer))
        wanted = _merge(lines)
        by_part: dict[int, list[tuple[str, int]]] = {}
        for sku, qty in wanted.items():
            by_part.setdefault(keys.partition_of(sku), []).append((sku, qty))
        if hold_id is None:
            home = next(iter(by_part))
            hold_id = new_id(home)  # homed with its first SKU: one script call if it is alone
        else:
            home = keys.partition_of(validate.op_id("hold_id", hold_id))
        fp = fingerprint(channel, customer, ttl_ms, sorted(wanted.items()), *extra)
        head = (hold_id, fp, channel, customer or "", ttl_ms)
        if len(by_part) == 1 and home in by_part:  # one script call: the common case
            args = (*head, str(home), by_part[home], *extra)
            reply = await self._batcher.submit("hold", home, args)
            return _hold([_record.decode(_check(reply, hold_id)[1])])
        parts = [home, *sorted(p for p in by_part if p != home)]  # as get_hold reads them
        csv = ",".join(map(str, sorted(parts)))
        futures = [
            self._batcher.submit("hold", p, (*head, csv, by_part.get(p, []), *extra)) for p in parts
        ]
        # Shielded: a cancelled caller must not stop the undo of parts already held.
        return await asyncio.shield(self._hold_parts(hold_id, fp, parts, futures))

    async def _hold_parts(
        self, hold_id: str, fp: str, parts: list[int], futures: list[asyncio.Future[Any]]
    ) -> Hold:
        replies = await asyncio.gather(*futures, return_exceptions=True)
        records = [_record.decode(r[1]) for r in replies if isinstance(r, list) and r[0] == Code.OK]
        if len(records) == len(parts) and all(r.st != "rejected" for r in records):
            return _hold(records)
        # Undo only what this payload placed: a part refused as a conflict belongs to
        # another hold that has the same id.
        await self._each_part("release", hold_id, parts, "rejected", fp)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
            if reply[0] != Code.OK:
                raise error_for(reply, hold_id)
        raise HoldNotActiveError(hold_id, "rejected")

    async def _each_part(self, name: str, hold_id: str, parts: list[int], *args: Any) -> list[Any]:
        futures = [self._batcher.submit(name, p, (hold_id, *args, "part")) for p in parts]
        return list(await asyncio.gather(*futures))

    async def _on_hold(self, name: str, hold_id: str, *args: Any) -> tuple[list[Any], list[int]]:
        """Run a hold script on the home part; returns its reply and the hold's parts."""
        validate.op_id("hold_id", hold_id)
        home = keys.partition_of(hold_id)
        reply = await self._batcher.submit(name, home, (hold_id, *args, "hold"))
        if reply[0] == Code.MULTI_PART:
            return reply, _parts(reply[1], home)
        return _check(reply, hold_id), [home]

    async def extend(self, hold_id: str, ttl_ms: int, *, op_id: str | None = None) -> Hold:
        """Keep a hold until at least ttl_ms from now; an expired one only if stock allows."""
        validate.integer("ttl_ms", ttl_ms, 1, validate.MAX_TTL_MS)
        op_id = validate.op_id("op_id", op_id) if op_id is not None else new_id()
        reply, parts = await self._on_hold("extend", hold_id, op_id, ttl_ms)
        if len(parts) > 1:
            replies = await asyncio.shield(self._extend_parts(hold_id, parts, op_id, ttl_ms))
            return _hold([_record.decode(r[1]) for r in replies])
        return _hold([_record.decode(reply[1])])

    async def _extend_parts(
        self, hold_id: str, parts: list[int], op_id: str, ttl_ms: int, *, confirming: bool = False
    ) -> list[Any]:
        replies = await self._each_part("extend", hold_id, parts, op_id, ttl_ms)
        missing: dict[str, int] = {}
        failure: list[Any] | None = None
        for reply in replies:
            if reply[0] == Code.SHORTFALL:
                missing.update(_shortfall(reply).missing)
            elif reply[0] != Code.OK and not (confirming and _is_confirmed(reply)):
                failure = failure or reply
        if failure is None and not missing:
            return replies
        # Parts share one expiry and one fate: the parts this call revived must not stay
        # held while another part could not go on. They end as that part did.
        if failure is None:
            ending = "expired"
        else:
            ending = "rejected" if failure[0] == Code.HOLD_NOT_FOUND else "released"
        await self._each_part("release", hold_id, parts, ending, "")
        raise error_for(failure, hold_id) if failure else ShortfallError(hold_id, missing)

    async def confirm(self, hold_id: str, *, reference: str | None = None, actor: str = "") -> Hold:
        """Turn a hold into committed units; an expired hold only if stock still allows."""
        if reference is not None:
            validate.text("reference", reference, 200)
        validate.text("actor", actor, 200)
        reply, parts = await self._on_hold("confirm", hold_id, reference or "", actor)
        if len(parts) == 1:
            return _hold([_record.decode(reply[1])])
        return await asyncio.shield(self._confirm_parts(hold_id, parts, reference or "", actor))

    async def _confirm_parts(
        self, hold_id: str, parts: list[int], reference: str, actor: str
    ) -> Hold:
        # Phase 1 keeps every part alive (reviving expired ones if stock allows), so that
        # phase 2 cannot fail half-way for lack of stock. A retry finds parts confirmed.
        await self._extend_parts(hold_id, parts, new_id(), CONFIRM_GRACE_MS, confirming=True)
        replies = await self._each_part("confirm", hold_id, parts, reference, actor)
        return _hold([_record.decode(_check(r, hold_id)[1]) for r in replies])

    async def release(self, hold_id: str) -> Hold:
        """Give a hold's units back at once; releasing a finished hold changes nothing."""
        reply, parts = await self._on_hold("release", hold_id, "released", "")
        if len(parts) > 1:
            replies = await asyncio.shield(
                self._each_part("release", hold_id, parts, "released", "")
            )
            return _hold([_record.decode(_check(r, hold_id)[1]) for r in replies])
        return _hold([_record.decode(reply[1])])

    async def get_hold(self, hold_id: str) -> Hold:
        """The hold as it stands now; past its expiry (by the server's clock) it is expired."""
        validate.op_id("hold_id", hold_id)
        home = keys.partition_of(hold_id)
        raw = await self.client.hget(keys.holds(home), hold_id)
        record = _record.decode(raw) if raw else None
        if record is None or record.st == "rejected":
            raise HoldNotFoundError(hold_id)
        records = [record]
        for p in _parts(record.parts, home)[1:]:
            records.append(_record.decode(await self.client.hget(keys.holds(p), hold_id)))
        hold = _hold(records)
        if hold.state is HoldState.HELD:
            seconds, micros = await self.client.time()
            if hold.expires_at_ms <= seconds * 1000 + micros // 1000:
                return msgspec.structs.replace(hold, state=HoldState.EXPIRED)
        return hold


def _merge(lines: Lines) -> dict[str, int]:
    """Validated lines, one per SKU: repeated SKUs add up."""
    if type(lines) is dict or isinstance(lines, Mapping):  # the common case: distinct SKUs
        for sku, qty in lines.items():
            validate.name("sku", sku)
            validate.qty("qty", qty)
        if not 0 < len(lines) <= validate.MAX_LINES:
            raise ValidationError("lines", f"must hold 1 to {validate.MAX_LINES} SKUs")
        return dict(lines)
    try:
        pairs = [(sku, qty) for sku, qty in lines]
    except (TypeError, ValueError):
        raise ValidationError("lines", "must map SKUs to quantities") from None
    wanted: dict[str, int] = {}
    for sku, qty in pairs:
        validate.name("sku", sku)
        wanted[sku] = wanted.get(sku, 0) + validate.qty("qty", qty)
    if not wanted or len(wanted) > validate.MAX_LINES:
        raise ValidationError("lines", f"must hold 1 to {validate.MAX_LINES} SKUs")
    if len(wanted) < len(pairs):  # repeated SKUs: their sum must be a valid qty too
        validate.qty("qty", max(wanted.values()))
    return wanted
