"""Operation ids and payload fingerprints."""

from __future__ import annotations

import hashlib
import secrets
import zlib
from typing import Any

import msgspec

from . import keys


def new_id(partition: int | None = None) -> str:
    """A random id; with a partition, one that keys.partition_of maps there."""
    base = secrets.token_hex(8)
    if partition is None:
        return base
    crc = zlib.crc32(base.encode())
    for i in range(4096):
        suffix = b"%03x" % i
        if zlib.crc32(suffix, crc) % keys.PARTITIONS == partition:
            return base + suffix.decode()
    raise AssertionError("unreachable: 4096 suffixes cover every partition")


def fingerprint(*parts: Any) -> str:
    """Identifies an operation's payload, so a reused id with other data is caught."""
    return hashlib.blake2b(msgspec.json.encode(parts), digest_size=8).hexdigest()
