"""Connecting to Redis, Valkey or Redis Cluster, or starting the embedded Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from . import keys
from .config import Settings
from .embedded import EmbeddedValkey
from .engine import Engine
from .errors import KeyspaceLayoutError

MAX_CONNECTIONS = 1024


async def connect(url: str, **options: Any) -> Any:
    """A client for the server at url: a RedisCluster if that server is in cluster mode.

    Raises KeyspaceLayoutError if the server's keyspace was laid out for another
    partition count.
    """
    # Coalescing keeps the connections in use few; the cap only stops a runaway caller.
    client: Any = redis.from_url(
        url, decode_responses=True, max_connections=MAX_CONNECTIONS, **options
    )
    try:
        if (await client.info("cluster")).get("cluster_enabled"):
            await client.aclose()
            client = RedisCluster.from_url(url, decode_responses=True, **options)
        await check_layout(client)
    except BaseException:
        await client.aclose()
        raise
    return client


async def is_empty(client: Any) -> bool:
    """Whether the database holds nothing but the layout record."""
    return bool(await client.dbsize() <= await client.exists(keys.LAYOUT))


async def check_layout(client: Any) -> None:
    """Records the partition count in an empty keyspace; refuses one laid out for another."""
    found = await client.get(keys.LAYOUT)
    if found is None:
        # Made before the layout was recorded: 8 partitions, if any of their keys exist.
        for tag in keys.LEGACY_TAGS:  # one EXISTS per partition: its keys share a slot
            if await client.exists(*keys.tagged_keys(tag)):
                raise KeyspaceLayoutError(str(len(keys.LEGACY_TAGS)), keys.PARTITIONS)
        # Another process may record it first: SET NX GET returns what is there.
        found = await client.set(keys.LAYOUT, keys.PARTITIONS, nx=True, get=True)
    if found not in (None, str(keys.PARTITIONS)):
        raise KeyspaceLayoutError(found, keys.PARTITIONS)


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[Engine]:
    """An Engine on settings.redis_url, else on the Valkey that serves settings.data_dir:
    the one a running `stockguard serve` started there, or a private one started now."""
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedValkey(
            settings.data_dir / "valkey",
            appendfsync=settings.appendfsync,
            jemalloc=settings.jemalloc,
        )
        url = embedded.running_url()  # a running `serve` on this data dir: share its server
        if url is None:
            embedded.start()
            url = embedded.url
        else:
            embedded = None
    try:
        client = await connect(url)
        try:
            yield Engine(client, settings)
        finally:
            await client.aclose()
    finally:
        if embedded is not None:
            embedded.stop()
