"""The whole keyspace on one screen.

Stock lives in a fixed number of partitions. Each partition is one hash slot
(its hash tag is ``{pNN}``), so every script call touches exactly one slot and
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

Per-operation idempotency records are strings ``sg:{pNN}:op:<op id>``.
"""

from __future__ import annotations

import zlib
from functools import cache

PREFIX = "sg"
PARTITIONS = 16  # fixed: changing it moves SKUs between partitions

PARTITION_KEYS = ("catalog", "skus", "stock", "holds", "expiry", "outbox", "finished")


def partition_of(name: str) -> int:
    """Map a SKU or hold id to its partition; stable across processes and versions."""
    return zlib.crc32(name.encode()) % PARTITIONS


def tag(partition: int) -> str:
    return f"{PREFIX}:{{p{partition:02d}}}"


@cache
def partition_keys(partition: int) -> tuple[str, ...]:
    """The KEYS[1..7] every script of that partition receives."""
    base = tag(partition)
    return tuple(f"{base}:{name}" for name in PARTITION_KEYS)


def outbox(partition: int) -> str:
    return f"{tag(partition)}:outbox"


def stock(partition: int) -> str:
    return f"{tag(partition)}:stock"


def holds(partition: int) -> str:
    return f"{tag(partition)}:holds"


def op(partition: int, op_id: str) -> str:
    """Idempotency record of one operation, in the partition it changes."""
    return f"{tag(partition)}:op:{op_id}"
