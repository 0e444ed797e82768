"""Outbox entries as ledger rows: what the writer persists to SQL.

Each outbox entry (one per script call) carries a JSON array of events. Moves
keep their own ids; other events are identified by their place in the outbox
(partition, entry id, index), which is just as stable, so every row has a
unique id and writing an entry twice adds nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec


class MoveRow(msgspec.Struct, frozen=True):
    """One committed change to on_hand or committed."""

    id: str
    kind: str
    sku: str
    location: str
    qty: int
    on_hand_delta: int
    committed_delta: int
    at_ms: int
    reason: str = ""
    actor: str = ""
    reference: str | None = None
    channel: str | None = None
    hold_id: str | None = None
    pos: int = 0  # commit order: the outbox entry's ms and sequence, then the event's index


class HoldEventRow(msgspec.Struct, frozen=True):
    """A hold placed, extended, confirmed, released, expired or rejected (one partition's part)."""

    id: str
    hold_id: str
    part: int  # the partition this part of the hold lives in
    event: str
    channel: str
    state: str
    expires_at_ms: int
    lines: str  # JSON [[sku, location, qty], ...]
    parts: str
    at_ms: int
    customer: str | None = None
    reference: str | None = None
    # A flash-sale hold: its sale, the sale's per-customer limit, the customer's key.
    sale: str | None = None
    sale_limit: int | None = None
    customer_key: str | None = None


class CatalogRow(msgspec.Struct, frozen=True):
    version: int
    doc: str  # JSON, as engine.models.Catalog
    at_ms: int


class SkuSettingsRow(msgspec.Struct, frozen=True):
    id: str
    sku: str
    settings: str  # JSON, as engine.models.SkuSettings
    at_ms: int


class OversellRow(msgspec.Struct, frozen=True):
    """A channel oversell: an order line that took `shortfall` units beyond the channel's ATS."""

    id: str  # the order line's record id (one oversell per line at most)
    sku: str
    channel: str
    qty: int
    ats: int
    shortfall: int
    unfilled: int  # of the shortfall, units no location could supply
    at_ms: int
    reference: str | None = None


class Rows(msgspec.Struct):
    """Everything some outbox entries add to the ledger."""

    moves: list[MoveRow] = []
    hold_events: list[HoldEventRow] = []
    catalog: list[CatalogRow] = []
    sku_settings: list[SkuSettingsRow] = []
    oversells: list[OversellRow] = []

    def tables(self) -> tuple[list[Any], ...]:
        """The row lists, in store._TABLES order."""
        return (self.moves, self.hold_events, self.catalog, self.sku_settings, self.oversells)

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables())

    def extend(self, other: Rows) -> None:
        for mine, theirs in zip(self.tables(), other.tables(), strict=True):
            mine += theirs


_events = msgspec.json.Decoder(list[dict[str, Any]])
_encode = msgspec.json.encode


def rows(partition: int, entries: list[tuple[str, dict[str, str]]]) -> Rows:
    """Ledger rows of one partition's outbox entries, as XRANGE/XREADGROUP give them."""
    out = Rows()
    for entry_id, fields in entries:
        at_ms = int(fields["at_ms"])
        ms, seq = entry_id.split("-")
        base = int(ms) * 1_000_000 + int(seq) * 1000
        for index, event in enumerate(_events.decode(fields["events"])):
            event_id = f"{partition}:{entry_id}/{index}"
            _add(out, partition, event_id, at_ms, event, base + index)
    return out


def _add(
    out: Rows, partition: int, event_id: str, at_ms: int, event: dict[str, Any], pos: int
) -> None:
    kind = event.pop("type")
    if kind == "move":
        event.setdefault("at_ms", at_ms)
        event["pos"] = pos
        out.moves.append(msgspec.convert(event, MoveRow))
    elif kind == "hold":
        hold = event["hold"]
        lines = hold.get("lines") or []
        out.hold_events.append(
            HoldEventRow(
                id=event_id,
                hold_id=hold["id"],
                part=partition,
                event=event["event"],
                channel=hold["ch"],
                state=hold["st"],
                expires_at_ms=int(hold["exp"]),
                lines=_encode(lines).decode(),
                parts=hold["parts"],
                at_ms=at_ms,
                customer=hold.get("cust"),
                reference=hold.get("ref"),
                sale=hold.get("sale"),
                sale_limit=hold.get("lim"),
                customer_key=hold.get("ck"),
            )
        )
    elif kind == "catalog":
        doc = event["catalog"]
        out.catalog.append(CatalogRow(int(doc["version"]), _encode(doc).decode(), at_ms))
    elif kind == "sku":
        settings = _encode(event["settings"]).decode()
        out.sku_settings.append(SkuSettingsRow(event_id, event["sku"], settings, at_ms))
    elif kind == "oversell":
        out.oversells.append(msgspec.convert(event, OversellRow))
    else:
        raise ValueError(f"unknown outbox event type {kind!r}")
