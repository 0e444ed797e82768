"""The Idempotency-Key header, honoured on every mutating call (the Stripe convention).

The first request with a key runs; its response (status and body) is kept for
`ttl_ms`, and a replay with the same method, path and body gets that response
again. The same key with anything else gets 409 idempotency-conflict, and a replay
while the first request still runs gets 409 idempotency-in-progress.

A server that dies mid-request leaves a pending record that lapses after
PENDING_TTL_MS; the retry then runs again. It cannot apply twice, because the key
also names the engine operation (the hold id or the move's op id, see
`engine_id`), and the engine replays an operation id it has seen.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from engine import keys
from engine.ids import new_id

from .problems import ApiError

PENDING_TTL_MS = 60_000
MAX_KEY_LENGTH = 255


class Stored(msgspec.Struct, array_like=True):
    fingerprint: str
    status: int = 0  # 0 while the first request runs
    body: str = ""
    content_type: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Stored).decode


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_key(key: str) -> str:
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ApiError(
            400,
            "validation",
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.blake2b(
        b"%s %s\n%s" % (method.encode(), path.encode(), body), digest_size=16
    ).hexdigest()


def engine_id(key: str, sku: str | None = None) -> str:
    """The engine operation id this key stands for, homed with the SKU if there is one
    (so the engine needs no cross-partition claim for it)."""
    base = "i" + _digest(key)[:23]
    return new_id(keys.partition_of(sku), base) if sku is not None else base


class Idempotency:
    """Begin/finish records in Redis, one string key per Idempotency-Key."""

    def __init__(self, client: Any, ttl_ms: int) -> None:
        self.client = client
        self.ttl_ms = ttl_ms

    @staticmethod
    def _key(key: str) -> str:
        return f"{keys.PREFIX}:idem:{_digest(key)}"

    async def begin(self, key: str, fp: str) -> Stored | None:
        """None if this request is the first with the key; else the first one's record."""
        raw = await self.client.set(
            self._key(key), _encode(Stored(fp)), nx=True, get=True, px=PENDING_TTL_MS
        )
        if raw is None:
            return None
        stored = _decode(raw)
        if stored.fingerprint != fp:
            raise ApiError(
                409,
                "idempotency-conflict",
                "this Idempotency-Key was used with a different method, path or body",
            )
        if not stored.status:
            raise ApiError(
                409, "idempotency-in-progress", "the first request with this key is still running"
            )
        return stored

    async def finish(self, key: str, fp: str, status: int, body: bytes, content_type: str) -> None:
        stored = Stored(fp, status, body.decode(), content_type)
        await self.client.set(self._key(key), _encode(stored), px=self.ttl_ms)

    async def abandon(self, key: str) -> None:
        """The request failed for a reason a retry may not meet (a 5xx): forget it."""
        await self.client.delete(self._key(key))
