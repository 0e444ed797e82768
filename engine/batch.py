"""Coalescing: concurrent operations become one script call per (script, partition).

Callers that wake in the same event-loop tick (for example, all the callers a
reply just resolved) submit together, and ``_flush`` sends each group as one
EVALSHA whose ARGV carries every operation. The script runs them in order, so
each operation is as atomic as if it had been called alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import keys
from .scripts import Scripts

Args = tuple[Any, ...]


class Batcher:
    """Sends operations in batches of at most ``max_batch``; each caller gets its own reply."""

    def __init__(self, scripts: Scripts, max_batch: int = 64) -> None:
        self._scripts = scripts
        self._max_batch = max_batch
        self._pending: dict[tuple[str, int, Args], list[tuple[Args, str | None, Any]]] = {}
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()

    def submit(
        self, name: str, partition: int, args: Args, *, op_key: str | None = None, head: Args = ()
    ) -> asyncio.Future[Any]:
        """Queue one operation; the future resolves to its reply ``[code, ...]``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.setdefault((name, partition, head), []).append((args, op_key, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for group, ops in pending.items():
            for start in range(0, len(ops), self._max_batch):
                task = asyncio.create_task(self._send(group, ops[start : start + self._max_batch]))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _send(
        self, group: tuple[str, int, Args], ops: list[tuple[Args, str | None, Any]]
    ) -> None:
        name, partition, head = group
        script_keys = list(keys.partition_keys(partition))
        argv: list[Any] = [len(ops), *head]
        for args, op_key, _ in ops:
            argv.extend(args)
            if op_key is not None:
                script_keys.append(op_key)
        try:
            replies = await self._scripts[name](script_keys, argv)
        except BaseException as exc:  # every caller must hear of it, cancellation included
            for *_, future in ops:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (*_, future), reply in zip(ops, replies, strict=True):
            if not future.done():
                future.set_result(reply)

    async def drain(self) -> None:
        """Wait until every operation sent so far has its reply."""
        while self._in_flight or self._flush_scheduled:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            await asyncio.sleep(0)
