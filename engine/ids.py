"""Operation ids and payload fingerprints."""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from typing import Any

import msgspec

from . import keys


def _suffix_for_each_delta() -> list[bytes]:
    # For suffixes of one length, crc32(base + s) XOR crc32(base + s0) does not depend on
    # base (CRC is affine over GF(2)). So one table, keyed by the partition bits that a
    # suffix flips, picks the suffix that lands any base in any partition, with no search.
    reference = zlib.crc32(b"000")
    table: dict[int, bytes] = {}
    for i in range(4096):
        suffix = b"%03x" % i
        table.setdefault(keys.partition_of_crc(zlib.crc32(suffix) ^ reference), suffix)
    return [table[delta] for delta in range(keys.PARTITIONS)]


_SUFFIX = _suffix_for_each_delta()
_encode = msgspec.json.encode


# A generator of our own, seeded from the OS, so that nothing seeding the global `random`
# (Hypothesis does, per example) can make ids repeat; reseeded in a forked child.
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))


def new_id(partition: int | None = None, base: str | None = None) -> str:
    """A random id (or `base`, if given); with a partition, one that keys.partition_of
    maps there: `base` plus three characters."""
    if base is None:
        base = f"{_random.getrandbits(64):016x}"
    if partition is None:
        return base
    landed = keys.partition_of_crc(zlib.crc32(b"000", zlib.crc32(base.encode())))
    return base + _SUFFIX[landed ^ partition].decode()


def fingerprint(*parts: Any) -> str:
    """Identifies an operation's payload, so a reused id with other data is caught.

    64 bits of blake2b over the payload's JSON: 16 characters in every hold record and
    idempotency record (a hold's payload as repr was about 45), and cheaper to make.
    """
    return hashlib.blake2b(_encode(parts), digest_size=8).hexdigest()


def customer_key(customer: str) -> str:
    """A short, fixed-size key for a customer id (which may hold any characters)."""
    return hashlib.blake2b(customer.encode(), digest_size=8).hexdigest()
