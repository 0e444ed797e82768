"""The channel worker: inbound orders and outbound sync for every configured channel.

`stockguard sync` runs it alone; `stockguard serve` runs it in its background process.
Run one per deployment: two would push the same values twice and share rate limits
they each believe are theirs.

- Processor: applies the inbox (webhooks land there through the API).
- Queue readers: channels that deliver through a queue (Amazon's SQS) are read here
  and their messages put in the inbox, then deleted from the queue.
- Pollers: every `poll_interval_s` (channel option, default 300 s), each channel's
  polling fallback re-reads recent orders; the events are applied the same way, so
  what the notifications already brought changes nothing.
- SyncWorker: pushes every ATS change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..engine import Engine
from .base import ChannelConfig, Connector
from .inbound import Inbox, Processor, now_ms
from .registry import connect
from .sync import SyncWorker

log = logging.getLogger("stockguard.channels")

POLL_OVERLAP_MS = 120_000  # re-read a little before the last poll (eBay's advice: 2 min)


@contextlib.asynccontextmanager
async def connectors(configs: list[ChannelConfig]) -> AsyncIterator[dict[str, Connector]]:
    """A connector per channel, each with an HTTP client of its own (closed on exit).

    Each pool is small and never has requests queued: httpcore scans its connections for
    every queued request each time one finishes, so a connector's burst of concurrent
    calls (a read-modify-write per Etsy listing) would cost more CPU than the calls."""
    async with contextlib.AsyncExitStack() as stack:
        connected = {}
        for config in configs:
            http = await stack.enter_async_context(BoundedClient(POOL, timeout=10.0))
            connected[config.channel] = connect(config, http)
        yield connected


POOL = 8  # connections per platform, and requests in flight


class BoundedClient(httpx.AsyncClient):
    """An httpx client that sends at most `size` requests at once, on `size` connections."""

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(limits=httpx.Limits(max_connections=size), **kwargs)
        self._slots = asyncio.Semaphore(size)

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        async with self._slots:
            return await super().send(request, **kwargs)


class ChannelWorker:
    def __init__(
        self,
        engine: Engine,
        connected: dict[str, Connector],
        *,
        resync_interval_s: float = 60.0,
    ) -> None:
        self.engine = engine
        self.connectors = connected
        self.inbox = Inbox(engine)
        self.processor = Processor(engine, connected)
        self.sync = SyncWorker(engine, connected.values(), resync_interval_s=resync_interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [self.processor.run(stop), self.sync.run(stop)]
        for connector in self.connectors.values():
            tasks.append(self._read_queue(connector, stop))
            tasks.append(self._poll(connector, stop))
        await asyncio.gather(*tasks)

    async def _read_queue(self, connector: Connector, stop: asyncio.Event) -> None:
        channel = connector.config.channel
        if type(connector).receive is Connector.receive:
            return  # this platform pushes webhooks instead
        while not stop.is_set():
            try:
                received = await connector.receive()
                for delivery, _ in received:
                    await self.inbox.accept(channel, delivery)
                if received:
                    await connector.ack([handle for _, handle in received])
            except Exception:
                log.exception("channel %s: queue read failed; trying again in 1 s", channel)
                await _sleep(stop, 1.0)

    async def _poll(self, connector: Connector, stop: asyncio.Event) -> None:
        channel = connector.config.channel
        interval_s = float(connector.config.option("poll_interval_s", 300))
        if type(connector).poll is Connector.poll or interval_s <= 0:
            return
        since = now_ms() - POLL_OVERLAP_MS
        while not await _sleep(stop, interval_s):
            started = now_ms()
            try:
                for event in await connector.poll(since):
                    await self.processor.apply(channel, event)
                since = started - POLL_OVERLAP_MS
            except Exception:
                log.exception("channel %s: order poll failed; next poll in %g s", channel,
                              interval_s)  # fmt: skip


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps, or returns True at once when stop is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def run(engine: Engine, configs: list[ChannelConfig], stop: asyncio.Event, **kw: Any) -> None:
    async with connectors(configs) as connected:
        await ChannelWorker(engine, connected, **kw).run(stop)
