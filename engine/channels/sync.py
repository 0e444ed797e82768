"""Outbound sync: every change to what a channel may sell reaches the channel, coalesced.

The worker follows every partition's outbox (from a position it keeps, so it never
holds back the writer's trimming). Each entry names the SKUs whose ATS may have moved:
moves, hold events, oversells, SKU settings; a catalog change touches every SKU. For
those SKUs it reads the ATS of every connected channel that lists them and queues the
new absolute value, replacing any value still waiting: only the latest is pushed. A
value the channel already holds is not pushed at all: what it last accepted, less what
its own orders took since (the ATS script reads those units in the same instant), since
the platform took them off its storefront itself (ChannelSync.offer says why it matters).

Each channel has its own pusher. It lets a batch gather for `linger_ms` (20), sends
batches of the connector's size, at most `max_in_flight` (1) at once, never the same SKU
twice at once (so an older value cannot land after a newer one), within the connector's
rate limits; both are channel options too. A push that fails transiently is
queued again unless a newer value took its place; a refusal is logged and counted.

State in Redis, per channel: `sync:<channel>:pushed` (sku -> "qty:at_ms:ordered", what the
channel last accepted, which survives restarts) and `sync:<channel>` (stats: pushes,
changes, failures, backlog, last push time, lag). Time-windowed buffer overrides start
and end without a move, so their SKUs are re-read at those instants; a periodic pass
over every listed SKU (`resync_interval_s`) catches anything else, and a full resync
pushes every value regardless of what was pushed before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec
from redis.asyncio.cluster import RedisCluster

from .. import keys
from ..engine import Engine
from ..errors import StockguardError
from .base import Connector, Push, PushResult
from .limits import backoff_s

log = logging.getLogger("stockguard.sync")

ATS_CHUNK = 500
_events = msgspec.json.Decoder(list[dict[str, Any]])


def pushed_key(channel: str) -> str:
    return f"{keys.PREFIX}:sync:{channel}:pushed"


def stats_key(channel: str) -> str:
    return f"{keys.PREFIX}:sync:{channel}"


def position_key(partition: int) -> str:
    return f"{keys.tag(partition)}:sync-position"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def touched(events: list[dict[str, Any]]) -> tuple[set[str], bool, list[tuple[str, int]]]:
    """SKUs whose ATS may have moved, whether every SKU may have (a catalog change), and
    (sku, ms) instants when a buffer override starts or ends."""
    skus: set[str] = set()
    every, instants = False, []
    for event in events:
        kind = event.get("type")
        if kind in ("move", "oversell"):
            skus.add(event["sku"])
        elif kind == "hold":
            lines = event["hold"].get("lines") or []
            skus.update(lines if isinstance(lines, dict) else (line[0] for line in lines))
        elif kind == "sku":
            skus.add(event["sku"])
            override = (event.get("settings") or {}).get("override")
            if override:
                instants += [(event["sku"], override[0]), (event["sku"], override[1])]
        elif kind == "catalog":
            every = True
    return skus, every, instants


class Stats(msgspec.Struct):
    changes: int = 0  # new values queued (each replaced or pushed)
    pushes: int = 0  # values the channel accepted
    failures: int = 0  # values refused (not retried)
    retries: int = 0
    own: int = 0  # values not pushed: the platform's own orders had already set them there
    last_push_ms: int = 0
    lag_ms: int = 0  # of the last accepted push: from the stock change to acceptance


class ChannelSync:
    """One channel's queue of values to push and its pusher."""

    def __init__(
        self, connector: Connector, client: Any, max_in_flight: int = 1, linger_ms: int = 20
    ) -> None:
        self.connector = connector
        self.client = client
        self.channel = connector.config.channel
        self.skus = set(connector.by_sku)
        self.pending: dict[str, tuple[int, int, int]] = {}  # sku -> (qty, change ms, ordered)
        self.last: dict[str, int] = {}  # what the channel last accepted
        self.ordered: dict[str, int] = {}  # its own orders' units when that value was read
        self.in_flight: set[str] = set()
        max_in_flight = int(connector.config.option("max_in_flight", max_in_flight))
        self.max_in_flight = max_in_flight
        self.linger_ms = int(connector.config.option("linger_ms", linger_ms))
        self.stats = Stats()
        self.lags: deque[int] = deque(maxlen=100_000)
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pushing = 0
        self._order = {sku: n for n, sku in enumerate(connector.by_sku)}
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(
        self, sku: str, qty: int, change_ms: int, ordered: int = 0, *, force: bool = False
    ) -> None:
        """A new ATS: queued unless the channel already has it (force: push anyway).

        `ordered` is the units the channel's own orders had taken when qty was read. The
        platform took those off its storefront itself when it sold them: it holds what it
        last accepted less what it sold since. When that is qty, nothing is pushed: our
        value would at best change nothing, and at worst put back on sale units it sold
        since that we have not heard of yet (an absolute write cannot tell)."""
        if not force and sku not in self.in_flight and self.holds(sku, qty, ordered):
            self.pending.pop(sku, None)
            if self.last[sku] != qty:
                self.stats.own += 1
            self.last[sku], self.ordered[sku] = qty, ordered
            return
        first = self.pending.get(sku)
        self.pending[sku] = (qty, first[1] if first else change_ms, ordered)
        self.stats.changes += 1
        self.idle.clear()
        self.wake.set()

    def holds(self, sku: str, qty: int, ordered: int) -> bool:
        """Whether the platform already holds qty: what it last accepted, less its own
        orders since (when we know how many it had then)."""
        last = self.last.get(sku)
        if last is None:
            return False
        before = self.ordered.get(sku)
        sold_there = ordered - before if before is not None and ordered >= before else 0
        return last - sold_there == qty

    def backlog(self) -> int:
        return len(self.pending) + len(self.in_flight)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.5)
            self.wake.clear()
            while ready := [s for s in self.pending if s not in self.in_flight]:
                await self._slots.acquire()
                await self._linger(ready)
                ready = [s for s in self.pending if s not in self.in_flight]
                batch = self._share(ready)
                items = {sku: self.pending.pop(sku) for sku in batch}
                if not items:
                    self._slots.release()
                    continue
                self.in_flight.update(items)
                task = asyncio.create_task(self._push(items))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not self.pending and not self.in_flight:
                self.idle.set()

    async def _linger(self, ready: list[str]) -> None:
        """Lets a batch gather until its oldest change is linger_ms old (or it is full): a
        few ms of lag buy far fewer platform calls, which is what the lag is made of."""
        if len(ready) >= self.connector.max_batch:
            return
        waiting = [self.pending[sku][1] for sku in ready if sku in self.pending]
        if not waiting:  # taken back while this waited for a slot
            return
        oldest = min(waiting)
        wait_ms = oldest + self.linger_ms - now_ms()
        if wait_ms > 0:
            await asyncio.sleep(wait_ms / 1000)

    def _share(self, ready: list[str]) -> list[str]:
        """The next batch: an even share of what is ready over the free push slots (so they
        all work), in listing order (so an Etsy listing's products travel together), at
        most the connector's batch size."""
        free = max(1, self.max_in_flight - self._pushing)
        size = min(self.connector.max_batch, -(-len(ready) // free))
        ready.sort(key=self._order.__getitem__)
        return ready[:size]

    async def _push(self, items: dict[str, tuple[int, int, int]]) -> None:
        self._pushing += 1
        try:
            await self._send(items)
        finally:
            self._pushing -= 1

    async def _send(self, items: dict[str, tuple[int, int, int]]) -> None:
        pushes = [Push(sku, qty, previous=self.last.get(sku)) for sku, (qty, *_) in items.items()]
        try:
            results = await self.connector.push(pushes)
        except Exception as error:  # a connector bug or an outage: every value goes again
            log.warning("sync %s: push failed: %s", self.channel, error)
            results = [PushResult(p.sku, ok=False, retry=True, error=str(error)) for p in pushes]
        done = now_ms()
        accepted: dict[str, str] = {}
        for result in results:
            qty, change_ms, ordered = items[result.sku]
            if result.ok:
                self.last[result.sku], self.ordered[result.sku] = qty, ordered
                accepted[result.sku] = f"{qty}:{done}:{ordered}"
                self.stats.pushes += 1
                self.lags.append(done - change_ms)
                self.stats.lag_ms, self.stats.last_push_ms = done - change_ms, done
            elif result.retry:
                self.stats.retries += 1
                self.pending.setdefault(result.sku, (qty, change_ms, ordered))
            else:
                self.stats.failures += 1
                log.error("sync %s: %s refused: %s", self.channel, result.sku, result.error)
        self.in_flight.difference_update(items)
        self._slots.release()
        if accepted:
            await self.client.hset(pushed_key(self.channel), mapping=accepted)
        if any(r.retry for r in results):
            await asyncio.sleep(backoff_s(min(self.stats.retries, 6), 0.1, 5.0))
        self.wake.set()


class SyncWorker:
    """Follows the outbox and keeps every connected channel's quantities current."""

    def __init__(
        self,
        engine: Engine,
        connectors: Iterable[Connector],
        *,
        resync_interval_s: float = 60.0,
        max_in_flight: int = 1,
        linger_ms: int = 20,
        gather_s: float = 0.005,
    ) -> None:
        self.engine = engine
        self.client = engine.client
        self.channels = {
            c.config.channel: ChannelSync(c, self.client, max_in_flight, linger_ms)
            for c in connectors
        }
        self.resync_interval_s = resync_interval_s
        self.gather_s = gather_s
        self.positions: dict[int, str] = {}
        self._timers: list[asyncio.TimerHandle] = []
        self._rechecks: set[asyncio.Future[None]] = set()

    # -- state ---------------------------------------------------------------------------

    async def load(self) -> None:
        """What each channel last accepted, and where in each outbox this worker was."""
        for name, channel in self.channels.items():
            for sku, value in (await self.client.hgetall(pushed_key(name))).items():
                qty, _, *ordered = value.split(":")
                channel.last[sku] = int(qty)
                if ordered:
                    channel.ordered[sku] = int(ordered[0])
        for p in range(keys.PARTITIONS):
            self.positions[p] = await self.client.get(position_key(p)) or "$"
        for p, position in self.positions.items():
            if position == "$":  # never ran: start from now, after a full pass
                last = await self.client.xrevrange(keys.outbox(p), count=1)
                self.positions[p] = last[0][0] if last else "0-0"

    async def save_state(self) -> None:
        await self.save_positions()
        await self.save_stats()

    async def save_stats(self) -> None:
        for name, channel in self.channels.items():
            fields = msgspec.structs.asdict(channel.stats)
            fields["backlog"] = channel.backlog()
            await self.client.hset(stats_key(name), mapping=fields)

    # -- reading the outbox ----------------------------------------------------------------

    async def follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                entries = await self._read()
            except Exception:
                log.exception("sync: outbox read failed; trying again in 1 s")
                await asyncio.sleep(1.0)
                continue
            await self.handle(entries)
            if entries:  # let the next read gather a few ms of changes, not one at a time
                await asyncio.sleep(self.gather_s)

    async def _read(self) -> list[tuple[int, str, dict[str, str]]]:
        streams = {keys.outbox(p): self.positions[p] for p in range(keys.PARTITIONS)}
        if isinstance(self.client, RedisCluster):  # one slot per call: poll each partition
            replies: list[Any] = []
            for stream, position in streams.items():
                replies += await self.client.xread({stream: position}, count=1000) or []
            if not replies:
                await asyncio.sleep(0.01)
        else:
            replies = await self.client.xread(streams, count=1000, block=500) or []
        by_stream = {keys.outbox(p): p for p in range(keys.PARTITIONS)}
        return [
            (by_stream[stream], entry_id, fields)
            for stream, entries in replies
            for entry_id, fields in entries
        ]

    async def handle(self, entries: list[tuple[int, str, dict[str, str]]]) -> None:
        """Queues the new ATS of every SKU the entries touched, then moves on past them."""
        if not entries:
            return
        dirty: dict[str, int] = {}
        every = False
        for p, entry_id, fields in entries:
            change_ms = int(entry_id.split("-")[0])
            skus, all_skus, instants = touched(_events.decode(fields["events"]))
            every = every or all_skus
            for sku in skus:
                dirty.setdefault(sku, change_ms)
            for sku, at_ms in instants:
                self._recheck_at(sku, at_ms)
            self.positions[p] = entry_id
        if every:
            await self.resync()
        else:
            await self.refresh(dirty)

    async def save_positions(self) -> None:
        """Where each outbox was read up to; a restart goes on from there (after a full
        pass, so what a crash lost since the last save is pushed all the same)."""
        async with self.client.pipeline(transaction=False) as pipe:  # one slot per key
            for p, position in self.positions.items():
                pipe.set(position_key(p), position)
            await pipe.execute()

    def _recheck_at(self, sku: str, at_ms: int) -> None:
        delay_s = (at_ms - now_ms()) / 1000 + 0.01
        if 0 < delay_s < 7 * 24 * 3600:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(delay_s, self._recheck_now, sku)
            self._timers.append(handle)

    def _recheck_now(self, sku: str) -> None:
        task = asyncio.ensure_future(self.refresh({sku: now_ms()}))
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    # -- reading ATS -----------------------------------------------------------------------

    async def refresh(self, dirty: dict[str, int], *, force: bool = False) -> None:
        """Reads the ATS of the dirty SKUs for every channel listing them; queues changes."""
        for name, channel in self.channels.items():
            skus = [sku for sku in dirty if sku in channel.skus]
            for start in range(0, len(skus), ATS_CHUNK):
                chunk = skus[start : start + ATS_CHUNK]
                try:
                    values = await self.engine.ats_and_ordered(name, chunk)
                except StockguardError as error:  # e.g. the channel is not in the catalog
                    log.error("sync %s: cannot read ATS: %s", name, error)
                    break
                for sku, (qty, ordered) in values.items():
                    channel.offer(sku, qty, dirty[sku], ordered, force=force)

    async def resync(self, *, force: bool = False) -> None:
        """Every listed SKU of every channel; force pushes values the channels already have."""
        at = now_ms()
        every = {sku for channel in self.channels.values() for sku in channel.skus}
        await self.refresh(dict.fromkeys(every, at), force=force)

    async def settled(self, timeout_s: float = 30.0) -> bool:
        """Waits until no channel has anything left to push."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.idle.is_set() and not c.pending for c in self.channels.values()):
                return True
            await asyncio.sleep(0.01)
        return False

    # -- running ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.load()
        await self.resync()  # whatever changed while no worker ran
        tasks = [asyncio.create_task(c.run(stop)) for c in self.channels.values()]
        tasks += [
            asyncio.create_task(self.follow(stop)),
            asyncio.create_task(self._every(stop, 1.0, self.save_state)),
            asyncio.create_task(self._every(stop, self.resync_interval_s, self.resync)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await self.save_state()

    @staticmethod
    async def _every(stop: asyncio.Event, interval_s: float, work: Any) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if not stop.is_set():
                try:
                    await work()
                except Exception:
                    log.exception("sync: periodic work failed")


class Pushed(msgspec.Struct, frozen=True):
    qty: int
    at_ms: int


class SyncStatus(msgspec.Struct, frozen=True):
    """One channel's outbound sync as its worker last saved it (about every second)."""

    channel: str
    changes: int = 0
    pushes: int = 0
    failures: int = 0
    retries: int = 0
    own: int = 0
    backlog: int = 0
    last_push_ms: int = 0
    lag_ms: int = 0
    skus: dict[str, Pushed] = {}  # what the channel last accepted, of the SKUs asked for


async def status(client: Any, channel: str, skus: list[str]) -> SyncStatus:
    """The saved stats of a channel's sync, and its last accepted value of each SKU asked."""
    stats = {k: int(float(v)) for k, v in (await client.hgetall(stats_key(channel))).items()}
    known = {f.name for f in msgspec.structs.fields(SyncStatus)}
    pushed = {}
    if skus:
        for sku, value in zip(skus, await client.hmget(pushed_key(channel), skus), strict=True):
            if value:
                qty, at_ms, *_ = value.split(":")
                pushed[sku] = Pushed(int(qty), int(at_ms))
    return SyncStatus(channel, skus=pushed, **{k: v for k, v in stats.items() if k in known})
