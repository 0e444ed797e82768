"""How the batcher coalesces operations: its choice of groups on its own, its pipelines against
a real server."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import make_engine
from helpers import setup_shop

from engine import keys
from engine.batch import OVERDUE, Batcher

MINUTE_MS = 60_000


def _waiting(batcher: Batcher, sizes: dict[int, int]) -> None:
    """Queue sizes[p] release operations for partition p, without sending them."""
    loop = asyncio.get_running_loop()
    for partition, size in sizes.items():
        ops = [((f"h{partition}.{n}",), None, loop.create_future()) for n in range(size)]
        batcher._pending[("release", partition, ())] = ops
        batcher._pending_count += size


def _partitions(calls: list[Any]) -> list[int]:
    return [group[1] for group, _ in calls]


async def test_an_idle_batcher_sends_every_waiting_group_at_once(client: Any) -> None:
    batcher = make_engine(client)._batcher
    _waiting(batcher, {p: 1 for p in range(keys.PARTITIONS)})
    assert sorted(_partitions(batcher._take())) == list(range(keys.PARTITIONS))
    assert not batcher._pending


async def test_a_busy_batcher_sends_the_fuller_half_and_the_rest_gathers(client: Any) -> None:
    batcher = make_engine(client)._batcher
    batcher._in_flight.add(asyncio.ensure_future(asyncio.sleep(0)))  # one pipeline out
    _waiting(batcher, {0: 1, 1: 5, 2: 2, 3: 7})
    assert _partitions(batcher._take()) == [3, 1]
    assert {group[1]: len(ops) for group, ops in batcher._pending.items()} == {0: 1, 2: 2}
    await asyncio.gather(*batcher._in_flight)


async def test_no_group_sits_out_more_than_two_pipelines(client: Any) -> None:
    batcher = make_engine(client)._batcher
    batcher._in_flight.add(asyncio.ensure_future(asyncio.sleep(0)))
    _waiting(batcher, {0: 1, 1: 9, 2: 9})
    sat_out = 0
    for _ in range(6):
        calls = batcher._take()
        if 0 in _partitions(calls):
            break
        sat_out += 1
        _waiting(batcher, {1: 9, 2: 9})  # fuller groups keep arriving
    else:
        raise AssertionError("partition 0 never went")
    assert sat_out == OVERDUE
    await asyncio.gather(*batcher._in_flight)


async def test_a_pipeline_carries_at_most_max_batch_and_a_split_group_keeps_its_order(
    client: Any,
) -> None:
    batcher = make_engine(client, max_batch=4)._batcher
    _waiting(batcher, {5: 6})
    first = batcher._take()
    assert [args[0] for args, _, _ in first[0][1]] == ["h5.0", "h5.1", "h5.2", "h5.3"]
    assert [args[0] for args, _, _ in batcher._take()[0][1]] == ["h5.4", "h5.5"]


async def test_a_full_pipeline_goes_at_once_and_a_partial_one_at_the_end_of_the_tick(
    client: Any,
) -> None:
    engine = make_engine(client, max_batch=3)
    await setup_shop(engine)
    await engine.receive("A", "wh1", 10)
    batcher = engine._batcher
    calls = [engine.hold("web", {"A": 1}, ttl_ms=MINUTE_MS) for _ in range(4)]
    tasks = [asyncio.ensure_future(call) for call in calls]
    await asyncio.sleep(0)  # each hold runs up to its submit
    assert len(batcher._in_flight) == 1  # the first three, sent by the third submit
    assert batcher._pending_count == 1
    holds = await asyncio.gather(*tasks)
    assert len({hold.id for hold in holds}) == 4
    assert batcher._pending_count == 0


async def test_many_concurrent_holds_over_every_partition_each_get_their_own_reply(
    client: Any,
) -> None:
    engine = make_engine(client)
    skus = [f"S{n}" for n in range(40)]
    await setup_shop(engine, tuple(skus))
    assert len({keys.partition_of(sku) for sku in skus}) == keys.PARTITIONS
    for sku in skus:
        await engine.receive(sku, "wh1", 3)
    holds = await asyncio.gather(
        *(engine.hold("web", {sku: 1}, ttl_ms=MINUTE_MS) for sku in skus for _ in range(3))
    )
    assert sorted(h.lines[0].sku for h in holds) == sorted(skus * 3)
    assert len({h.id for h in holds}) == len(holds)
    assert [(await engine.stock(sku)).ats["web"] for sku in skus] == [0] * len(skus)
    assert not engine._batcher._connections  # idle again: its connections are back in the pool


async def test_a_kept_connection_the_server_closed_is_replaced_before_the_next_pipeline(
    client: Any,
) -> None:
    engine = make_engine(client)
    await setup_shop(engine)
    await engine.receive("A", "wh1", 5)
    busy = asyncio.ensure_future(asyncio.Event().wait())  # another pipeline, as if in flight
    engine._batcher._in_flight.add(busy)
    await engine.hold("web", {"A": 1}, ttl_ms=MINUTE_MS)
    [kept] = engine._batcher._connections
    host, port = kept._writer.get_extra_info("sockname")[:2]
    await client.client_kill(f"{host}:{port}")  # as a server restart or a timeout would
    await asyncio.sleep(0.1)  # the close reaches the idle connection
    hold = await engine.hold("web", {"A": 2}, ttl_ms=MINUTE_MS)
    assert hold.lines[0].qty == 2
    assert engine._batcher._connections == [kept]  # the same object, connected again
    assert kept.is_connected
    busy.cancel()
    await asyncio.gather(busy, return_exceptions=True)
    engine._batcher._in_flight.discard(busy)
    assert (await engine.release(hold.id)).state.value == "released"
