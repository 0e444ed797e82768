"""Operation ids and payload fingerprints."""

from __future__ import annotations

import hashlib
import random
import zlib
from typing import Any

from . import keys

_SUFFIXES = [b"%03x" % i for i in range(4096)]


def new_id(partition: int | None = None) -> str:
    """A random id; with a partition, one that keys.partition_of maps there."""
    base = f"{random.getrandbits(64):016x}"  # unique enough; random reseeds after fork
    if partition is None:
        return base
    crc = zlib.crc32(base.encode())
    for suffix in _SUFFIXES:
        if zlib.crc32(suffix, crc) % keys.PARTITIONS == partition:
            return base + suffix.decode()
    raise AssertionError("unreachable: 4096 suffixes cover every partition")


def fingerprint(*parts: Any) -> str:
    """Identifies an operation's payload, so a reused id with other data is caught.

    Short payloads are their own fingerprint (exact, and cheaper than hashing).
    """
    text = repr(parts)
    if len(text) <= 64:
        return text
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
