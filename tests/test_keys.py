"""The keyspace: one hash slot per partition, ids that land where they should."""

from __future__ import annotations

from redis.crc import key_slot

from engine import keys
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
    assert [keys.partition_of(s) for s in ("A", "B", "C", "TSHIRT-RED-M")] == [3, 1, 7, 4]


def test_new_ids_land_in_the_partition_asked_for() -> None:
    for p in range(keys.PARTITIONS):
        ids = {new_id(p) for _ in range(500)}
        assert len(ids) == 500
        assert {keys.partition_of(i) for i in ids} == {p}
