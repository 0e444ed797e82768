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

MAX_CONNECTIONS = 1024


async def connect(url: str, **options: Any) -> Any:
    """A client for the server at url: a RedisCluster if that server is in cluster mode."""
    # Coalescing keeps the connections in use few; the cap only stops a runaway caller.
    client = redis.from_url(url, decode_responses=True, max_connections=MAX_CONNECTIONS, **options)
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
