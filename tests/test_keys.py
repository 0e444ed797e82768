"""The keyspace: one hash slot per partition, ids that land where they should."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import OWNED
from redis.crc import key_slot

from engine import connect, keys
from engine.cli import main
from engine.errors import KeyspaceLayoutError
from engine.ids import new_id


def test_every_key_of_a_partition_is_in_one_slot() -> None:
    slots = set()
    for p in range(keys.PARTITIONS):
        names = [*keys.partition_keys(p), keys.op(p, "any-op"), keys.outbox(p), keys.holds(p)]
        partition_slots = {key_slot(name.encode()) for name in names}
        assert len(partition_slots) == 1, names
        slots |= partition_slots
    assert len(slots) == keys.PARTITIONS, "two partitions share a slot"
    # Evenly spread: partition i hashes into the i-th equal range of the 16384 slots.
    ranges = sorted(slot * keys.PARTITIONS // 16384 for slot in slots)
    assert ranges == list(range(keys.PARTITIONS))


def test_partition_of_is_stable_across_processes() -> None:
    # crc32, not hash(): the same SKU must map to the same partition in every process.
    assert [keys.partition_of(s) for s in ("A", "B", "C", "TSHIRT-RED-M")] == [3, 1, 0, 2]


def test_new_ids_land_in_the_partition_asked_for() -> None:
    for p in range(keys.PARTITIONS):
        ids = {new_id(p) for _ in range(500)}
        assert len(ids) == 500
        assert {keys.partition_of(i) for i in ids} == {p}


async def test_connect_records_the_layout_in_an_empty_keyspace(client: Any, redis_url: str) -> None:
    await client.delete(keys.LAYOUT)
    await (await connect(redis_url)).aclose()
    assert await client.get(keys.LAYOUT) == str(keys.PARTITIONS)
    await (await connect(redis_url)).aclose()  # and finds it there the next time


async def test_connect_refuses_a_keyspace_of_another_layout(client: Any, redis_url: str) -> None:
    await client.set(keys.LAYOUT, "8")
    try:
        with pytest.raises(KeyspaceLayoutError) as caught:
            await connect(redis_url)
        assert (caught.value.found, caught.value.expected) == ("8", keys.PARTITIONS)
    finally:
        await client.delete(keys.LAYOUT)  # later tests connect to this database too


async def test_connect_refuses_a_keyspace_laid_out_before_the_record(
    client: Any, redis_url: str
) -> None:
    # Partition 5 of the 8-partition layout: its SKUs would be looked up elsewhere now.
    await client.delete(keys.LAYOUT)
    legacy = keys.tagged_keys(keys.LEGACY_TAGS[5])[2]  # its stock hash
    await client.hset(legacy, "A:wh1:on_hand", 3)
    try:
        with pytest.raises(KeyspaceLayoutError) as caught:
            await connect(redis_url)
        assert caught.value.found == "8"
        assert await client.get(keys.LAYOUT) is None, "recorded a layout over the old keyspace"
    finally:
        await client.delete(legacy)


def test_the_cli_says_how_to_recover_from_another_layout(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    with redis.Redis.from_url(redis_url) as sync:
        sync.flushdb()
        sync.set(OWNED, "1")
        sync.set(keys.LAYOUT, "8")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STOCKGUARD_DATA_DIR", str(tmp_path))
    try:
        assert main(["reconcile"]) == 2
    finally:
        with redis.Redis.from_url(redis_url) as sync:
            sync.delete(keys.LAYOUT)
    error = capsys.readouterr().err
    assert "laid out in 8 partitions; this version uses 4" in error
    assert "stockguard rebuild" in error
