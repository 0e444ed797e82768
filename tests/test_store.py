"""The SQL ledger, one behavioural suite on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import psycopg
import pytest
from helpers import setup_shop

from engine import Engine, keys
from engine.ledger import MoveRow, Rows, rows
from engine.store import Store


def _move(n: int) -> MoveRow:
    return MoveRow(f"op-{n}:1", "receive", "A", "wh1", n, n, 0, at_ms=1_000 + n, reason="asn")


async def test_writing_the_same_rows_twice_adds_them_once(store: Store) -> None:
    batch = Rows(moves=[_move(n) for n in range(1, 6)])
    assert await store.write(batch) == 5
    assert await store.write(batch) == 0
    assert await store.write(Rows(moves=[_move(5), _move(6)])) == 1
    assert await store.count("moves") == 6


async def test_opening_again_keeps_the_schema_and_the_rows(store: Store) -> None:
    await store.write(Rows(moves=[_move(1)]))
    again = Store.from_url(store.url)
    await again.open()
    try:
        assert await again.count("moves") == 1
    finally:
        await again.close()


async def test_a_failing_write_leaves_nothing_behind(store: Store) -> None:
    bad = MoveRow("op-x:1", "receive", "A", "wh1", 1, 1, 0, at_ms=1, reason=None)  # type: ignore[arg-type]
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        await store.write(Rows(moves=[_move(1), bad]))
    assert await store.count("moves") == 0


async def test_every_outbox_event_becomes_a_ledger_row(store: Store, client: Any) -> None:
    engine = Engine(client)
    await setup_shop(engine)
    await engine.receive("A", "wh1", 5, reason="asn-1")
    await engine.transfer("A", "wh1", "wh2", 2)
    hold = await engine.hold("web", {"A": 2}, ttl_ms=60_000)
    await engine.confirm(hold.id, reference="order-1")
    await engine.ship("A", "wh1", 1, reference="order-1")
    ledger = Rows()
    for p in range(keys.PARTITIONS):
        ledger.extend(rows(p, await client.xrange(keys.outbox(p))))
    assert [m.kind for m in ledger.moves] == ["receive", "transfer", "transfer", "sale", "ship"]
    assert [e.event for e in ledger.hold_events] == ["placed", "confirmed"]
    assert {c.version for c in ledger.catalog} == {1, 2, 3, 4, 5, 6}
    assert sorted(s.sku for s in ledger.sku_settings) == ["A", "B", "C"]
    new = await store.write(ledger)
    assert await store.write(ledger) == 0
    counts = [await store.count(t) for t in ("moves", "hold_events", "catalog", "sku_settings")]
    assert counts == [5, 2, 6, 3]
    assert new == 5 + 2 + 6 + 3  # every partition copies the catalog; it counts once


async def test_tasks_sharing_one_store_never_interleave_transactions(store: Store) -> None:
    """Two writers in one process and the API's requests share a store."""

    async def write(n: int) -> int:
        return await store.write(Rows(moves=[_move(n), _move(n + 1000)]))

    results = await asyncio.gather(
        *(write(n) for n in range(1, 41)), *(store.moves_page(limit=5) for _ in range(40))
    )
    assert sum(n for n in results[:40] if isinstance(n, int)) == 80
    assert await store.count("moves") == 80
