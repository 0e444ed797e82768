"""Rebuild: restore the live state in Redis from the SQL ledger, after Redis lost it.

The ledger is the record (DESIGN.md, "Recovery"). For every partition, rebuild
writes back:

- the catalog of the highest version, into every partition's copy;
- each SKU's settings as last recorded, into its partition's `skus` hash;
- `on_hand` and `committed` of each SKU and location, as the sums of their moves;
- each part of a hold as its last event left it, in the part's `holds` hash.
  A part still `held` goes into the `expiry` zset and adds its lines to the
  `held` and `channel_held` counters; any other state goes into `finished`
  with the time of that event.
- the `sold` counters of cap and fence policies: the channel's sale moves since the
  policy's since_ms, less its cancel moves (the two clocks, the engine's for since_ms
  and the server's for moves, must agree to the millisecond around a policy change);
- each flash-sale customer's limit counters (`<sku>:<sale>:limit.<customer key>`),
  from the last event of every sale hold however old: held and confirmed units count.

A hold whose last event is `held` but whose expiry has passed is restored as
held, expiry included, and is not settled here: every script settles the due
holds of its partition before anything else (lib.lua `expire_due`), so it never
counts, and the script that settles it appends its `expired` event to the
outbox, so the ledger records the expiry as it would have without the loss.
Marking it expired here would leave the ledger's last word on it `held`.

What the ledger does not keep, and so cannot come back:

- A hold record's `fp` (its payload fingerprint) is recomputed from the parts'
  `placed` events: channel, customer, ttl_ms (expires_at_ms - at_ms of the
  placement), the units per SKU and a sale hold's sale, limit and customer key, as
  `Engine.hold` computes it. So a replayed
  hold returns its first outcome and a different payload is still a conflict.
  A customer given as "" was stored as none and is taken as None, and a hold
  with a part refused at placement (that part writes no event) gets no `fp`:
  replaying those ids raises IdempotencyConflictError instead of replaying.
- `ext` (the op id of the last extension): replaying an extend after a rebuild
  extends again instead of returning the first outcome.
- Holds refused at placement (their records write no event): replaying a
  refused single-part hold after a rebuild places it if stock now allows.
- The replies of operation ids (`<prefix>:op:<id>`). Each op id whose move is
  still in the idempotency window comes back as a claim, so an operation retried
  with the same op_id after a rebuild is refused with IdempotencyConflictError
  instead of being applied twice (its first reply is not in the ledger).
- Outbox entries the writer had not yet persisted when Redis lost them.

Run it with traffic stopped and the writer drained; a writer that ran through
the loss must be restarted (its consumer groups went with the data; its setup
makes them again). With force=True, rebuild first deletes the state keys above,
but not the outboxes: what is still in them is not in the ledger yet, so not in
the rebuilt state either, and reconcile shows it as drift once it is written.
Each partition is written in one MULTI/EXEC (its keys share a slot).

`rebuild(client, store, sku=X)` is a repair, allowed on a live keyspace: it sets
X's on_hand and committed at every location to the ledger's sums in one HSET
(one command, so atomic) and leaves holds and everything else alone. Run it with
the writer caught up, or moves still in the outbox are taken away again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import msgspec

from . import keys, validate
from .config import DAY_MS
from .errors import StockguardError
from .ids import fingerprint
from .ledger import HoldEventRow
from .models import Catalog, Policy, PolicyKind, SkuSettings
from .store import Store

CHUNK = 1000  # fields or members per command: no single command grows unbounded
_STATE_KEYS = ("catalog", "skus", "stock", "holds", "expiry", "finished")  # not the outbox
_lines = msgspec.json.Decoder(list[tuple[str, str, int]])
_encode = msgspec.json.encode


class KeyspaceNotEmptyError(StockguardError):
    """Rebuild refused: the engine's keys exist, and rebuild would overwrite them."""

    def __init__(self, found: list[str]) -> None:
        self.found = found
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        super().__init__(
            f"Redis already holds stockguard state ({len(found)} keys: {shown}); "
            "rebuild with force=True (--force) to replace it"
        )


class RebuildReport(msgspec.Struct, frozen=True):
    """What a rebuild wrote."""

    catalog_version: int = 0
    skus: int = 0
    stock_fields: int = 0  # on_hand and committed fields written
    held_parts: int = 0  # hold parts restored as held
    finished_parts: int = 0  # hold parts restored as confirmed, released, expired or rejected


class _Partition:
    """Everything rebuild writes into one partition."""

    def __init__(self) -> None:
        self.skus: dict[str, str] = {}
        self.stock: dict[str, int] = defaultdict(int)
        self.holds: dict[str, str] = {}
        self.expiry: dict[str, int] = {}
        self.finished: dict[str, int] = {}
        self.op_claims: dict[str, int] = {}  # op id -> ms left in its idempotency window


async def rebuild(
    client: Any,
    store: Store,
    *,
    force: bool = False,
    sku: str | None = None,
    retention_ms: int | None = None,
    idempotency_ttl_ms: int = DAY_MS,
) -> RebuildReport:
    """Write the ledger's state into Redis; refuses a non-empty keyspace unless force.

    With retention_ms (Settings.finished_retention_ms), holds that finished longer ago
    than that, by the server's clock, are left out: the sweeper would forget them. A hold
    with a part still held is always restored whole.
    """
    if sku is not None:
        return await repair_sku(client, store, sku)
    found = await occupied(client)
    if found and not force:
        raise KeyspaceNotEmptyError(found)
    parts = [_Partition() for _ in range(keys.PARTITIONS)]
    catalog = await store.latest_catalog()
    for row in await store.latest_sku_settings():
        parts[keys.partition_of(row.sku)].skus[row.sku] = row.settings
    stock_fields = 0
    for sku_, location, on_hand, committed in await store.stock_totals():
        fields = parts[keys.partition_of(sku_)].stock
        fields[f"{sku_}:{location}:on_hand"] = on_hand
        fields[f"{sku_}:{location}:committed"] = committed
        stock_fields += 2
    since_ms = 0
    if retention_ms is not None:
        seconds, micros = await client.time()
        since_ms = seconds * 1000 + micros // 1000 - retention_ms
    await _claim_op_ids(client, store, parts, idempotency_ttl_ms)
    await _restore_holds(store, parts, since_ms)
    for event in await store.sale_hold_states():
        _count_toward_limit(parts, event)
    await _restore_sold(store, parts, catalog.doc if catalog else None)
    for p, part in enumerate(parts):
        await _write(client, p, part, catalog.doc if catalog else None, clear=bool(found))
    return RebuildReport(
        catalog_version=catalog.version if catalog else 0,
        skus=sum(len(part.skus) for part in parts),
        stock_fields=stock_fields,
        held_parts=sum(len(part.expiry) for part in parts),
        finished_parts=sum(len(part.finished) for part in parts),
    )


async def occupied(client: Any) -> list[str]:
    """The engine's partition keys (outboxes included) that exist now."""
    found = []
    for p in range(keys.PARTITIONS):
        # One EXISTS per partition: its keys share a slot, so this also works on a cluster.
        names = keys.partition_keys(p)
        if await client.exists(*names):
            found += [name for name in names if await client.exists(name)]
    return found


async def repair_sku(client: Any, store: Store, sku: str) -> RebuildReport:
    """Set one SKU's on_hand and committed, at every location, to the ledger's sums."""
    validate.name("sku", sku)
    p = keys.partition_of(sku)
    totals = {
        location: (on_hand, committed)
        for _, location, on_hand, committed in await store.stock_totals(sku)
    }
    raw = await client.get(keys.partition_keys(p)[0])
    known = msgspec.json.decode(raw).get("locations", {}) if raw else {}
    fields: dict[str, int] = {}
    for location in sorted({*known, *totals}):
        on_hand, committed = totals.get(location, (0, 0))
        fields[f"{sku}:{location}:on_hand"] = on_hand
        fields[f"{sku}:{location}:committed"] = committed
    if fields:
        await client.hset(keys.stock(p), mapping=fields)
    return RebuildReport(skus=1, stock_fields=len(fields))


def _fingerprints(placed: list[HoldEventRow]) -> dict[str, str]:
    """Each hold's payload fingerprint, as Engine.hold made it, from its parts' placements."""
    by_hold: dict[str, list[HoldEventRow]] = defaultdict(list)
    for event in placed:
        by_hold[event.hold_id].append(event)
    fps = {}
    for hold_id, events in by_hold.items():
        first = events[0]
        ttls = {e.expires_at_ms - e.at_ms for e in events}
        parts = {int(p) for p in first.parts.split(",")}
        if {e.part for e in events} != parts or len({e.parts for e in events}) > 1:
            continue  # a part was refused at placement: the payload is not all here
        if len(ttls) > 1:
            continue  # placements of two holds that used one id, far apart in time
        wanted: dict[str, int] = defaultdict(int)
        for event in events:
            for sku, _, qty in _lines.decode(event.lines):
                wanted[sku] += qty
        sale = () if first.sale is None else (first.sale, first.sale_limit, first.customer_key)
        fps[hold_id] = fingerprint(
            first.channel, first.customer, ttls.pop(), sorted(wanted.items()), *sale
        )
    return fps


def _restore_hold(part: _Partition, event: HoldEventRow, fp: str | None) -> None:
    lines = _lines.decode(event.lines)
    record: dict[str, Any] = {
        "id": event.hold_id,
        "ch": event.channel,
        "st": event.state,
        "exp": event.expires_at_ms,
        "parts": event.parts,
        "lines": lines,
    }
    for name, value in (
        ("fp", fp),
        ("cust", event.customer),
        ("ref", event.reference),
        ("sale", event.sale),
        ("lim", event.sale_limit),
        ("ck", event.customer_key),
    ):
        if value is not None:
            record[name] = value
    part.holds[event.hold_id] = _encode(record).decode()
    if event.state != "held":
        part.finished[event.hold_id] = event.at_ms
        return
    part.expiry[event.hold_id] = event.expires_at_ms
    for sku, location, qty in lines:
        part.stock[f"{sku}:{location}:held"] += qty
        part.stock[f"{sku}:{event.channel}:channel_held"] += qty


async def _restore_holds(store: Store, parts: list[_Partition], since_ms: int) -> None:
    """Every hold part's latest state, in the partition it belongs to now."""
    fps = _fingerprints(await store.placed_hold_events(since_ms))
    by_hold: dict[str, list[HoldEventRow]] = defaultdict(list)
    for event in await store.latest_hold_events(since_ms):
        by_hold[event.hold_id].append(event)
    for events in by_hold.values():
        for p, event in _in_this_layout(events):
            _restore_hold(parts[p], event, fps.get(event.hold_id))


def _count_toward_limit(parts: list[_Partition], event: HoldEventRow) -> None:
    """A sale hold's units count toward its customer's limit while held or confirmed
    (lua/lib.lua `track_limit`), in each SKU's partition."""
    if event.state in ("held", "confirmed"):
        for sku, _, qty in _lines.decode(event.lines):
            stock = parts[keys.partition_of(sku)].stock
            stock[f"{sku}:{event.sale}:limit.{event.customer_key}"] += qty


def _in_this_layout(events: list[HoldEventRow]) -> list[tuple[int, HoldEventRow]]:
    """A hold's latest part events, each with the partition it is restored into.

    A ledger written under another partition count (8, before sg:layout) has parts that
    no longer match: there each line goes to its SKU's partition now, and the hold's
    home, partition_of(hold_id), gets a record even without lines, as Engine.hold makes
    for a hold whose id lives apart from its SKUs.
    """
    if all(
        e.part < keys.PARTITIONS
        and all(keys.partition_of(sku) == e.part for sku, _, _ in _lines.decode(e.lines))
        for e in events
    ) and any(e.part == keys.partition_of(e.hold_id) for e in events):
        return [(e.part, e) for e in events]
    home = keys.partition_of(events[0].hold_id)
    split: dict[int, tuple[HoldEventRow, list[tuple[str, str, int]]]] = {}
    for event in events:
        for line in _lines.decode(event.lines):
            split.setdefault(keys.partition_of(line[0]), (event, []))[1].append(line)
    # Only a home part can be empty; without one, the latest part stands for the hold.
    empty = [e for e in events if e.lines in ("[]", "{}")]
    split.setdefault(home, ((empty or [max(events, key=lambda e: e.at_ms)])[0], []))
    csv = ",".join(map(str, sorted(split)))
    return [
        (p, msgspec.structs.replace(e, part=p, parts=csv, lines=_encode(lines).decode()))
        for p, (e, lines) in split.items()
    ]


def _allocations(parts: list[_Partition], catalog: str | None) -> dict[tuple[str, str], int]:
    """(sku, channel) -> since_ms of every cap or fence policy in force."""
    defaults: dict[str, Policy] = {}
    if catalog:
        defaults = {
            n: c.policy for n, c in msgspec.json.decode(catalog, type=Catalog).channels.items()
        }
    found = {}
    for part in parts:
        for sku, raw in part.skus.items():
            own = msgspec.json.decode(raw, type=SkuSettings).policies
            for channel, default in defaults.items():
                policy = own.get(channel, default)
                if policy.kind in (PolicyKind.CAP, PolicyKind.FENCE):
                    found[sku, channel] = policy.since_ms
    return found


async def _restore_sold(store: Store, parts: list[_Partition], catalog: str | None) -> None:
    """The `sold` counters of caps and fences: the channel's sales since its policy was set,
    less its cancelled orders, never below zero at any step (as lib.lua add_sold counts)."""
    since = _allocations(parts, catalog)
    if not since:
        return
    sold: dict[tuple[str, str], int] = defaultdict(int)
    for sku, channel, delta, at_ms in await store.channel_sales(min(since.values())):
        start = since.get((sku, channel))
        if start is not None and at_ms >= start:
            sold[sku, channel] = max(0, sold[sku, channel] + delta)
    for (sku, channel), units in sold.items():
        fields = parts[keys.partition_of(sku)].stock
        fields[f"{sku}:{channel}:sold"] = units
        fields[f"{sku}:{channel}:sold_since"] = since[sku, channel]


async def _claim_op_ids(client: Any, store: Store, parts: list[_Partition], ttl_ms: int) -> None:
    """The op ids of recent moves, so that retrying them after the rebuild is refused."""
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    for move_id, kind, sku, at_ms in await store.moves_since(now_ms - ttl_ms):
        if kind != "sale":  # sales are named after their hold, which comes back itself
            part = parts[keys.partition_of(sku)]
            part.op_claims[move_id.rsplit(":", 1)[0]] = at_ms + ttl_ms - now_ms


def _chunks(mapping: dict[str, Any]) -> Iterator[dict[str, Any]]:
    items = list(mapping.items())
    for i in range(0, len(items), CHUNK):
        yield dict(items[i : i + CHUNK])


async def _write(client: Any, p: int, part: _Partition, catalog: str | None, clear: bool) -> None:
    """One MULTI/EXEC per partition: its keys share a slot, so it also works on a cluster."""
    names = dict(zip(keys.PARTITION_KEYS, keys.partition_keys(p), strict=True))
    pipe = client.pipeline(transaction=True)
    if clear:
        pipe.delete(*(names[name] for name in _STATE_KEYS))
    if catalog is not None:
        pipe.set(names["catalog"], catalog)
    for key, mapping in (("skus", part.skus), ("stock", part.stock), ("holds", part.holds)):
        for chunk in _chunks(mapping):
            pipe.hset(names[key], mapping=chunk)
    for key, scores in (("expiry", part.expiry), ("finished", part.finished)):
        for chunk in _chunks(scores):
            pipe.zadd(names[key], chunk)
    for op_id, ttl_ms in part.op_claims.items():
        # A claim reads as a conflict to every script (lua/lib.lua `replayed`).
        pipe.set(keys.op(p, op_id), "claim:rebuilt", px=max(ttl_ms, 1))
    await pipe.execute()
