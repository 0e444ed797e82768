"""Connecting to Redis, Valkey or Redis Cluster, or starting the embedded Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from .config import Settings
from .embedded import EmbeddedValkey
from .engine import Engine

MAX_CONNECTIONS = 128


async def connect(url: str, **options: Any) -> Any:
    """A client for the server at url: a RedisCluster if that server is in cluster mode."""
    # A blocking pool makes a burst of calls wait for a connection instead of failing.
    pool = redis.BlockingConnectionPool.from_url(
        url, decode_responses=True, max_connections=MAX_CONNECTIONS, timeout=30, **options
    )
    client = redis.Redis.from_pool(pool)
    try:
        info = await client.info("cluster")
    except BaseException:
        await client.aclose()
        raise
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    return RedisCluster.from_url(url, decode_responses=True, **options)


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[Engine]:
    """An Engine on settings.redis_url, or on a private Valkey in settings.data_dir."""
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedValkey(settings.data_dir / "valkey", appendfsync=settings.appendfsync)
        embedded.start()
        url = embedded.url
    try:
        client = await connect(url)
        try:
            yield Engine(client, settings)
        finally:
            await client.aclose()
    finally:
        if embedded is not None:
            embedded.stop()
