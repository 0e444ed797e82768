"""Request and response bodies: msgspec types that validate JSON and generate the OpenAPI.

Engine values (Hold, StockLevel, LocationStock, Catalog, SkuSettings) are returned as
they are. The constraints here repeat the engine's own checks, so the documented
schema says what the engine accepts; the engine checks again.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from engine import validate
from engine.ledger import MoveRow
from engine.models import Policy

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/+#-]{0,99}$")]
Sku = Annotated[Name, Meta(description="A SKU", examples=["TSHIRT-RED-M"])]
Location = Annotated[Name, Meta(description="A location (warehouse, store)", examples=["WH1"])]
HoldId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")]
Qty = Annotated[int, Meta(ge=1, le=validate.MAX_QTY)]
Units = Annotated[int, Meta(ge=0, le=validate.MAX_QTY)]
TtlMs = Annotated[int, Meta(ge=1, le=validate.MAX_TTL_MS, description="Time to live in ms")]
TimeMs = Annotated[int, Meta(ge=0, le=validate.MAX_TIME_MS, description="Unix time in ms")]
Text = Annotated[str, Meta(max_length=500)]
ShortText = Annotated[str, Meta(max_length=200)]


class _In(msgspec.Struct, forbid_unknown_fields=True):
    """A request body: unknown fields are refused, so a typo never passes silently."""


# -- holds --------------------------------------------------------------------------------


class HoldLineIn(_In):
    sku: Sku
    qty: Qty


class HoldCreate(_In):
    """Hold every line for the channel for ttl_ms, or hold nothing."""

    channel: Name
    lines: Annotated[list[HoldLineIn], Meta(min_length=1, max_length=validate.MAX_LINES)]
    ttl_ms: TtlMs = 600_000
    customer: ShortText | None = None
    id: HoldId | None = None  # client-chosen hold id; placing it again replays the hold
    # The admission token of a flash-sale ticket: needed to hold a sale's SKUs on its
    # channel during the sale (see /v1/sales/{sale}/queue).
    admission: Annotated[str, Meta(max_length=1000)] | None = None

    @property
    def sku_for_id(self) -> str:
        """The SKU an id derived from an Idempotency-Key is homed with."""
        return self.lines[0].sku


class HoldExtend(_In):
    ttl_ms: TtlMs


class HoldConfirm(_In):
    reference: ShortText | None = None  # the order this hold became


# -- moves --------------------------------------------------------------------------------


class Receive(_In):
    location: Location
    qty: Qty
    reason: Text = ""
    reference: Text = ""


class Adjust(_In):
    location: Location
    delta: Annotated[int, Meta(ge=-validate.MAX_QTY, le=validate.MAX_QTY)]
    reason: Annotated[str, Meta(min_length=1, max_length=500)]
    reference: Text = ""


class Count(_In):
    location: Location
    counted: Units
    reason: Text = "cycle count"
    reference: Text = ""


class Ship(Receive):
    pass


class Cancel(Receive):
    pass


class Return(_In):
    location: Location
    qty: Qty
    damaged: bool = False  # written off (needs a reason) instead of restocked
    reason: Text = ""
    reference: Text = ""


class Transfer(_In):
    from_location: Location
    to_location: Location
    qty: Qty
    reason: Text = ""
    reference: Text = ""


# -- catalog ------------------------------------------------------------------------------


class PolicyIn(_In):
    """pool: the shared pool; cap: at most qty units; cap_pct: at most qty % of the pool;
    fence: qty units only this channel may sell. buffer: units this channel never offers."""

    kind: Annotated[str, Meta(pattern=r"^(pool|cap|cap_pct|fence)$")] = "pool"
    qty: Units = 0
    buffer: Units = 0

    def to_policy(self) -> Policy:
        return msgspec.convert({"kind": self.kind, "qty": self.qty, "buffer": self.buffer}, Policy)


class ChannelIn(_In):
    locations: Annotated[list[Location], Meta(min_length=1, max_length=100)]
    # the default for SKUs without a policy of their own
    policy: PolicyIn = msgspec.field(default_factory=PolicyIn)


class SkuIn(_In):
    buffer: Units = 0  # units never offered on any channel


class OverrideIn(_In):
    start_ms: TimeMs
    end_ms: TimeMs
    qty: Units


# -- responses ----------------------------------------------------------------------------


class Ats(msgspec.Struct, frozen=True):
    """ATS per SKU for one channel; unknown SKUs are left out."""

    channel: str
    ats: dict[str, int]


class MovePage(msgspec.Struct, frozen=True):
    """One page of committed moves, oldest first."""

    moves: list[MoveRow]
    next: str | None  # pass as `after` for the next page; null at the end


class Whoami(msgspec.Struct, frozen=True):
    key_id: str
    name: str
    role: str


class Health(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, str] = {}


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details, plus the fields a caller needs to act on the error."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    field: str | None = None
    sku: str | None = None
    location: str | None = None
    channel: str | None = None
    hold_id: str | None = None
    state: str | None = None
    requested: int | None = None
    available: int | None = None
    committed: int | None = None
    counted: int | None = None
    reserved: int | None = None
    missing: dict[str, int] | None = None
    sale: str | None = None
    ticket: str | None = None
    limit: int | None = None
    used: int | None = None
    reason: str | None = None
    end_ms: int | None = None
    allowed: list[str] | None = None
