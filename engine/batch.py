"""Coalescing: concurrent operations become one script call per (script, partition).

Callers that wake in the same event-loop tick (for example, all the callers a
reply just resolved) submit together. ``_flush`` groups them by script and
partition, turns each group into one EVALSHA whose single ARGV entry is the
JSON batch, and sends the calls of a flush as one pipeline: one round trip.
The script runs the operations in order, so each is as atomic as if it had
been called alone.

Two pipelines are in flight at most: Redis runs one while Python prepares the
next. A pipeline carries at most ``max_batch`` operations, and goes at once when
that many wait and a slot is free. While another is in flight, it takes the
fuller half of the waiting groups only; the thinner half waits for the next
pipeline and gathers operations meanwhile. A call's fixed cost (the script's
setup, its clock and expiry checks, one write per key) is then spread over more
operations. No group waits through more than two pipelines, and with nothing in
flight every group goes at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from . import keys
from .scripts import Scripts

Args = tuple[Any, ...]
Group = tuple[str, int, Args]  # script name, partition, leading ARGV after the batch
Op = tuple[Args, str | None, "asyncio.Future[Any]"]
MAX_IN_FLIGHT = 2  # pipelines: one for Redis to run, one on its way
OVERDUE = 2  # a group that has sat out this many pipelines goes in the next one
_encode = msgspec.json.encode


def _pack(*args: Any) -> bytes:
    """One command in the Redis protocol (RESP2 array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


class Batcher:
    """Sends operations in pipelines of at most ``max_batch``; each caller gets its own reply."""

    def __init__(self, client: Any, scripts: Scripts, max_batch: int = 32) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._scripts = scripts
        self._max_batch = max_batch
        self._pending: dict[Group, list[Op]] = {}
        self._pending_count = 0
        self._skipped: dict[Group, int] = {}  # pipelines a waiting group has sat out
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._connections: list[Any] = []  # idle connections of this batcher's pipelines

    def submit(
        self, name: str, partition: int, args: Args, *, op_key: str | None = None, head: Args = ()
    ) -> asyncio.Future[Any]:
        """Queue one operation; the future resolves to its reply ``[code, ...]``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.setdefault((name, partition, head), []).append((args, op_key, future))
        self._pending_count += 1
        if self._pending_count >= self._max_batch and len(self._in_flight) < MAX_IN_FLIGHT:
            self._flush()  # a full pipeline goes now, ahead of whatever the loop runs next
        else:
            self._schedule_flush(loop)
        return future

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and len(self._in_flight) < MAX_IN_FLIGHT:
            task = asyncio.create_task(self._send(self._take()))
            self._in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._pending:
            self._schedule_flush(asyncio.get_running_loop())

    def _take(self) -> list[tuple[Group, list[Op]]]:
        """The next pipeline's calls: overdue groups first, then the fullest ones."""
        pending, skipped = self._pending, self._skipped
        # With nothing in flight, Redis would idle while a group waited: take them all.
        share = len(pending) if not self._in_flight else -(-len(pending) // 2)
        order = sorted(pending, key=lambda g: (skipped.get(g, 0) < OVERDUE, -len(pending[g])))
        calls: list[tuple[Group, list[Op]]] = []
        room = self._max_batch
        for group in order:
            if room == 0 or (len(calls) >= share and skipped.get(group, 0) < OVERDUE):
                break
            ops = pending.pop(group)
            skipped.pop(group, None)
            calls.append((group, ops[:room]))
            if len(ops) > room:  # the rest stays first in line for its group
                pending[group] = ops[room:]
            room = max(0, room - len(ops))
        self._pending_count -= self._max_batch - room
        taken = {group for group, _ in calls}
        for group in pending:
            if group not in taken:
                skipped[group] = skipped.get(group, 0) + 1
        return calls

    async def _send(self, calls: list[tuple[Group, list[Op]]]) -> None:
        try:
            replies = await self._execute(calls)
        except BaseException as exc:  # every caller hears of it, cancellation included
            for _, ops in calls:
                for *_, future in ops:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, ops), batch_replies in zip(calls, replies, strict=True):
            for (*_, future), reply in zip(ops, batch_replies, strict=True):
                if not future.done():
                    future.set_result(reply)

    async def _execute(self, calls: list[tuple[Group, list[Op]]]) -> list[Any]:
        return await self.call([self._command(group, ops) for group, ops in calls])

    async def call(self, commands: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Runs (script, keys, argv) calls in one round trip; a list of their replies."""
        if self._cluster:
            # redis-py refuses EVALSHA in cluster pipelines; there, calls go out concurrently.
            return list(await asyncio.gather(*(self._scripts[n](k, a) for n, k, a in commands)))
        replies = await self._pipeline(commands)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):  # not run: load it and run it now
                name, script_keys, argv = commands[i]
                replies[i] = await self._scripts[name](script_keys, argv)
            elif isinstance(reply, Exception):
                raise reply
        return list(replies)

    async def _pipeline(self, commands: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        # A pipeline without redis-py's per-command bookkeeping, which costs more than the
        # rest of the hot path: the calls go out in one write, and a refused call comes
        # back as its exception, in its place.
        packed = b"".join(
            _pack("EVALSHA", self._scripts[name].sha, len(script_keys), *script_keys, *argv)
            for name, script_keys, argv in commands
        )
        # While the batcher is busy, a pipeline's connection stays with it for the next one:
        # checking it in and out of the pool (a lock, observability hooks, an event) costs
        # more than packing the pipeline. Once it is idle, they all go back.
        pool = self._client.connection_pool
        connection = self._connections.pop() if self._connections else await pool.get_connection()
        replies: list[Any] = []
        try:
            # As the pool checks what it hands out: a connection the server closed, or one
            # holding bytes nobody asked for, starts afresh.
            if not connection.is_connected or await connection.can_read():
                await connection.disconnect()
                await connection.connect()
            await connection.send_packed_command(packed, check_health=False)
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:
                    replies.append(error)
        except BaseException:
            await connection.disconnect()  # replies may be left unread: never reuse it as is
            raise
        finally:
            self._connections.append(connection)
            this = asyncio.current_task()
            if not self._pending and all(task is this for task in self._in_flight):
                idle, self._connections = self._connections, []
                for each in idle:
                    await pool.release(each)
        return replies

    @staticmethod
    def _command(group: Group, ops: list[Op]) -> tuple[str, list[str], list[Any]]:
        name, partition, head = group
        script_keys = list(keys.partition_keys(partition))
        script_keys.extend(op_key for _, op_key, _ in ops if op_key is not None)
        # One JSON argument for the whole batch: packing one argument per field costs
        # redis-py more than everything else on this path.
        return name, script_keys, [_encode([args for args, _, _ in ops]), *head]
