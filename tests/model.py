"""A pure-Python model of the engine's semantics (DESIGN.md, lua/lib.lua), for test_model.py.

No Redis and no clock: time is an integer of model milliseconds that only `advance` moves.
Refusals are raised as the engine's own exceptions, with the same details, so that a test
can compare the two side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.errors import (
    CountBelowReservedError,
    HoldNotActiveError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientCommittedError,
    InsufficientStockError,
    ShortfallError,
    StockguardError,
)


class Policy(NamedTuple):
    kind: str = "pool"  # pool | cap | cap_pct | fence
    qty: int = 0
    buffer: int = 0


class Level(NamedTuple):
    """One SKU at one location, in the field order of engine.models.LocationStock."""

    location: str
    on_hand: int
    committed: int
    held: int
    available: int


@dataclass
class Hold:
    id: str
    channel: str
    lines: list[tuple[str, str, int]]  # (sku, location, qty)
    expires_at: int
    state: str = "held"  # held | confirmed | released | expired


@dataclass
class Model:
    channels: dict[str, tuple[tuple[str, ...], Policy]]  # name -> (locations, default policy)
    now: int = 0
    buffers: dict[str, int] = field(default_factory=dict)  # sku -> buffer in force
    policies: dict[tuple[str, str], Policy] = field(default_factory=dict)  # per-SKU overrides
    on_hand: dict[tuple[str, str], int] = field(default_factory=dict)
    committed: dict[tuple[str, str], int] = field(default_factory=dict)
    sold: dict[tuple[str, str], int] = field(default_factory=dict)  # (sku, channel) confirmed
    holds: dict[str, Hold] = field(default_factory=dict)
    refused: dict[str, StockguardError] = field(default_factory=dict)  # hold id -> refusal
    hold_payloads: dict[str, Any] = field(default_factory=dict)  # hold id -> payload
    op_payloads: dict[str, Any] = field(default_factory=dict)  # move op id -> payload
    outcomes: dict[str, Any] = field(default_factory=dict)  # op id -> first Level or refusal

    # -- reads ---------------------------------------------------------------------------

    def policy(self, sku: str, channel: str) -> Policy:
        return self.policies.get((sku, channel), self.channels[channel][1])

    def live(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.state == "held"]

    def held(self, sku: str, location: str) -> int:
        return sum(q for h in self.live() for s, loc, q in h.lines if (s, loc) == (sku, location))

    def held_by(self, sku: str, channel: str) -> int:
        return sum(
            q for h in self.live() if h.channel == channel for s, _, q in h.lines if s == sku
        )

    def free(self, sku: str, location: str) -> int:
        key = (sku, location)
        reserved = self.committed.get(key, 0) + self.held(sku, location)
        return max(0, self.on_hand.get(key, 0) - reserved)

    def level(self, sku: str, location: str) -> Level:
        key = (sku, location)
        on_hand, committed = self.on_hand.get(key, 0), self.committed.get(key, 0)
        return Level(location, on_hand, committed, self.held(sku, location), self.free(*key))

    def taken(self, sku: str, channel: str) -> int:
        """What a cap or fence has used up: live holds and confirmed sales (policies here
        are set before any sale, so every sale counts)."""
        return self.held_by(sku, channel) + self.sold.get((sku, channel), 0)

    def ats(self, channel: str, sku: str) -> int:
        pool = sum(self.free(sku, loc) for loc in self.channels[channel][0]) - self.buffers[sku]
        for other in self.channels:
            fence = self.policy(sku, other)
            if other != channel and fence.kind == "fence":
                pool -= max(0, fence.qty - self.taken(sku, other))
        p, mine = self.policy(sku, channel), self.held_by(sku, channel)
        limit = pool
        if p.kind == "cap_pct":
            limit = min(pool, p.qty * (pool + mine) // 100 - mine)
        elif p.kind in ("cap", "fence"):
            limit = min(pool, p.qty - self.taken(sku, channel))
        return max(0, limit - p.buffer)

    # -- time ----------------------------------------------------------------------------

    def advance(self, ms: int) -> None:
        self.now += ms
        for h in self.live():
            if h.expires_at <= self.now:
                h.state = "expired"

    # -- holds ---------------------------------------------------------------------------

    def _allocate(self, channel: str, wanted: dict[str, int]) -> list[tuple[str, str, int]]:
        lines = []
        for sku, qty in wanted.items():
            for location in self.channels[channel][0]:
                take = min(qty, self.free(sku, location))
                if take > 0:
                    lines.append((sku, location, take))
                    qty -= take
        return lines

    def hold(self, hold_id: str, channel: str, lines: list[tuple[str, int]], ttl: int) -> Hold:
        """All or nothing; a replay returns the first outcome (the hold as it is now)."""
        wanted = merge(lines)
        payload = (channel, ttl, sorted(wanted.items()))
        if hold_id in self.hold_payloads:
            if self.hold_payloads[hold_id] != payload:
                raise IdempotencyConflictError(hold_id)
            if hold_id in self.refused:
                raise self.refused[hold_id]
            return self.holds[hold_id]
        self.hold_payloads[hold_id] = payload
        for sku, qty in wanted.items():
            available = self.ats(channel, sku)
            if qty > available:
                self.refused[hold_id] = InsufficientStockError(sku, qty, available)
                raise self.refused[hold_id]
        lines_held = self._allocate(channel, wanted)
        self.holds[hold_id] = Hold(hold_id, channel, lines_held, self.now + ttl)
        return self.holds[hold_id]

    def _placed(self, hold_id: str) -> Hold:
        if hold_id not in self.holds:
            raise HoldNotFoundError(hold_id)
        return self.holds[hold_id]

    def _reallocate(self, h: Hold) -> None:
        """Gives an expired hold its units again from what its channel may sell now."""
        wanted = merge([(sku, qty) for sku, _, qty in h.lines])
        missing = {}
        for sku, qty in wanted.items():
            available = self.ats(h.channel, sku)
            if qty > available:
                missing[sku] = qty - available
        if missing:
            raise ShortfallError(h.id, missing)
        h.lines = self._allocate(h.channel, wanted)

    def confirm(self, hold_id: str) -> Hold:
        h = self._placed(hold_id)
        if h.state == "confirmed":
            return h
        if h.state == "released":
            raise HoldNotActiveError(hold_id, h.state)
        if h.state == "expired":
            self._reallocate(h)
        for sku, location, qty in h.lines:
            self.committed[sku, location] = self.committed.get((sku, location), 0) + qty
            self.sold[sku, h.channel] = self.sold.get((sku, h.channel), 0) + qty
        h.state = "confirmed"
        return h

    def release(self, hold_id: str) -> Hold:
        h = self._placed(hold_id)
        if h.state == "confirmed":
            raise HoldNotActiveError(hold_id, h.state)
        if h.state == "held":
            h.state = "released"
        return h

    def extend(self, hold_id: str, ttl: int) -> Hold:
        h = self._placed(hold_id)
        if h.state in ("confirmed", "released"):
            raise HoldNotActiveError(hold_id, h.state)
        if h.state == "expired":
            self._reallocate(h)
            h.state = "held"
        h.expires_at = max(h.expires_at, self.now + ttl)
        return h

    # -- moves: each is idempotent by its op id ------------------------------------------

    def move(self, op_id: str, kind: str, sku: str, location: str, qty: int, *extra: Any) -> Any:
        """Runs `_<kind>`; a replayed op id gets its first outcome, or a conflict if the
        payload differs. Returns the Level at the location (the destination of a transfer)."""
        payload = (kind, sku, location, qty, *extra)
        if op_id in self.op_payloads:
            if self.op_payloads[op_id] != payload:
                raise IdempotencyConflictError(op_id)
        else:
            self.op_payloads[op_id] = payload
            try:
                self.outcomes[op_id] = getattr(self, f"_{kind}")(sku, location, qty, *extra)
            except StockguardError as refusal:
                self.outcomes[op_id] = refusal
        if isinstance(self.outcomes[op_id], StockguardError):
            raise self.outcomes[op_id]
        return self.outcomes[op_id]

    def _add(self, sku: str, location: str, on_hand: int = 0, committed: int = 0) -> Level:
        key = (sku, location)
        self.on_hand[key] = self.on_hand.get(key, 0) + on_hand
        self.committed[key] = self.committed.get(key, 0) + committed
        return self.level(sku, location)

    def _receive(self, sku: str, location: str, qty: int) -> Level:
        return self._add(sku, location, on_hand=qty)

    def _adjust(self, sku: str, location: str, delta: int) -> Level:
        if -delta > self.free(sku, location):
            raise InsufficientStockError(sku, -delta, self.free(sku, location))
        return self._add(sku, location, on_hand=delta)

    def _count(self, sku: str, location: str, counted: int) -> Level:
        level = self.level(sku, location)
        if counted < level.committed + level.held:
            raise CountBelowReservedError(sku, location, counted, level.committed + level.held)
        return self._add(sku, location, on_hand=counted - level.on_hand)

    def _committed_at_least(self, sku: str, location: str, qty: int) -> None:
        committed = self.committed.get((sku, location), 0)
        if qty > committed:
            raise InsufficientCommittedError(sku, location, qty, committed)

    def _ship(self, sku: str, location: str, qty: int) -> Level:
        self._committed_at_least(sku, location, qty)
        return self._add(sku, location, on_hand=-qty, committed=-qty)

    def _cancel(self, sku: str, location: str, qty: int) -> Level:
        self._committed_at_least(sku, location, qty)
        return self._add(sku, location, committed=-qty)

    def _return_units(self, sku: str, location: str, qty: int, disposition: str) -> Level:
        return self._add(sku, location, on_hand=qty if disposition == "restock" else 0)

    def _transfer(self, sku: str, source: str, qty: int, destination: str) -> Level:
        if qty > self.free(sku, source):
            raise InsufficientStockError(sku, qty, self.free(sku, source))
        self._add(sku, source, on_hand=-qty)
        return self._add(sku, destination, on_hand=qty)


def merge(lines: list[tuple[str, int]]) -> dict[str, int]:
    """One entry per SKU, in first-seen order: repeated SKUs add up."""
    wanted: dict[str, int] = {}
    for sku, qty in lines:
        wanted[sku] = wanted.get(sku, 0) + qty
    return wanted
