"""The background writer: every outbox entry into the SQL ledger, exactly once.

Each pass reads every partition's outbox through a consumer group (entries
idle too long at a dead consumer are claimed with XAUTOCLAIM), writes all the
rows in one transaction, and only then acknowledges the entries. A crash
before the acknowledgement means the entries are read again, and the store's
inserts, idempotent on each row's id, add nothing twice. Several writers share
the work through the group. An entry that cannot be written on its own goes
to its partition's dead-letter stream, is acknowledged, and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from . import keys
from .ledger import Rows, rows
from .store import Store

GROUP = "stockguard-writer"
log = logging.getLogger("stockguard.writer")

Entry = tuple[str, dict[str, str]]


class Lag(msgspec.Struct, frozen=True):
    """Outbox entries not yet acknowledged, and how old the oldest is by the server's clock."""

    pending: int
    oldest_age_ms: int


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _is_store_outage(error: BaseException) -> bool:
    # Connection and availability errors are worth retrying; anything else about an entry
    # (bad data, a constraint) will fail the same way every time.
    name = type(error).__name__
    return isinstance(error, OSError) or name in ("OperationalError", "InterfaceError")


class Writer:
    """Persists outbox entries to a Store; safe to run several at once."""

    def __init__(
        self,
        client: Any,
        store: Store,
        *,
        consumer: str | None = None,
        batch: int = 1000,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.client = client
        self.store = store
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self._next_take: asyncio.Future[list[tuple[int, list[Entry]]]] | None = None
        self._unwritten: list[tuple[int, list[Entry]]] | None = None

    async def setup(self) -> None:
        """Creates the consumer group on every partition's outbox (from its first entry)."""
        for p in range(keys.PARTITIONS):
            try:
                await self.client.xgroup_create(keys.outbox(p), GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def step(self) -> int:
        """One pass over every partition; returns how many entries it persisted.

        While this pass's transaction runs, the next pass's entries are already being read.
        """
        if self._unwritten is not None:  # the batch an outage interrupted comes first
            taken, self._unwritten = self._unwritten, None
        else:
            next_take, self._next_take = self._next_take, None
            taken = await (next_take or self._take())
        if not taken:
            return 0
        if self._next_take is None:
            self._next_take = asyncio.ensure_future(self._take())
        ledger, kept = Rows(), []
        for p, entries in taken:
            if good := await self._parse(p, entries, ledger):
                kept.append((p, good))
        try:
            return await self._persist(kept, ledger)
        except Exception as error:
            if _is_store_outage(error):
                # These entries are pending at this consumer: XREADGROUP will not give them
                # again, so keep them for the retry rather than wait for XAUTOCLAIM.
                self._unwritten = kept
            raise

    async def _persist(self, taken: list[tuple[int, list[Entry]]], ledger: Rows) -> int:
        try:
            await self.store.write(ledger)
        except Exception as error:
            if _is_store_outage(error):
                raise
            # Something in the batch cannot be written: find it, entry by entry.
            return await self._one_by_one(taken)
        await self._ack(taken)
        return sum(len(entries) for _, entries in taken)

    async def _take(self) -> list[tuple[int, list[Entry]]]:
        """Entries idle at a dead consumer, then new ones, from every partition in one trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for p in range(keys.PARTITIONS):
                stream = keys.outbox(p)
                pipe.xautoclaim(
                    stream, GROUP, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
                )
                pipe.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=self.batch)
            replies = await pipe.execute()
        taken = []
        for p in range(keys.PARTITIONS):
            (_, claimed, *_), fresh = replies[2 * p], replies[2 * p + 1]
            entries: list[Entry] = [e for e in claimed if e[1] is not None]
            for _, stream_entries in fresh or []:
                entries.extend(stream_entries)
            if entries:
                taken.append((p, entries))
        return taken

    async def _parse(self, partition: int, entries: list[Entry], into: Rows) -> list[Entry]:
        """Adds the entries' rows to `into`; returns the entries kept (the others are dead)."""
        try:
            into.extend(rows(partition, entries))
            return entries
        except (ValueError, KeyError, TypeError):  # msgspec's errors are ValueErrors
            pass
        kept = []
        for entry_id, fields in entries:
            try:
                into.extend(rows(partition, [(entry_id, fields)]))
                kept.append((entry_id, fields))
            except (ValueError, KeyError, TypeError) as error:
                await self._dead_letter(partition, entry_id, fields, error)
        return kept

    async def _ack(self, taken: list[tuple[int, list[Entry]]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for p, entries in taken:
                pipe.xack(keys.outbox(p), GROUP, *[entry_id for entry_id, _ in entries])
            await pipe.execute()

    async def _one_by_one(self, taken: list[tuple[int, list[Entry]]]) -> int:
        written = 0
        for p, entries in taken:
            for entry_id, fields in entries:
                try:
                    await self.store.write(rows(p, [(entry_id, fields)]))
                except Exception as error:
                    if _is_store_outage(error):
                        raise
                    await self._dead_letter(p, entry_id, fields, error)
                    continue
                await self.client.xack(keys.outbox(p), GROUP, entry_id)
                written += 1
        return written

    async def _dead_letter(
        self, partition: int, entry_id: str, fields: dict[str, str], error: Exception
    ) -> None:
        reason = f"{type(error).__name__}: {error}"
        await self.client.xadd(
            keys.dead_letters(partition), {**fields, "entry_id": entry_id, "error": reason}
        )
        await self.client.xack(keys.outbox(partition), GROUP, entry_id)
        log.error("outbox entry %s of partition %d dead-lettered: %s", entry_id, partition, reason)

    async def trim(self) -> int:
        """Trims each outbox below what every consumer group has acknowledged."""
        removed = 0
        for p in range(keys.PARTITIONS):
            stream = keys.outbox(p)
            floor = await self._acknowledged_floor(stream)
            if floor is not None:
                removed += await self.client.xtrim(stream, minid=floor, approximate=False)
        return removed

    async def _acknowledged_floor(self, stream: str) -> str | None:
        # The lowest id that some group still needs: its oldest pending entry, or the first
        # entry after what it was last given. Entries below that floor are done for all.
        floors = []
        for group in await self.client.xinfo_groups(stream):
            pending = await self.client.xpending(stream, group["name"])
            if pending["pending"]:
                floors.append(pending["min"])
            else:
                ms, seq = group["last-delivered-id"].split("-")
                floors.append(f"{ms}-{int(seq) + 1}")
        return min(floors, key=lambda i: tuple(map(int, i.split("-")))) if floors else None

    async def lag(self) -> Lag:
        """Entries not yet acknowledged by the writers, over all partitions."""
        seconds, micros = await self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        pending, oldest = 0, now_ms
        for p in range(keys.PARTITIONS):
            stream = keys.outbox(p)
            summary = await self.client.xpending(stream, GROUP)
            pending += summary["pending"]
            if summary["pending"]:
                oldest = min(oldest, _ms(summary["min"]))
            group = next(g for g in await self.client.xinfo_groups(stream) if g["name"] == GROUP)
            undelivered = await self.client.xrange(
                stream, min=f"({group['last-delivered-id']}", count=1
            )
            if undelivered:
                pending += group.get("lag") or 1
                oldest = min(oldest, _ms(undelivered[0][0]))
        return Lag(pending, now_ms - oldest)

    async def run(
        self,
        stop: asyncio.Event,
        *,
        idle_ms: int = 100,
        trim_every: int = 50,
        report_every_s: float | None = None,
    ) -> None:
        """Writes until `stop` is set, finishing the batch in hand; retries store outages.

        With report_every_s, logs its lag (pending entries, oldest age) that often.
        """
        await self.setup()
        backoff_s, passes = 0.1, 0
        loop = asyncio.get_running_loop()
        next_report = loop.time() + (report_every_s or 0)
        while not stop.is_set():
            if report_every_s and loop.time() >= next_report:
                lag = await self.lag()
                log.info("lag: %d pending, oldest %d ms", lag.pending, lag.oldest_age_ms)
                next_report = loop.time() + report_every_s
            try:
                written = await self.step()
                backoff_s = 0.1
            except Exception as error:
                if not _is_store_outage(error):
                    raise
                log.warning("ledger store unavailable (%s); retrying in %.1fs", error, backoff_s)
                await _sleep_unless(stop, backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            passes += 1
            if passes % trim_every == 0:
                await self.trim()
            if not written:
                await _sleep_unless(stop, idle_ms / 1000)
        while self._next_take is not None or self._unwritten is not None:
            await self.step()  # entries already read: persist them before leaving

    async def drain(self, timeout_s: float = 30.0) -> int:
        """Persists every entry in the outbox now; for a shutdown after traffic has stopped."""
        loop = asyncio.get_running_loop()
        deadline, total = loop.time() + timeout_s, 0
        while loop.time() < deadline:
            written = await self.step()
            total += written
            if not written and self._next_take is None and self._unwritten is None:
                break
        return total


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
