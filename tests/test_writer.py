"""The background writer: outbox to ledger, exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import setup_shop

from engine import Engine, keys
from engine.ledger import rows
from engine.store import Store
from engine.writer import GROUP, Writer


async def moves_made(engine: Engine) -> Engine:
    """Receipts on every SKU, a transfer, and a confirmed and a released hold: 7 moves."""
    await setup_shop(engine)
    for sku in ("A", "B", "C"):
        await engine.receive(sku, "wh1", 5)
    await engine.transfer("A", "wh1", "wh2", 2)
    sold = await engine.hold("web", {"A": 1, "B": 2}, ttl_ms=60_000)
    await engine.confirm(sold.id, reference="order-1")
    await engine.release((await engine.hold("web", {"C": 1}, ttl_ms=60_000)).id)
    return engine


async def drain(writer: Writer) -> int:
    total = 0
    while written := await writer.step():
        total += written
    return total


async def test_every_move_reaches_the_ledger_once_and_is_acknowledged(
    client: Any, store: Store
) -> None:
    engine = await moves_made(Engine(client))
    writer = Writer(client, store)
    await writer.setup()
    assert await drain(writer) > 0
    assert await store.count("moves") == 3 + 2 + 2
    # two parts placed, extended and confirmed (a multi-part confirm), one placed and released
    assert await store.count("hold_events") == 2 * 3 + 2
    lag = await writer.lag()
    assert lag.pending == 0
    await engine.receive("A", "wh1", 1)
    assert (await writer.lag()).pending == 1
    await drain(writer)
    assert await store.count("moves") == 8
    assert (await writer.lag()).pending == 0


async def test_entries_of_a_dead_consumer_are_claimed_and_written_once(
    client: Any, store: Store
) -> None:
    await moves_made(Engine(client))
    crashed = Writer(client, store, consumer="crashed")
    await crashed.setup()
    # It reads every entry, writes half, and dies before acknowledging anything.
    taken = await crashed._take()
    for p, entries in taken[: len(taken) // 2]:
        await store.write(rows(p, entries))
    assert (await crashed.lag()).pending > 0
    survivor = Writer(client, store, consumer="survivor", claim_idle_ms=0)
    await drain(survivor)
    assert await store.count("moves") == 7
    assert (await survivor.lag()).pending == 0


async def test_two_writers_share_the_streams_without_loss_or_duplicates(
    client: Any, store: Store
) -> None:
    engine = Engine(client)
    await setup_shop(engine)
    writers = [Writer(client, store, consumer=f"w{i}", batch=5) for i in range(2)]
    await writers[0].setup()
    await asyncio.gather(*(engine.receive("A", "wh1", 1) for _ in range(200)))
    await asyncio.gather(*(drain(w) for w in writers))
    await drain(writers[0])
    assert await store.count("moves") == 200
    assert (await writers[0].lag()).pending == 0


async def test_an_entry_that_cannot_be_written_goes_to_the_dead_letters(
    client: Any, store: Store
) -> None:
    engine = await moves_made(Engine(client))
    writer = Writer(client, store)
    await writer.setup()
    p = keys.partition_of("A")
    await client.xadd(keys.outbox(p), {"at_ms": "1", "events": '[{"type":"bogus"}]'})
    await drain(writer)
    assert await store.count("moves") == 7, "the good entries were held back"
    dead = await client.xrange(keys.dead_letters(p))
    assert len(dead) == 1
    assert "unknown outbox event type" in dead[0][1]["error"]
    assert (await writer.lag()).pending == 0
    await engine.receive("A", "wh1", 1)
    await drain(writer)
    assert await store.count("moves") == 8


async def test_trimming_keeps_what_any_group_still_needs(client: Any, store: Store) -> None:
    await moves_made(Engine(client))
    writer = Writer(client, store)
    await writer.setup()
    p = keys.partition_of("A")
    stream = keys.outbox(p)
    await client.xgroup_create(stream, "audit", id="0")  # another reader, not yet caught up
    await drain(writer)
    length = await client.xlen(stream)
    await writer.trim()
    assert await client.xlen(stream) == length, "the audit group has read nothing yet"
    others = [keys.outbox(q) for q in range(keys.PARTITIONS) if q != p]
    assert [await client.xlen(s) for s in others] == [0] * len(others)
    await client.xreadgroup("audit", "a1", {stream: ">"}, count=2)
    await writer.trim()
    assert await client.xlen(stream) == length, "read but not acknowledged: still needed"
    entries = await client.xreadgroup("audit", "a1", {stream: "0"}, count=2)
    await client.xack(stream, "audit", *[entry_id for entry_id, _ in entries[0][1]])
    await writer.trim()
    assert await client.xlen(stream) == length - 2
    assert {g["name"] for g in await client.xinfo_groups(stream)} == {GROUP, "audit"}


@pytest.mark.cluster
async def test_the_writer_works_on_a_cluster(fresh_cluster_client: Any, tmp_path: Any) -> None:
    client = fresh_cluster_client
    store = Store.from_url(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    try:
        await moves_made(Engine(client))
        writer = Writer(client, store)
        await writer.setup()
        await drain(writer)
        assert await store.count("moves") == 7
        assert (await writer.lag()).pending == 0
        assert await writer.trim() > 0
    finally:
        await store.close()
