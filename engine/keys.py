"""The whole keyspace on one screen.

Stock lives in a fixed number of partitions. Each partition is one hash slot
(its keys share one hash tag), so every script call touches exactly one slot and
works unchanged on a single node and on Redis Cluster. A SKU belongs to one
partition; a hold's home partition is where its record is looked up. The
outbox is one stream per partition, so a reader finds every entry by walking
``range(PARTITIONS)`` without SCAN.

Partition keys, in the order every script receives them as KEYS[1..7]:

========  ======  ===========================================================
catalog   string  JSON: locations and channels (copied to each partition)
skus      hash    sku -> JSON settings (buffer, override, policies)
stock     hash    "sku:location:on_hand|committed|held" -> units, and
                  "sku:channel:channel_held" -> units (held counts holds
                  not yet settled; scripts settle due holds first)
holds     hash    hold id -> JSON hold record (this partition's lines)
expiry    zset    hold id -> expires_at_ms, live holds only
outbox    stream  moves and hold events, in commit order
finished  zset    hold id -> finished_at_ms, for retention
========  ======  ===========================================================

Per-operation idempotency records are strings ``<partition prefix>:op:<op id>``. A
partition's prefix is ``sg:{<tag>}``, for example ``sg:{p0of4.2}:stock``.

``sg:layout`` records the partition count that laid the keyspace out; ``connect``
refuses a keyspace laid out otherwise (see ``LEGACY_TAGS``).
"""

from __future__ import annotations

import zlib
from functools import cache

from redis.crc import key_slot

PREFIX = "sg"
# Fixed: changing it moves SKUs between partitions. Operations batch per partition, so on
# one server fewer partitions mean fuller script calls; a cluster can use up to this many
# masters. 4: 64 concurrent callers over 10,000 SKUs make about 12 holds a call, not 6.
PARTITIONS = 4
LAYOUT = f"{PREFIX}:layout"  # str(PARTITIONS) of the keyspace's layout

PARTITION_KEYS = ("catalog", "skus", "stock", "holds", "expiry", "outbox", "finished")


def partition_of(name: str) -> int:
    """Map a SKU or hold id to its partition; stable across processes and versions."""
    return partition_of_crc(zlib.crc32(name.encode()))


def partition_of_crc(crc: int) -> int:
    """The partition of a name whose crc32 is crc: the crc's top bits."""
    return crc >> _SHIFT


_SHIFT = 33 - PARTITIONS.bit_length()  # 32 - log2(PARTITIONS), a power of two


def _balanced_tags(count: int, name: str) -> tuple[str, ...]:
    # Tag i hashes into the i-th of count equal ranges of the 16384 cluster slots, so a
    # cluster whose masters own equal contiguous ranges (as `redis-cli --cluster create`
    # and the embedded cluster assign them) gets the partitions evenly.
    tags = []
    for i in range(count):
        low, high = i * SLOTS // count, (i + 1) * SLOTS // count
        n = 0
        while not low <= key_slot(f"{name.format(i)}.{n}".encode()) < high:
            n += 1
        tags.append(f"{name.format(i)}.{n}")
    return tuple(tags)


SLOTS = 16384
_TAGS = _balanced_tags(PARTITIONS, f"p{{}}of{PARTITIONS}")
# The tags of the 8-partition layout that came before sg:layout: a keyspace without the
# record but with these keys was laid out for 8 partitions.
LEGACY_TAGS = _balanced_tags(8, "p{}")


def tag(partition: int) -> str:
    """The prefix of every key of a partition: its hash tag puts them all in one slot."""
    return f"{PREFIX}:{{{_TAGS[partition]}}}"


@cache
def partition_keys(partition: int) -> tuple[str, ...]:
    """The KEYS[1..7] every script of that partition receives."""
    return tagged_keys(_TAGS[partition])


def tagged_keys(partition_tag: str) -> tuple[str, ...]:
    """The partition keys under one hash tag (this layout's or a LEGACY_TAGS one)."""
    return tuple(f"{PREFIX}:{{{partition_tag}}}:{name}" for name in PARTITION_KEYS)


def outbox(partition: int) -> str:
    return f"{tag(partition)}:outbox"


def stock(partition: int) -> str:
    return f"{tag(partition)}:stock"


def dead_letters(partition: int) -> str:
    """Outbox entries the writer could not persist, with the error (never read by scripts)."""
    return f"{tag(partition)}:dead"


def holds(partition: int) -> str:
    return f"{tag(partition)}:holds"


def op(partition: int, op_id: str) -> str:
    """Idempotency record of one operation, in the partition it changes."""
    return f"{tag(partition)}:op:{op_id}"


# A flash sale's admission queue lives in one slot of its own (lua/sale_lib.lua has the
# layout); SALES maps every sale's name to its definition, for listing and lookups.
SALE_KEYS = ("config", "queue", "tickets", "active", "state", "customers")
SALES = f"{PREFIX}:sales"
SECRET = f"{PREFIX}:secret"  # signs admission tokens; created once, shared by every process


@cache
def sale_keys(sale: str) -> tuple[str, ...]:
    return tuple(f"{PREFIX}:{{sale:{sale}}}:{name}" for name in SALE_KEYS)
