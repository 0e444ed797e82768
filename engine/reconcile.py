"""Reconcile: where Redis and the SQL ledger disagree on on_hand or committed.

For every SKU and location, the live state in Redis (the `stock` hash of the
SKU's partition) should equal the sum of the ledger's moves. A field missing on
one side counts as 0 there. Redis is read with one HGETALL per partition, so no
SCAN is needed, and the ledger with one grouped SUM.

The two are read one after the other, not at one instant: moves still in the
outbox show up as drift until the writer has persisted them. Run it with the
writer caught up (or run it twice: real drift stays, writer lag goes away).
`rebuild(client, store, sku=...)` repairs one SKU from the ledger.
"""

from __future__ import annotations

from typing import Any

import msgspec

from . import keys
from .store import Store

FIELDS = ("on_hand", "committed")


class Drift(msgspec.Struct, frozen=True):
    """One field on which Redis and the ledger disagree."""

    sku: str
    location: str
    field: str  # "on_hand" or "committed"
    redis: int
    ledger: int


async def reconcile(client: Any, store: Store) -> list[Drift]:
    """Every (sku, location, field) whose value in Redis differs from the ledger's sum."""
    live: dict[tuple[str, str, str], int] = {}
    for p in range(keys.PARTITIONS):
        for name, value in (await client.hgetall(keys.stock(p))).items():
            sku, location, field = name.split(":", 2)  # names never contain ':'
            if field in FIELDS:
                live[sku, location, field] = int(value)
    recorded: dict[tuple[str, str, str], int] = {}
    for sku, location, on_hand, committed in await store.stock_totals():
        recorded[sku, location, "on_hand"] = on_hand
        recorded[sku, location, "committed"] = committed
    drifts = []
    for key in sorted(live.keys() | recorded.keys()):
        in_redis, in_ledger = live.get(key, 0), recorded.get(key, 0)
        if in_redis != in_ledger:
            drifts.append(Drift(*key, redis=in_redis, ledger=in_ledger))
    return drifts


def format_table(drifts: list[Drift]) -> str:
    """The drifts as an aligned table for a terminal, or "no drift"."""
    if not drifts:
        return "no drift"
    header = ("sku", "location", "field", "redis", "ledger", "redis-ledger")
    rows = [
        (d.sku, d.location, d.field, str(d.redis), str(d.ledger), f"{d.redis - d.ledger:+d}")
        for d in drifts
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = range(3, len(header))
    lines = [
        "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join([*lines, f"{len(drifts)} field(s) drift"])


def to_json(drifts: list[Drift]) -> bytes:
    """The drifts as a JSON array of {sku, location, field, redis, ledger}."""
    return msgspec.json.encode(drifts)
