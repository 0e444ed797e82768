"""The inbox Processor's order state machine, against a real engine: each event applies
once, stale and out-of-order events change nothing, refunds restock once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from helpers import setup_shop

from engine import Engine
from engine.channels.base import Delivery, EventKind, OrderEvent, OrderLine
from engine.channels.inbound import DEAD, INBOX, Inbox, Processor, dead_letters
from engine.channels.simulate import plan, running
from engine.channels.sync import SyncWorker
from engine.channels.worker import connectors

LINE = (OrderLine("1", "A", 2),)


def event(kind: EventKind, at_ms: int, order: str = "o-1", **kw: object) -> OrderEvent:
    return OrderEvent(kind, order, LINE, at_ms, **kw)  # type: ignore[arg-type]


async def committed(engine: Engine) -> int:
    return sum(loc.committed for loc in (await engine.stock("A")).locations)


@pytest.fixture
async def processor(engine: Engine) -> Processor:
    await setup_shop(engine)
    await engine.receive("A", "wh1", 10)
    return Processor(engine, {})


async def test_created_then_cancelled_sells_then_returns(processor: Processor) -> None:
    engine = processor.engine
    assert await processor.apply("web", event(EventKind.CREATED, 1000)) == "applied"
    assert await processor.apply("web", event(EventKind.CREATED, 1000)) == "duplicate"
    assert await committed(engine) == 2
    assert await processor.apply("web", event(EventKind.CANCELLED, 2000)) == "applied"
    assert await processor.apply("web", event(EventKind.CANCELLED, 2000)) == "duplicate"
    assert await committed(engine) == 0


async def test_a_creation_arriving_after_its_cancellation_never_sells(
    processor: Processor,
) -> None:
    assert await processor.apply("web", event(EventKind.CANCELLED, 2000)) == "applied"
    assert await processor.apply("web", event(EventKind.CREATED, 1000)) == "stale"
    assert await processor.apply("web", event(EventKind.CREATED, 3000)) == "stale"
    assert await committed(processor.engine) == 0


async def test_an_event_older_than_the_last_applied_one_is_dropped(processor: Processor) -> None:
    await processor.apply("web", event(EventKind.CREATED, 5000))
    assert await processor.apply("web", event(EventKind.CANCELLED, 4000)) == "stale"
    assert await committed(processor.engine) == 2


async def test_a_restocking_refund_returns_units_once(processor: Processor) -> None:
    engine = processor.engine
    await processor.apply("web", event(EventKind.CREATED, 1000))
    await engine.ship("A", "wh1", 2)
    refund = event(EventKind.REFUNDED, 2000, refund_id="r-1", restock=True)
    assert await processor.apply("web", refund) == "applied"
    assert await processor.apply("web", refund) == "duplicate"
    wh1 = next(loc for loc in (await engine.stock("A")).locations if loc.location == "wh1")
    assert (wh1.on_hand, wh1.committed) == (10, 0)  # 10 - 2 shipped + 2 restocked
    no_restock = event(EventKind.REFUNDED, 3000, refund_id="r-2", restock=False)
    assert await processor.apply("web", no_restock) == "applied"
    assert (await engine.stock("A")).locations[1].on_hand == 10


async def test_a_line_of_an_unknown_sku_is_refused_and_the_rest_of_the_order_sells(
    processor: Processor,
) -> None:
    lines = (OrderLine("1", "NOPE", 1), OrderLine("2", "A", 1))
    await processor.apply("web", OrderEvent(EventKind.CREATED, "o-9", lines, 1000))
    assert processor.stats["lines_refused"] == 1
    assert await committed(processor.engine) == 1


async def test_a_delivery_that_cannot_be_applied_is_dead_lettered_with_its_reason(
    processor: Processor,
) -> None:
    engine = processor.engine
    await processor.setup()
    assert await Inbox(engine).accept("web", Delivery("d-9", fetch=("o-404",)))
    assert await Inbox(engine).accept("web", Delivery("d-10", (event(EventKind.CREATED, 1000),)))
    assert await processor.step(block_ms=10) == 0  # this consumer's backlog: empty
    assert await processor.step(block_ms=10) == 2  # both acknowledged: one applied, one dead
    [(_, dead)] = await engine.client.xrange(DEAD)
    assert dead["channel"] == "web" and "no connector to fetch 'o-404'" in dead["error"]
    assert await dead_letters(engine.client) == 1 and processor.stats["dead"] == 1
    assert await committed(engine) == 2  # the readable delivery sold
    assert await processor.step(block_ms=10) == 0  # nothing left to retry


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within 10 s"
        await asyncio.sleep(0.02)


async def test_the_inbox_accepts_a_delivery_once(engine: Engine) -> None:
    inbox = Inbox(engine)
    delivery = Delivery("d-1", (event(EventKind.CREATED, 1000),))
    before = await engine.client.xlen(INBOX)
    assert await inbox.accept("web", delivery) is True
    assert await inbox.accept("web", delivery) is False  # the platform's redelivery
    assert await inbox.accept("pos", delivery) is True  # another channel's own id space
    assert await engine.client.xlen(INBOX) == before + 2


async def test_the_sync_worker_follows_every_partition_to_a_platform(engine: Engine) -> None:
    """On a single node and on the cluster: the outbox read per partition, the positions,
    the ATS with own orders, the pushed values."""
    await setup_shop(engine, skus=("A", "B", "C", "D"))
    skus = ["A", "B", "C", "D"]
    (web,) = plan(skus, "http://127.0.0.1:9", limits=False, channels=("web",))
    async with running([web]), connectors([web.config]) as connected:
        sync = SyncWorker(engine, connected.values(), resync_interval_s=3600)
        stop = asyncio.Event()
        task = asyncio.create_task(sync.run(stop))
        try:
            for n, sku in enumerate(skus, start=1):
                await engine.receive(sku, "wh1", n)
            await until(lambda: web.simulator.quantities == {"A": 1, "B": 2, "C": 3, "D": 4})
            # The platform's own sale: it took the unit off itself, so nothing is pushed back.
            await engine.record_order("web", "o-7", "1", "D", 1)
            await until(lambda: sync.channels["web"].stats.own == 1)
            assert web.simulator.quantities["D"] == 4
            await engine.receive("D", "wh1", 2)  # anything else is pushed, own sale counted
            await until(lambda: web.simulator.quantities["D"] == 5)
        finally:
            stop.set()
            await task
    assert sync.channels["web"].stats.failures == 0
