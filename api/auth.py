"""API keys and roles.

A key is `sg_<id>_<secret>`. The ledger database keeps its id, name, role and the
SHA-256 of the whole key, never the key itself: it is printed once, when created.
(The secret is 256 random bits, so a fast hash is safe; a slow password hash buys
nothing against a key that cannot be guessed.)

Every server process keeps the live keys in memory and reloads them from the
database every RELOAD_S seconds, so a revoked key stops working within that time
and a new one starts working at once (an unknown key triggers a reload, at most
once a second).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from enum import StrEnum

import msgspec

from engine.store import ApiKeyRow, Store

from .problems import ApiError

RELOAD_S = 2.0
_MISS_RELOAD_S = 1.0


class Role(StrEnum):
    CHECKOUT = "checkout"  # holds, and reads
    OPERATOR = "operator"  # everything
    READ_ONLY = "read-only"  # reads only


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the key's id and name (recorded as the actor of moves) and role."""

    key_id: str
    name: str
    role: Role


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, role: Role) -> tuple[str, ApiKeyRow]:
    """A fresh key and the row that stores it; the key is shown once and never stored."""
    key_id = secrets.token_hex(4)
    key = f"sg_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKeyRow(key_id, name, role.value, hash_key(key), int(time.time() * 1000))
    return key, row


async def create_key(store: Store, name: str, role: Role) -> tuple[str, ApiKeyRow]:
    key, row = new_key(name, role)
    await store.add_key(row)
    return key, row


class Keys:
    """The live keys of one server process, by hash."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_hash: dict[str, Principal] = {}
        self._miss_reload_at = -_MISS_RELOAD_S
        self._lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()

    async def load(self) -> int:
        """Reloads every live key; returns how many there are."""
        async with self._lock:
            rows = await self.store.api_keys()
            self._by_hash = {
                row.hash: Principal(row.id, row.name, Role(row.role))
                for row in rows
                if row.revoked_ms is None
            }
            return len(self._by_hash)

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise ApiError(401, "unauthorized", "send the API key as 'Authorization: Bearer <key>'")
        digest = hash_key(key)
        principal = self._by_hash.get(digest)
        if principal is None:
            principal = await self._reload_for(digest)
        if principal is None:
            raise ApiError(401, "unauthorized", "this API key is unknown or revoked")
        return principal

    async def _reload_for(self, digest: str) -> Principal | None:
        """An unknown key reloads the keys, at most once a second, so forged keys cannot
        flood the database; a key created a moment ago works on its first call. Callers
        that miss while a reload runs wait for it rather than fail."""
        async with self._reload_lock:
            principal = self._by_hash.get(digest)
            if principal is None and time.monotonic() - self._miss_reload_at > _MISS_RELOAD_S:
                await self.load()
                self._miss_reload_at = time.monotonic()
                principal = self._by_hash.get(digest)
            return principal

    async def reload_forever(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_S)
            try:
                await self.load()
            except Exception:  # the database is away: keep the keys we have, try again
                continue


def require(principal: Principal, allowed: frozenset[Role]) -> None:
    if principal.role not in allowed:
        raise ApiError(
            403,
            "forbidden",
            f"a {principal.role} key may not do this",
            allowed=sorted(allowed),
        )
