"""Dynamic allocation: moves caps and fences toward each channel's recent sales velocity.

Optional, off unless started. Each run reads the channels' sale and cancel moves from the
SQL ledger into an EWMA of units sold per second, splits each managed SKU's free units
across the managed channels in proportion to it (within each channel's floor and ceiling),
and writes every allocation that moved by min_change or more with `Engine.set_policy`.

Allocations are counted as the engine counts them (README, "Available to sell"): a cap or
fence of N lets the channel take N units from when it was set, live holds included. So
the split is of *unused* allocation, what a channel may still take beyond its live holds;
floor and ceiling bound that, and the policy written is N = unused + live holds (setting
it restarts the channel's count).

set_policy takes no actor or reason: the record of each change is the 'sku' event it
appends to the outbox, which the writer stores as a sku_settings row, plus a log line here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import NamedTuple

import msgspec

from .. import keys
from ..engine import Engine
from ..errors import StockguardError, UnknownSkuError, ValidationError
from ..feeds import defined_skus
from ..models import Catalog, Policy, PolicyKind, SkuSettings, StockLevel
from ..store import Store

log = logging.getLogger("stockguard.rebalance")

ALLOCATIONS = (PolicyKind.CAP, PolicyKind.FENCE)
HISTORY_HALF_LIVES = 4  # the first run reads this much history: older sales weigh < 1/16
_SALES = (
    "SELECT id, sku, channel, committed_delta, at_ms FROM moves WHERE at_ms >= ? "
    "AND channel IS NOT NULL AND kind IN ('sale', 'cancel')"
)


class Bounds(msgspec.Struct, frozen=True):
    """A channel's unused allocation stays within [floor, ceiling] units (None: no ceiling)."""

    floor: int = 0
    ceiling: int | None = None


class RebalanceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the rebalancer manages and how fast it reacts; decode it from JSON with msgspec.

    skus=None manages every SKU whose policy for a managed channel is a cap or a fence.
    prior_units is a sale every channel is credited with, so a channel that sells nothing
    still gets a share (its floor, in practice) rather than a hard zero.
    """

    channels: dict[str, Bounds]
    half_life_s: float = 3600.0
    interval_s: float = 60.0
    min_change: int = 1  # hysteresis, in units: smaller moves are not written
    prior_units: float = 1.0
    skus: tuple[str, ...] | None = None
    lookback_s: float = 300.0  # re-read this much of the ledger: the writer may lag

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValidationError("channels", "must name one or more channels")
        for name, b in self.channels.items():
            if b.floor < 0 or (b.ceiling is not None and b.ceiling < b.floor):
                raise ValidationError(f"channels.{name}", "needs 0 <= floor <= ceiling")
        for field in ("half_life_s", "interval_s", "prior_units"):
            if not getattr(self, field) > 0:
                raise ValidationError(field, "must be > 0")
        if self.min_change < 1:
            raise ValidationError("min_change", "must be >= 1")
        if self.lookback_s < 0:
            raise ValidationError("lookback_s", "must be >= 0")


class Change(msgspec.Struct, frozen=True):
    """One allocation the rebalancer wrote; velocity in units per second."""

    sku: str
    channel: str
    kind: PolicyKind
    old_qty: int
    new_qty: int
    velocity: float


class Velocity:
    """Units sold per second per (sku, channel): an EWMA with the given half-life.

    Each sale is an impulse of units/tau that decays as exp(-dt/tau), tau = half-life / ln 2;
    between observations the rate decays by 1 - alpha, alpha = 1 - exp(-dt/tau). Exact for any
    spacing, ties and arrival order (late ledger rows decay from their own at_ms), and its
    integral over time is the units sold. Cancels are negative units; rates never read < 0.
    """

    def __init__(self, half_life_s: float) -> None:
        self.tau_ms = half_life_s * 1000 / math.log(2)
        self._state: dict[tuple[str, str], tuple[float, int]] = {}  # (rate, as of at_ms)

    def observe(self, sku: str, channel: str, units: int, at_ms: int) -> None:
        """Counts units sold (negative: cancelled) at at_ms, in any order."""
        rate, as_of = self._state.get((sku, channel), (0.0, at_ms))
        impulse = units * 1000 / self.tau_ms
        if at_ms >= as_of:
            self._state[sku, channel] = (self._decay(rate, at_ms - as_of) + impulse, at_ms)
        else:
            self._state[sku, channel] = (rate + self._decay(impulse, as_of - at_ms), as_of)

    def rate(self, sku: str, channel: str, now_ms: int) -> float:
        """Units per second as of now_ms; 0 for a pair never observed."""
        rate, as_of = self._state.get((sku, channel), (0.0, now_ms))
        return max(0.0, self._decay(rate, max(0, now_ms - as_of)))

    def _decay(self, rate: float, dt_ms: int) -> float:
        return rate * math.exp(-dt_ms / self.tau_ms)


class _Slot(NamedTuple):
    """A channel's cap or fence of one SKU, as the engine counts it now."""

    policy: Policy
    held: int  # units in the channel's live holds
    unused: int  # units it may still take: max(0, qty - held - sold under this policy)


def split(
    total: int, weights: dict[str, float], bounds: dict[str, tuple[int, int]]
) -> dict[str, int]:
    """Whole units x_c = clamp(lambda * w_c, low_c, high_c) summing to total where the bounds
    allow it (else all at low, or all at high); weights must be > 0."""
    low, high = sum(b[0] for b in bounds.values()), sum(b[1] for b in bounds.values())
    if total <= low or total >= high:
        return {c: b[0] if total <= low else b[1] for c, b in bounds.items()}

    def fill(lam: float) -> dict[str, float]:
        return {c: min(hi, max(lo, lam * weights[c])) for c, (lo, hi) in bounds.items()}

    lam_low, lam_high = 0.0, max(hi / weights[c] for c, (_, hi) in bounds.items())
    for _ in range(100):  # sum(fill(lam)) is continuous and non-decreasing in lam
        mid = (lam_low + lam_high) / 2
        lam_low, lam_high = (mid, lam_high) if sum(fill(mid).values()) < total else (lam_low, mid)
    exact = fill(lam_high)
    units = {c: math.floor(x) for c, x in exact.items()}
    left = total - sum(units.values())
    for c in sorted(units, key=lambda c: units[c] - exact[c]):  # largest remainder first
        if left > 0 and units[c] < bounds[c][1]:
            units[c], left = units[c] + 1, left - 1
    return units


def _sku_buffer(settings: SkuSettings, now_ms: int) -> int:
    o = settings.override
    return o.qty if o is not None and o.start_ms <= now_ms < o.end_ms else settings.buffer


class Rebalancer:
    """Moves managed caps and fences toward sales velocity; one instance per deployment.

    Fences never promise more than the free units (available at the managed channels'
    locations, less the SKU's buffer and unmanaged fences) when a run reads them. A sale
    between that read and a write can make them one sale too generous; it can never make a
    location oversell, which the engine refuses on its own.
    """

    def __init__(self, engine: Engine, store: Store, config: RebalanceConfig) -> None:
        self.engine, self.store, self.config = engine, store, config
        self.velocity = Velocity(config.half_life_s)
        self._cursor_ms: int | None = None
        self._seen: dict[str, int] = {}  # move id -> at_ms, within the lookback

    async def run(self, stop: asyncio.Event) -> None:
        """Runs every interval_s until `stop` is set; a failed run is logged and retried."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("rebalance run failed; next try in %.0fs", self.config.interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.interval_s)

    async def run_once(self) -> list[Change]:
        """Reads new sales, then rebalances every managed SKU; returns what it wrote."""
        seconds, micros = await self.engine.client.time()
        now_ms = seconds * 1000 + micros // 1000  # the clock at_ms and buffer overrides use
        await self._feed(now_ms)
        catalog = await self.engine.catalog()
        skus = self.config.skus
        if skus is None:
            skus = tuple(await defined_skus(self.engine.client))
        changes: list[Change] = []
        for sku in skus:
            try:
                level = await self.engine.stock(sku)
            except UnknownSkuError:
                continue
            changes += await self._rebalance(level, catalog, now_ms)
        return changes

    async def _feed(self, now_ms: int) -> None:
        """Sale and cancel moves of managed channels, each once, into the velocity."""
        if self._cursor_ms is None:
            self._cursor_ms = now_ms - int(HISTORY_HALF_LIVES * self.config.half_life_s * 1000)
            since = self._cursor_ms
        else:
            since = self._cursor_ms - int(self.config.lookback_s * 1000)
        self._seen = {i: at for i, at in self._seen.items() if at >= since}
        for move_id, sku, channel, delta, at_ms in await self.store._fetch(_SALES, (since,)):
            if move_id in self._seen or channel not in self.config.channels:
                continue
            self._seen[move_id] = int(at_ms)
            self.velocity.observe(sku, channel, int(delta), int(at_ms))
            self._cursor_ms = max(self._cursor_ms, int(at_ms))

    async def _slots(self, level: StockLevel, catalog: Catalog) -> dict[str, _Slot]:
        """Every cap and fence of the SKU, with what the channel used of it (lua/lib.lua)."""
        own = level.settings.policies
        policies = {
            c: own.get(c, spec.policy)
            for c, spec in catalog.channels.items()
            if own.get(c, spec.policy).kind in ALLOCATIONS
        }
        fields = [
            f"{level.sku}:{c}:{n}" for c in policies for n in ("channel_held", "sold", "sold_since")
        ]
        stock_key = keys.stock(keys.partition_of(level.sku))
        values = await self.engine.client.hmget(stock_key, fields) if fields else []
        slots = {}
        for i, (c, p) in enumerate(policies.items()):
            held, sold, since = (int(v or 0) for v in values[3 * i : 3 * i + 3])
            sold = sold if since == p.since_ms else 0  # counted under an earlier policy
            slots[c] = _Slot(p, held, max(0, p.qty - held - sold))
        return slots

    async def _rebalance(self, level: StockLevel, catalog: Catalog, now_ms: int) -> list[Change]:
        slots = await self._slots(level, catalog)
        managed = {c: s for c, s in slots.items() if c in self.config.channels}
        if not managed:
            return []
        reach = {loc for c in managed for loc in catalog.channels[c].locations}
        free = sum(loc.available for loc in level.locations if loc.location in reach)
        free -= _sku_buffer(level.settings, now_ms)
        free -= sum(
            s.unused
            for c, s in slots.items()
            if c not in managed and s.policy.kind is PolicyKind.FENCE
        )
        free = max(0, free)
        targets = self._targets(level.sku, free, managed, now_ms)
        writes = self._writes(managed, targets, free)
        changes = []
        for c in sorted(writes, key=lambda c: targets[c] - managed[c].unused):  # shrink first
            slot = managed[c]
            policy = Policy(slot.policy.kind, targets[c] + slot.held, slot.policy.buffer)
            try:
                await self.engine.set_policy(level.sku, c, policy)
            except StockguardError as error:  # the SKU or channel went away since the read
                log.warning("rebalance %s/%s skipped: %s", level.sku, c, error)
                continue
            rate = self.velocity.rate(level.sku, c, now_ms)
            changes.append(Change(level.sku, c, policy.kind, slot.policy.qty, policy.qty, rate))
            log.info(
                "%s/%s %s %d -> %d units (%.5f units/s)",
                level.sku,
                c,
                policy.kind.value,
                slot.policy.qty,
                policy.qty,
                rate,
            )
        return changes

    def _targets(
        self, sku: str, free: int, managed: dict[str, _Slot], now_ms: int
    ) -> dict[str, int]:
        """Free units split by velocity within the bounds; fences cut to fit the free units."""
        prior = self.config.prior_units * 1000 / self.velocity.tau_ms
        weights = {c: self.velocity.rate(sku, c, now_ms) + prior for c in managed}
        bounds = {}
        for c in managed:
            b = self.config.channels[c]
            bounds[c] = (b.floor, max(b.floor, free) if b.ceiling is None else b.ceiling)
        targets = split(free, weights, bounds)
        fences = {
            c: (0, targets[c]) for c, s in managed.items() if s.policy.kind is PolicyKind.FENCE
        }
        if sum(hi for _, hi in fences.values()) > free:  # floors the free units cannot cover
            targets.update(split(free, {c: weights[c] for c in fences}, fences))
        return targets

    def _writes(self, managed: dict[str, _Slot], targets: dict[str, int], free: int) -> set[str]:
        """The channels whose allocation moved by min_change or more.

        If skipping a fence's small shrink would leave the fences over the free units, every
        shrinking fence is written: then no fence ends above its target, and the targets fit.
        """
        step = self.config.min_change
        writes = {c for c, s in managed.items() if abs(targets[c] - s.unused) >= step}
        fences = {c for c, s in managed.items() if s.policy.kind is PolicyKind.FENCE}
        after = sum(targets[c] if c in writes else managed[c].unused for c in fences)
        if after > free:
            writes |= {c for c in fences if targets[c] < managed[c].unused}
        return writes
