"""Reconcile: on_hand and committed in Redis against the sums of the ledger's moves."""

from __future__ import annotations

from typing import Any

import msgspec
from helpers import setup_shop

from engine import Engine, keys
from engine.reconcile import Drift, format_table, reconcile, to_json
from engine.store import Store
from engine.writer import Writer


async def drain(writer: Writer) -> None:
    while await writer.step():
        pass


async def trading(client: Any, store: Store) -> tuple[Engine, Writer]:
    """Receipts, a sale, a shipment, a transfer and a live hold, all in the ledger."""
    engine = Engine(client)
    writer = Writer(client, store)
    await writer.setup()
    await setup_shop(engine)
    for sku in ("A", "B", "C"):
        await engine.receive(sku, "wh1", 10)
    sold = await engine.hold("web", {"A": 4, "B": 1}, ttl_ms=60_000)
    await engine.confirm(sold.id, reference="order-1")
    await engine.ship("A", "wh1", 1, reference="order-1")
    await engine.transfer("C", "wh1", "wh2", 3)
    await engine.hold("web", {"C": 2}, ttl_ms=60_000)
    await drain(writer)
    return engine, writer


async def test_no_drift_once_the_writer_has_caught_up(client: Any, store: Store) -> None:
    engine, writer = await trading(client, store)
    assert await reconcile(client, store) == []
    await engine.receive("A", "wh2", 5)
    assert await reconcile(client, store) == [Drift("A", "wh2", "on_hand", 5, 0)], "writer lag"
    await drain(writer)
    assert await reconcile(client, store) == []
    assert format_table([]) == "no drift"


async def test_a_corrupted_field_is_reported_with_both_values(client: Any, store: Store) -> None:
    await trading(client, store)
    a, c = keys.stock(keys.partition_of("A")), keys.stock(keys.partition_of("C"))
    await client.hincrby(a, "A:wh1:on_hand", 3)  # ledger: 10 received, 1 shipped
    await client.hdel(a, "A:wh1:committed")  # ledger: 4 sold, 1 shipped
    await client.hset(c, "C:wh2:held", 99)  # held is not in the ledger: not compared
    drifts = await reconcile(client, store)
    assert drifts == [
        Drift("A", "wh1", "committed", redis=0, ledger=3),
        Drift("A", "wh1", "on_hand", redis=12, ledger=9),
    ]
    assert msgspec.json.decode(to_json(drifts)) == [
        {"sku": "A", "location": "wh1", "field": "committed", "redis": 0, "ledger": 3},
        {"sku": "A", "location": "wh1", "field": "on_hand", "redis": 12, "ledger": 9},
    ]


async def test_the_table_names_the_sku_and_aligns_both_values() -> None:
    drifts = [
        Drift("TSHIRT-RED-M", "warehouse", "on_hand", redis=1250, ledger=7),
        Drift("MUG", "store", "committed", redis=0, ledger=3),
    ]
    table = format_table(drifts)
    header, first, second, summary = table.splitlines()
    assert header.split() == ["sku", "location", "field", "redis", "ledger", "redis-ledger"]
    assert first.split() == ["TSHIRT-RED-M", "warehouse", "on_hand", "1250", "7", "+1243"]
    assert second.split() == ["MUG", "store", "committed", "0", "3", "-3"]
    assert summary == "2 field(s) drift"
    # numbers are right-aligned under their header, names left-aligned
    for column in ("redis", "ledger"):
        end = header.index(column) + len(column)
        assert first[end - 1].isdigit() and second[end - 1].isdigit()
        assert first[end] == " " and second[end] == " "
    assert second.index("store") == first.index("warehouse") == header.index("location")
