"""Moves, catalog and reads: the verbs of the Engine that are not about holds."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from . import keys, validate
from .batch import Batcher
from .config import Settings
from .errors import (
    Code,
    IdempotencyConflictError,
    UnknownChannelError,
    ValidationError,
    error_for,
)
from .ids import fingerprint, new_id
from .models import (
    BufferOverride,
    Catalog,
    Channel,
    LocationStock,
    Policy,
    PolicyKind,
    SkuSettings,
    StockLevel,
)
from .scripts import Scripts

POOL = Policy()
_catalog = msgspec.json.Decoder(Catalog)
_settings = msgspec.json.Decoder(SkuSettings)
_encode = msgspec.json.encode


def _check(reply: list[Any], op_id: str = "") -> list[Any]:
    if reply[0] != Code.OK:
        raise error_for(reply, op_id)
    return reply


def _location(location: str, reply: list[Any]) -> LocationStock:
    _, on_hand, committed, held = reply
    return LocationStock(location, on_hand, committed, held, max(0, on_hand - committed - held))


def _policy(policy: Policy) -> Policy:
    if policy.kind not in PolicyKind.__members__.values():
        kinds = ", ".join(k.value for k in PolicyKind)
        raise ValidationError("policy.kind", f"must be one of {kinds}, got {policy.kind!r}")
    kind = PolicyKind(policy.kind)
    high = 100 if kind is PolicyKind.CAP_PCT else validate.MAX_QTY
    validate.integer("policy.qty", policy.qty, 0, high)
    validate.integer("policy.buffer", policy.buffer, 0, validate.MAX_QTY)
    if kind in (PolicyKind.CAP, PolicyKind.FENCE):
        return msgspec.structs.replace(policy, since_ms=time.time_ns() // 1_000_000)
    return msgspec.structs.replace(policy, since_ms=0)


class StockOps:
    """Moves that change on_hand or committed, the catalog, and stock reads."""

    def __init__(self, client: Any, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or Settings()
        self.scripts = Scripts(client)
        self._batcher = Batcher(client, self.scripts, self.settings.max_batch)

    # -- moves ---------------------------------------------------------------------------

    async def _move(
        self,
        name: str,
        sku: str,
        location: str,
        qty: int,
        extra: tuple[str, ...] = (),
        *,
        reason: str,
        actor: str,
        reference: str,
        op_id: str | None,
    ) -> LocationStock:
        validate.name("sku", sku)
        validate.name("location", location)
        for field, value in (("reason", reason), ("actor", actor), ("reference", reference)):
            validate.text(field, value)
        p = keys.partition_of(sku)
        args = (sku, location, qty, reason, actor, reference, *extra)
        fp = fingerprint(name, *args)
        if op_id is None:
            op_id = new_id(p)  # homed where it runs: nothing to claim
        elif keys.partition_of(validate.op_id("op_id", op_id)) != p:
            await self._claim(op_id, fp)
        reply = await self._batcher.submit(
            name,
            p,
            (op_id, fp, *args),
            op_key=keys.op(p, op_id),
            head=(self.settings.idempotency_ttl_ms,),
        )
        return _location(extra[-1] if name == "transfer" else location, _check(reply, op_id))

    async def _claim(self, op_id: str, fp: str) -> None:
        """Registers an op id in its own partition when it runs in another one.

        The record that replays an operation lives in the partition it changes; the claim
        makes the same id used for a SKU of another partition a conflict too.
        """
        claim = f"claim:{fp}"
        key = keys.op(keys.partition_of(op_id), op_id)
        ttl_ms = self.settings.idempotency_ttl_ms
        first = await self.client.set(key, claim, nx=True, get=True, px=ttl_ms)
        if first is not None and first != claim:
            raise IdempotencyConflictError(op_id)

    async def receive(
        self,
        sku: str,
        location: str,
        qty: int,
        *,
        reason: str = "",
        actor: str = "",
        reference: str = "",
        op_id: str | None = None,
    ) -> LocationStock:
        """Add units to on_hand at a location."""
        validate.qty("qty", qty)
        return await self._move(
            "receive",
            sku,
            location,
            qty,
            reason=reason,
            actor=actor,
            reference=reference,
            op_id=op_id,
        )

    async def adjust(
        self,
        sku: str,
        location: str,
        delta: int,
        *,
        reason: str,
        actor: str = "",
        reference: str = "",
        op_id: str | None = None,
    ) -> LocationStock:
        """Change on_hand by a signed delta; never below committed + held."""
        validate.integer("delta", delta, -validate.MAX_QTY, validate.MAX_QTY)
        if delta == 0 or not reason:
            raise ValidationError("delta" if delta == 0 else "reason", "must not be empty or zero")
        return await self._move(
            "adjust",
            sku,
            location,
            delta,
            reason=reason,
            actor=actor,
            reference=reference,
            op_id=op_id,
        )

    async def count(
        self,
        sku: str,
        location: str,
        counted: int,
        *,
        reason: str = "cycle count",
        actor: str = "",
        reference: str = "",
        op_id: str | None = None,
    ) -> LocationStock:
        """Set on_hand to the counted units, keeping live holds and committed units."""
        validate.integer("counted", counted, 0, validate.MAX_QTY)
        return await self._move(
            "count",
            sku,
            location,
            counted,
            reason=reason,
            actor=actor,
            reference=reference,
            op_id=op_id,
        )

    async def ship(
        self,
        sku: str,
        location: str,
        qty: int,
        *,
        reference: str = "",
        actor: str = "",
        reason: str = "",
        op_id: str | None = None,
    ) -> LocationStock:
        """Ship committed units: on_hand and committed go down together."""
        validate.qty("qty", qty)
        return await self._move(
            "ship",
            sku,
            location,
            qty,
            reason=reason,
            actor=actor,
            reference=reference,
            op_id=op_id,
        )

    async def cancel(
        self,
        sku: str,
        location: str,
        qty: int,
        *,
        reference: str = "",
        actor: str = "",
        reason: str = "",
        op_id: str | None = None,
    ) -> LocationStock:
        """Cancel committed units before shipment; they return to sale."""
        validate.qty("qty", qty)
        return await self._move(
            "cancel",
            sku,
            location,
            qty,
            reason=reason,
            actor=actor,
            reference=reference,
            op_id=op_id,
        )

    async def return_units(
        self,
        sku: str,
        location: str,
        qty: int,
        *,
        damaged: bool = False,
        reason: str = "",
        actor: str = "",
        reference: str = "",
        op_id: str | None = None,
    ) -> LocationStock:
        """Take back shipped units: restock them, or write them off as damaged with a reason."""
        validate.qty("qty", qty)
        if damaged and not reason:
            raise ValidationError("reason", "a damaged return needs a reason")
        disposition = "damaged" if damaged else "restock"
        return await self._move(
            "return_units",
            sku,
            location,
            qty,
            (disposition,),
            reason=reason,
            actor=actor,
            reference=reference,
            op_id=op_id,
        )

    async def transfer(
        self,
        sku: str,
        from_location: str,
        to_location: str,
        qty: int,
        *,
        reason: str = "",
        actor: str = "",
        reference: str = "",
        op_id: str | None = None,
    ) -> LocationStock:
        """Move available units between locations; returns the destination's stock."""
        validate.qty("qty", qty)
        validate.name("to_location", to_location)
        if from_location == to_location:
            raise ValidationError("to_location", "must differ from from_location")
        return await self._move(
            "transfer",
            sku,
            from_location,
            qty,
            (to_location,),
            reason=reason,
            actor=actor,
            reference=reference,
            op_id=op_id,
        )

    # -- catalog -------------------------------------------------------------------------

    async def _catalog_copies(self, encoded: str = "") -> list[str]:
        """Offers a catalog to every partition (or only reads, with ''); their copies now."""
        replies = await self._batcher.call(
            [("catalog", list(keys.partition_keys(p)), [encoded]) for p in range(keys.PARTITIONS)]
        )
        return [reply[1] for reply in replies]

    async def catalog(self) -> Catalog:
        """The newest catalog any partition holds (every partition converges to it)."""
        copies = [_catalog.decode(raw) for raw in await self._catalog_copies() if raw]
        return max(copies, key=lambda c: c.version, default=Catalog())

    async def _change_catalog(self, change: Any) -> Catalog:
        # Optimistic and lock-free: build on the newest copy, offer the result to every
        # partition (each keeps the higher version), and start again unless every
        # partition now holds exactly this copy. A writer that lost a race re-applies
        # its change on top of the winner's, so no change is lost.
        while True:
            current = await self.catalog()
            doc: Catalog = msgspec.structs.replace(change(current), version=current.version + 1)
            encoded = _encode(doc).decode()
            if all(copy == encoded for copy in await self._catalog_copies(encoded)):
                return doc

    async def define_location(self, location: str) -> Catalog:
        """Add a location (idempotent)."""
        validate.name("location", location)
        return await self._change_catalog(
            lambda c: msgspec.structs.replace(c, locations={**c.locations, location: 1})
        )

    async def define_channel(
        self,
        channel: str,
        locations: list[str] | tuple[str, ...],
        policy: Policy = POOL,
    ) -> Catalog:
        """Add or replace a channel: the locations it sells from, in priority order."""
        validate.name("channel", channel)
        locations = tuple(validate.name("locations", loc) for loc in locations)
        if not locations or len(set(locations)) != len(locations):
            raise ValidationError("locations", "must list one or more distinct locations")
        spec = Channel(channel, locations, _policy(policy))

        def change(c: Catalog) -> Catalog:
            unknown = [loc for loc in locations if loc not in c.locations]
            if unknown:
                raise error_for([Code.UNKNOWN_LOCATION, unknown[0]])
            return msgspec.structs.replace(c, channels={**c.channels, channel: spec})

        return await self._change_catalog(change)

    async def _sku(self, sku: str, *args: Any) -> SkuSettings:
        validate.name("sku", sku)
        p = keys.partition_of(sku)
        reply = await self.scripts["sku"](keys.partition_keys(p), [sku, *args])
        return _settings.decode(_check(reply)[1])

    async def define_sku(self, sku: str, *, buffer: int = 0) -> SkuSettings:
        """Add a SKU, or change its buffer (units never offered on any channel)."""
        validate.integer("buffer", buffer, 0, validate.MAX_QTY)
        return await self._sku(sku, "define", buffer)

    async def set_policy(self, sku: str, channel: str, policy: Policy | None) -> SkuSettings:
        """Give one channel its own policy for this SKU; None restores the channel's default."""
        validate.name("channel", channel)
        encoded = _encode(_policy(policy)) if policy is not None else ""
        return await self._sku(sku, "policy", channel, encoded)

    async def set_buffer_override(self, sku: str, override: BufferOverride | None) -> SkuSettings:
        """Replace the SKU's buffer during a time window (a flash sale); None removes it."""
        if override is None:
            return await self._sku(sku, "override", "")
        validate.integer("override.start_ms", override.start_ms, 0, validate.MAX_TIME_MS)
        low = override.start_ms + 1
        validate.integer("override.end_ms", override.end_ms, low, validate.MAX_TIME_MS)
        validate.integer("override.qty", override.qty, 0, validate.MAX_QTY)
        return await self._sku(sku, "override", _encode(override))

    # -- reads ---------------------------------------------------------------------------

    async def stock(self, sku: str, channels: list[str] | None = None) -> StockLevel:
        """One SKU per location, and its ATS per channel (all channels by default)."""
        validate.name("sku", sku)
        if channels is None:
            channels = sorted((await self.catalog()).channels)
        p = keys.partition_of(sku)
        reply = _check(await self.scripts["stock"](keys.partition_keys(p), [sku, *channels]))
        n = reply[2]
        rows = [reply[3 + 5 * i : 8 + 5 * i] for i in range(n)]
        return StockLevel(
            sku=sku,
            locations=tuple(LocationStock(*row) for row in rows),
            ats=dict(zip(channels, reply[3 + 5 * n :], strict=True)),
            settings=_settings.decode(reply[1]),
        )

    async def ats(self, channel: str, skus: list[str]) -> dict[str, int]:
        """ATS of each SKU for one channel; unknown SKUs are left out."""
        return {sku: ats for sku, (ats, _) in (await self._ats(channel, skus, "")).items()}

    async def ats_and_ordered(self, channel: str, skus: list[str]) -> dict[str, tuple[int, int]]:
        """(ATS, units the channel's own orders took so far) of each SKU, read together: what
        the sync needs to tell a platform's own sales from every other change."""
        return await self._ats(channel, skus, "ordered")

    async def _ats(self, channel: str, skus: list[str], mode: str) -> dict[str, tuple[int, int]]:
        validate.name("channel", channel)
        if not skus and channel not in (await self.catalog()).channels:
            raise UnknownChannelError(channel)
        by_part: dict[int, list[str]] = {}
        for sku in skus:
            by_part.setdefault(keys.partition_of(validate.name("sku", sku)), []).append(sku)
        replies = await self._batcher.call(
            [
                ("ats", list(keys.partition_keys(p)), [channel, mode, *group])
                for p, group in by_part.items()
            ]
        )
        step = 2 if mode else 1
        result: dict[str, tuple[int, int]] = {}
        for group, reply in zip(by_part.values(), replies, strict=True):
            _check(reply)
            for n, sku in enumerate(group):
                ats = reply[1 + n * step]
                if ats >= 0:
                    result[sku] = (ats, reply[2 + n * step] if mode else 0)
        return result

    async def sweep(self, limit: int = 1000) -> int:
        """Settle up to `limit` expired holds per partition; returns how many it settled."""
        args = [limit, self.settings.finished_retention_ms, limit]
        replies = await self._batcher.call(
            [("sweep", list(keys.partition_keys(p)), args) for p in range(keys.PARTITIONS)]
        )
        return sum(r[0] for r in replies)
