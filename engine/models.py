"""Typed values the engine takes and returns."""

from __future__ import annotations

from enum import StrEnum

import msgspec


class PolicyKind(StrEnum):
    """How a channel shares a SKU's stock."""

    POOL = "pool"  # the shared pool
    CAP = "cap"  # the shared pool, at most `qty` units held or offered at once
    CAP_PCT = "cap_pct"  # the shared pool, at most `qty` percent of it
    FENCE = "fence"  # `qty` units only this channel may sell


class Policy(msgspec.Struct, frozen=True):
    """A channel's allocation of a SKU, plus the channel's own buffer in units."""

    kind: PolicyKind = PolicyKind.POOL
    qty: int = 0
    buffer: int = 0
    # When a cap or fence was set (engine-stamped): the channel's sales count against it
    # from then on, so a new allocation starts afresh.
    since_ms: int = 0


class Channel(msgspec.Struct, frozen=True):
    """A sales channel and the locations it sells from, in priority order."""

    name: str
    locations: tuple[str, ...]
    policy: Policy = Policy()


class BufferOverride(msgspec.Struct, frozen=True, array_like=True):
    """Replaces a SKU's buffer with `qty` while start_ms <= server time < end_ms."""

    start_ms: int
    end_ms: int
    qty: int


class SkuSettings(msgspec.Struct, frozen=True, omit_defaults=True):
    buffer: int = 0
    override: BufferOverride | None = None
    policies: dict[str, Policy] = {}


class HoldState(StrEnum):
    HELD = "held"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"


class HoldLine(msgspec.Struct, frozen=True):
    """Units of one SKU held at one location."""

    sku: str
    location: str
    qty: int


class Hold(msgspec.Struct, frozen=True):
    """A hold as placed or last changed; `expires_at_ms` is by the server's clock."""

    id: str
    channel: str
    state: HoldState
    expires_at_ms: int
    lines: tuple[HoldLine, ...]
    customer: str | None = None
    reference: str | None = None


class LocationStock(msgspec.Struct, frozen=True):
    """One SKU at one location; available = on_hand - committed - held, never below 0."""

    location: str
    on_hand: int
    committed: int
    held: int
    available: int


class StockLevel(msgspec.Struct, frozen=True):
    """One SKU across locations, with its ATS for each channel asked about."""

    sku: str
    locations: tuple[LocationStock, ...]
    ats: dict[str, int]
    settings: SkuSettings


class Catalog(msgspec.Struct, frozen=True):
    """Locations and channels; each partition keeps a copy, newest version wins."""

    version: int = 0
    locations: dict[str, int] = {}
    channels: dict[str, Channel] = {}


class Record(msgspec.Struct, frozen=True):
    """A hold record as lua/ stores it in one partition (short names keep it small)."""

    id: str
    ch: str
    st: str
    exp: int
    parts: str
    # cjson writes an empty array as {}: accept both.
    lines: list[tuple[str, str, int]] | dict[str, int] = []
    cust: str | None = None
    ref: str | None = None


class ChannelSale(msgspec.Struct, frozen=True):
    """One line of an order a channel took: the units committed for it, where from.

    shortfall > 0 is a channel oversell: the line took that many units beyond the
    channel's ATS. unfilled of those could not be committed at all (no free units at
    the channel's locations); the merchant must source or refund them.
    """

    id: str
    channel: str
    order_id: str
    state: str  # "confirmed", or "cancelled"
    lines: tuple[HoldLine, ...]
    shortfall: int = 0
    unfilled: int = 0
